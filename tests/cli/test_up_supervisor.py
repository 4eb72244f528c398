"""`meshserve up` keeps the mesh up: a runtime that dies is restarted with no failed call; SIGKILL of it leaves nothing.

Both tests are bounded: the load is 2 client threads for at most 60 s (each call with a
5 s deadline), and every wait has its own limit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, copy_model, infer, write_python_model
from e2e_scale.helpers import WHOAMI, Load, listed_runtimes

from meshserve.local.process import start_service

MESHSERVE = str(Path(sys.executable).parent / "meshserve")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("meshserve.runtimes.python.__main__") is None
        or importlib.util.find_spec("meshserve.services.router.__main__") is None,
        reason="the router or the Python runtime is not installed",
    ),
]


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent PID, start time in clock ticks) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def running(pid: int, started: int) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (a zombie does not)."""
    found = stat(pid)
    return found is not None and found[0] != "Z" and found[2] == started


def descendants(root: int) -> dict[int, str]:
    """Every live process under ``root`` (children, theirs...), by PID, with its command line."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := stat(int(entry))) is not None and found[0] != "Z":
            parents.setdefault(found[1], []).append(int(entry))
    tree: dict[int, str] = {}
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            tree[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        todo += parents.get(pid, [])
    return tree


@contextlib.contextmanager
def meshserve_up(folder: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """`meshserve up` on free ports: yields (process, announce file, output file) once it is up."""
    announce, output = folder / "up.json", folder / "up.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [MESHSERVE, "up", "--router-port", "0", "--etcd-port", "0", "--data-dir", str(folder / "data"),
             "--announce-file", str(announce), *args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 120
        while not announce.exists():
            assert proc.poll() is None, f"meshserve up exited with {proc.returncode}:\n{output.read_text()}"
            assert time.monotonic() < deadline, "meshserve up did not come up in 120 s"
            time.sleep(0.1)
        yield proc, announce, output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in read(announce).get("children", {}).values():  # the last ones it announced
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def read(announce: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(announce.read_text())
    except (OSError, ValueError):
        return {}
    return data


@pytest.mark.timeout(300)
def test_a_runtime_killed_under_up_is_restarted_and_no_call_fails(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    copy_model(EXAMPLES / "iris", repository, "iris")
    write_python_model(repository, "whoami", WHOAMI, "Whoami")
    with meshserve_up(tmp_path, "--model-repository", str(repository), "--no-triton", "--no-audit",
                      "--no-r-runtime") as (proc, announce, output):
        info = read(announce)
        victim, victim_id = info["children"]["runtime"], info["runtime_id"]
        # A second replica of the same models, on the mesh's etcd.
        replica, replica_info = start_service("replica", "meshserve.runtimes.python", [
            "--port", "0", "--model-repository", str(repository), "--etcd-endpoint", info["etcd"],
            "--runtime-id", "replica-b", "--dev-mode"], tmp_path, timeout=90)
        try:
            with grpc.insecure_channel(replica_info["address"]) as direct:
                labels = infer(direct, "iris", IRIS_ROWS)["label"]
            with grpc.insecure_channel(info["router"]) as router:
                def both_listed() -> None:
                    assert {victim_id, "replica-b"} <= listed_runtimes(router)
                assert_eventually(both_listed, timeout=30, retry_on=(AssertionError, grpc.RpcError))
                with Load([router], IRIS_ROWS, labels, threads=2, max_s=60) as load:
                    def both_serve() -> None:
                        assert {victim, replica.pid} <= set(load.served()), load.served()
                    assert_eventually(both_serve, timeout=20)
                    os.kill(victim, signal.SIGKILL)
                    killed_at = time.monotonic()

                    def restarted() -> dict[str, Any]:
                        now = read(announce)
                        assert now.get("children", {}).get("runtime", victim) != victim
                        return now
                    info = assert_eventually(restarted, timeout=60, interval=0.2)
                    fresh, fresh_id = info["children"]["runtime"], info["runtime_id"]

                    def serves_again() -> None:
                        assert fresh_id in listed_runtimes(router)  # registered again
                        assert fresh in load.served(since=killed_at), load.served(since=killed_at)
                    assert_eventually(serves_again, timeout=60, interval=0.2)
                    served_before_stop = load.served(since=killed_at)
            assert not load.failures, f"{len(load.failures)} of {len(load.outcomes)} calls failed: {load.failures[:5]}"
            assert replica.pid in served_before_stop and victim not in load.served(since=killed_at + 1)
            assert proc.poll() is None and fresh_id != victim_id
            print(f"runtime {victim} killed; {fresh} serves again after {time.monotonic() - killed_at:.1f} s; "
                  f"{len(load.outcomes)} calls, none failed")
        finally:
            replica.stop()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    out = output.read_text()
    assert f"runtime (pid {victim}) was killed by signal 9 (SIGKILL); its log ends with:" in out, out
    assert "restarting runtime in 0.5 s" in out, out
    assert f"runtime restarted (pid {fresh}" in out, out


@pytest.mark.timeout(300)
def test_sigkill_of_up_leaves_no_process_behind(tmp_path: Path) -> None:
    with meshserve_up(tmp_path, "--nats-port", "0", "--audit-port", "0") as (proc, announce, _):
        children: dict[str, int] = read(announce)["children"]

        def whole_tree() -> dict[int, str]:
            tree = descendants(proc.pid)
            assert set(children.values()) <= set(tree), (children, tree)
            if "r-runtime" in children:  # its Rscript workers, grandchildren of meshserve up
                assert any("worker.R" in command for command in tree.values()), tree
            if "triton" in children:  # Triton's Python-backend stubs
                assert any("triton_python_backend_stub" in command for command in tree.values()), tree
            return tree

        tree = assert_eventually(whole_tree, timeout=30, interval=0.2)
        identity = {pid: found[2] for pid in tree if (found := stat(pid)) is not None}
        proc.kill()
        proc.wait()
        killed_at = time.monotonic()
        left = dict(tree)
        while left and time.monotonic() - killed_at < 5.0:
            left = {pid: command for pid, command in left.items() if running(pid, identity[pid])}
            time.sleep(0.05)
        try:
            assert not left, f"{len(left)} of {len(tree)} processes outlived meshserve up by 5 s: {left}"
        finally:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        print(f"{len(tree)} processes under meshserve up, all gone {time.monotonic() - killed_at:.2f} s after "
              f"its SIGKILL: {sorted({command.split()[0].rsplit('/', 1)[-1] for command in tree.values()})}")
