"""The context file: written by `meshserve up`, read by commands given no address; errors name their peer."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest
from typer.testing import CliRunner

from meshserve.cli import context
from meshserve.cli.main import app
from meshserve.errors import MeshError
from meshserve.local.etcd import EtcdServer
from meshserve.registry.etcd import with_etcd

runner = CliRunner()
ADDRESS_VARIABLES = ("MESHSERVE_ROUTER", "MESHSERVE_ETCD", "MESHSERVE_AUDIT", "MESHSERVE_METRICS")


@pytest.fixture
def context_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run" / "context.json"
    monkeypatch.setenv(context.CONTEXT_ENV, str(path))
    for name in ADDRESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def other_mesh() -> Iterator[subprocess.Popen[bytes]]:
    """A live process standing for another `meshserve up`."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def mesh(data_dir: Path, router: str = "127.0.0.1:1", etcd: str = "127.0.0.1:1",
         **extra: object) -> context.MeshContext:
    made = context.make(router=router, routers=[router], etcd=etcd, audit="127.0.0.1:1", nats="nats://127.0.0.1:1",
                        metrics=["127.0.0.1:1"], tls=None, data_dir=data_dir)
    return context.MeshContext(**{**made.__dict__, **extra})  # type: ignore[arg-type]


def test_claim_writes_the_file_for_its_owner_and_release_removes_it(context_file: Path, tmp_path: Path) -> None:
    mine = mesh(tmp_path)
    claim = context.claim(mine)
    assert claim.path == context_file and claim.holder is None
    assert context.read(context_file) == mine and mine.running
    assert stat.S_IMODE(context_file.stat().st_mode) == 0o600
    assert [p.name for p in context_file.parent.iterdir()] == ["context.json"]  # no temporary file left
    context.release(claim)
    assert not context_file.exists()


def test_a_dead_meshs_context_is_stale_and_replaced(context_file: Path, tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    context.write(context_file, mesh(tmp_path, pid=gone.pid, started="1"))
    stale = context.read(context_file)
    assert stale is not None and not stale.running
    claim = context.claim(mesh(tmp_path))
    assert claim.path == context_file and claim.holder is None
    assert context.read(context_file) == mesh(tmp_path)


def test_a_second_mesh_leaves_a_live_meshs_context_alone(context_file: Path, tmp_path: Path,
                                                         other_mesh: subprocess.Popen[bytes]) -> None:
    first = mesh(tmp_path / "first", router="127.0.0.1:8001", pid=other_mesh.pid,
                 started=context._start_time(other_mesh.pid))
    context.write(context_file, first)
    (tmp_path / "second").mkdir()
    claim = context.claim(mesh(tmp_path / "second"))
    assert claim.holder == first and claim.path == tmp_path / "second" / "context.json"
    assert context.read(context_file) == first
    context.release(claim)
    assert not claim.path.exists() and context.read(context_file) == first


@pytest.mark.parametrize(("args", "flag", "variable"), [
    (["models"], "--router", "MESHSERVE_ROUTER"),
    (["runtimes"], "--router", "MESHSERVE_ROUTER"),
    (["route", "show"], "--router", "MESHSERVE_ROUTER"),
    (["keys", "list"], "--etcd", "MESHSERVE_ETCD"),
    (["models", "unregister", "iris"], "--etcd", "MESHSERVE_ETCD"),
    (["audit", "query"], "--audit", "MESHSERVE_AUDIT"),
    (["audit", "policy", "show"], "--etcd", "MESHSERVE_ETCD"),
    (["top", "--once"], "--metrics", "MESHSERVE_METRICS"),
])
def test_without_an_address_or_a_context_commands_say_how_to_give_one(context_file: Path, args: list[str], flag: str,
                                                                      variable: str) -> None:
    done = runner.invoke(app, args)
    assert done.exit_code == 1, done.output
    output = " ".join(done.output.split())
    assert flag in output and variable in output and "meshserve up" in output and str(context_file) in output
    assert "Traceback" not in output


def test_a_stale_context_is_not_used(context_file: Path, tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    context.write(context_file, mesh(tmp_path, pid=gone.pid))
    done = runner.invoke(app, ["runtimes"])
    assert done.exit_code == 1
    assert f"pid {gone.pid}, is not running" in " ".join(done.output.split())


def test_commands_use_the_context_and_name_the_address_that_failed(context_file: Path, tmp_path: Path) -> None:
    context.write(context_file, mesh(tmp_path, router="127.0.0.1:1", etcd="127.0.0.1:2"))
    done = runner.invoke(app, ["runtimes", "--timeout", "2"])
    assert done.exit_code == 1
    assert "cannot reach the router at 127.0.0.1:1" in done.output
    done = runner.invoke(app, ["keys", "list"])
    assert done.exit_code == 1 and "etcd at 127.0.0.1:2 did not answer" in done.output
    given = runner.invoke(app, ["runtimes", "--router", "127.0.0.1:3", "--timeout", "2"])  # a flag wins
    assert given.exit_code == 1 and "cannot reach the router at 127.0.0.1:3" in given.output
    from_env = runner.invoke(app, ["audit", "verify"], env={"MESHSERVE_AUDIT": "127.0.0.1:4"})
    assert from_env.exit_code == 1 and "cannot reach the audit service at 127.0.0.1:4" in from_env.output


def test_a_tls_context_needs_its_operator_certificate(context_file: Path, tmp_path: Path) -> None:
    missing = [str(tmp_path / name) for name in ("ca.crt", "operator.crt", "operator.key")]
    context.write(context_file, mesh(tmp_path, tls=missing))
    done = runner.invoke(app, ["runtimes"])
    assert done.exit_code == 1 and "uses TLS" in done.output and "ca.crt" in done.output


def test_etcd_errors_name_the_etcd_they_came_from(etcd: EtcdServer) -> None:
    async def too_large(client: aetcd.Client) -> None:
        await client.put(b"/meshserve-test/too-large", b"x" * (3 * 2**20))  # past etcd's request limit

    with pytest.raises(MeshError) as refused:
        with_etcd(etcd.endpoint, too_large)
    assert f"etcd at {etcd.endpoint}: " in refused.value.message
    assert os.environ.get(context.CONTEXT_ENV)  # the suite's own context file, never the user's
