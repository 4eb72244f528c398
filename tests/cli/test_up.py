"""`meshserve up` end to end: start it, use it from the CLI, Ctrl-C it, no child left."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from e2e.helpers import assert_eventually

from meshserve.cli.context import CONTEXT_ENV

MESHSERVE = str(Path(sys.executable).parent / "meshserve")
T = TypeVar("T")
ADDRESS_VARIABLES = ("MESHSERVE_ROUTER", "MESHSERVE_ETCD", "MESHSERVE_AUDIT", "MESHSERVE_METRICS")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("meshserve.runtimes.python.__main__") is None
        or importlib.util.find_spec("meshserve.services.router.__main__") is None,
        reason="the router or the Python runtime is not installed",
    ),
]


def eventually(check: Callable[[], T]) -> T:
    return assert_eventually(check, timeout=20.0, interval=0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, with no address in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ADDRESS_VARIABLES}
    return subprocess.run([MESHSERVE, *args], capture_output=True, text=True, timeout=60, check=False, env=env)


@pytest.fixture
def mesh_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    announce = tmp_path / "up.json"
    proc = subprocess.Popen(
        [MESHSERVE, "up", "--router-port", "0", "--etcd-port", "0", "--nats-port", "0", "--audit-port", "0",
         "--data-dir", str(tmp_path / "data"), "--trace-sample-ratio", "1",  # no collector: ids reach the audit trail
         "--announce-file", str(announce)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    info: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 90
        while not announce.exists():
            if proc.poll() is not None:
                pytest.fail(f"meshserve up exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
            if time.monotonic() > deadline:
                pytest.fail("meshserve up did not come up in 90 s")
            time.sleep(0.1)
        info = json.loads(announce.read_text())
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in info.get("children", {}).values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(180)
def test_up_serves_models_and_stops_every_child(mesh_up: tuple[subprocess.Popen[str], dict[str, Any]]) -> None:
    proc, info = mesh_up
    router = info["router"]
    children: dict[str, int] = info["children"]
    assert {"etcd", "nats", "audit", "router", "runtime"} <= set(children)
    assert set(children) <= {"etcd", "nats", "audit", "router", "runtime", "r-runtime", "triton", "triton-registrar"}
    assert all(alive(pid) for pid in children.values())

    def iris_listed() -> str:
        done = cli("models", "--router", router)
        assert done.returncode == 0, done.stderr
        assert "iris" in done.stdout and "ready" in done.stdout
        return done.stdout

    eventually(iris_listed)

    runtimes = cli("runtimes", "--router", router)
    assert runtimes.returncode == 0, runtimes.stderr
    assert "python" in runtimes.stdout

    done = cli("infer", "iris", "--router", router, "--format", "json",
               "--json", '{"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}')
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert outputs["label"] == [0, 2]
    assert len(outputs["probabilities"]) == 2 and len(outputs["probabilities"][0]) == 3

    table = cli("infer", "iris", "--router", router, "--input", "features=[5.1, 3.5, 1.4, 0.2]")
    assert table.returncode == 0, table.stderr
    assert "probabilities" in table.stdout

    # Every call is traced (--trace-sample-ratio 1): the audit trail finds a call by its trace id.
    def traced() -> list[dict[str, Any]]:
        done = cli("audit", "query", "--model", "iris", "--json", "--audit", info["audit"])
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(records) == 2 and all(len(r["event"].get("trace_id", "")) == 32 for r in records), records
        return records

    first = eventually(traced)[0]
    trace_id = first["event"]["trace_id"].upper()  # as some tracing backends show it
    by_trace = cli("audit", "query", "--trace-id", trace_id, "--json", "--audit", info["audit"])
    assert by_trace.returncode == 0, by_trace.stderr
    assert [json.loads(line)["event"]["request_id"] for line in by_trace.stdout.splitlines()] == \
        [first["event"]["request_id"]]
    not_an_id = cli("audit", "query", "--trace-id", "xyz", "--audit", info["audit"])
    assert not_an_id.returncode != 0 and "32 hexadecimal digits" in not_an_id.stderr

    if "triton" in children:  # Triton's simple, through the same router
        def simple_answers() -> None:
            ones = [list(range(16))]
            done = cli("infer", "simple", "--router", router, "--format", "json",
                       "--json", json.dumps({"INPUT0": ones, "INPUT1": ones}))
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["outputs"]["OUTPUT0"] == [[2 * i for i in range(16)]]
        eventually(simple_answers)

    missing = cli("infer", "nosuchmodel", "--router", router, "--input", "x=[1]")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr and "Traceback" not in missing.stderr
    assert f"(from the router at {router})" in " ".join(missing.stderr.split())  # the peer that answered

    # Given no address, commands act on this mesh: `meshserve up` recorded where it listens.
    context_file = Path(os.environ[CONTEXT_ENV])
    recorded = json.loads(context_file.read_text())
    assert (recorded["router"], recorded["etcd"], recorded["audit"], recorded["nats"], recorded["pid"]) == \
        (router, info["etcd"], info["audit"], info["nats"], proc.pid)
    listed = cli("models")
    assert listed.returncode == 0 and "iris" in listed.stdout, listed.stderr
    assert cli("keys", "list").returncode == 0  # etcd
    trail = cli("audit", "query", "--model", "iris", "--json")
    assert trail.returncode == 0 and len(trail.stdout.splitlines()) >= 2, trail.stderr
    top = cli("top", "--once", "--interval", "0.5")
    assert top.returncode == 0 and "routers: 1 of 1 answering" in top.stdout, top.stdout + top.stderr
    unknown = cli("infer", "nosuchmodel", "--input", "x=[1]")
    assert unknown.returncode == 1 and f"(from the router at {router})" in " ".join(unknown.stderr.split())

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    for name, pid in children.items():
        assert not alive(pid), f"{name} (pid {pid}) still runs after meshserve up stopped"
    assert not context_file.exists()  # commands no longer find a mesh that is gone
    gone = cli("models")
    assert gone.returncode == 1 and "--router" in gone.stderr and "MESHSERVE_ROUTER" in gone.stderr
