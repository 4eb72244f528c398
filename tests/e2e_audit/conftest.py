"""The mesh the audit end-to-end tests call, as real processes on loopback.

etcd (the session's), NATS JetStream, the audit service on SQLite, one Python runtime
(iris, ``pair`` with three inputs, ``vault`` for strict mode) and a router emitting call
events: one set for the whole package, since the runtime alone takes seconds to start on
this machine. Tests that stop or kill a part restart it before they end; the autouse
``mesh_whole`` fixture restarts whatever a failed test left down, so the next test starts
from a working mesh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from meshserve.local.etcd import EtcdServer
from meshserve.local.nats import NatsServer
from meshserve.local.process import ManagedProcess
from meshserve.protos.inference import grpc_service_pb2 as oip

from .helpers import start_service, stub, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("iris", "pair", "vault")

PAIR = textwrap.dedent('''
    import numpy as np
    from meshserve.runtimes.python import Model


    class Pair(Model):
        """Three inputs of three datatypes; y = 2 * secret, n = public + 1."""

        def predict(self, inputs):
            return {"y": np.asarray(inputs["secret"]) * 2, "n": np.asarray(inputs["public"]) + 1}
''')


def _python_model(repository: Path, name: str) -> None:
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(PAIR)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "framework": "python", "entrypoint": "model.py:Pair",
        "inputs": [{"name": "secret", "datatype": "FP32", "shape": [-1]},
                   {"name": "public", "datatype": "INT32", "shape": [-1]},
                   {"name": "note", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]},
                    {"name": "n", "datatype": "INT64", "shape": [-1]}],
    }))


class AuditMesh:
    """The processes of the audit tests; each part can be stopped, killed and started again."""

    def __init__(self, etcd: EtcdServer, folder: Path, repository: Path) -> None:
        self.etcd_endpoint = etcd.endpoint
        self.folder = folder
        self.repository = repository
        self.nats = NatsServer(folder / "nats", folder / "nats.log")
        self.db_path = folder / "audit.db"
        self.audit: ManagedProcess | None = None
        self.audit_address = ""
        self.runtime: ManagedProcess | None = None
        self.runtime_id = ""
        self.router: ManagedProcess | None = None
        self.router_address = ""
        self.router_data_dir = folder / "router-data"
        self._routers = 0

    @property
    def database(self) -> str:
        return f"sqlite:///{self.db_path}"

    def start(self) -> None:
        self.nats.start()
        self.start_audit()
        self.runtime, _, info = start_service("runtime", "meshserve.runtimes.python", [
            "--model-repository", str(self.repository), "--etcd-endpoint", self.etcd_endpoint,
            "--runtime-id", "audit-e2e-runtime", "--dev-mode"], self.folder)
        self.runtime_id = str(info["runtime_id"])
        self.router, self.router_address = self.start_router(self.router_data_dir)

    def start_audit(self, database: str | None = None, name: str = "audit", *extra: str,
                    dev_mode: bool = True) -> tuple[ManagedProcess, str]:
        """The audit service (on this mesh's SQLite file unless told otherwise), reading keys and rules from etcd.

        In dev mode, as ``meshserve up`` runs it, callers without a key may read the whole trail.
        """
        proc, address, _ = start_service(name, "meshserve.services.audit", [
            "--nats-url", self.nats.url, "--database", database or self.database, "--ack-wait-s", "2",
            "--etcd-endpoint", self.etcd_endpoint, "--dev-mode" if dev_mode else "--no-dev-mode", *extra],
            self.folder)
        if name == "audit":
            self.audit, self.audit_address = proc, address
        return proc, address

    def start_router(self, data_dir: Path, *extra: str) -> tuple[ManagedProcess, str]:
        """A router emitting call events to this mesh's NATS; returns once it routes every model."""
        self._routers += 1
        proc, address, _ = start_service(f"router-{self._routers}", "meshserve.services.router", [
            "--etcd-endpoint", self.etcd_endpoint, "--nats-url", self.nats.url, "--data-dir", str(data_dir),
            "--dev-mode", *extra], self.folder)
        with grpc.insecure_channel(address) as channel:
            def ready() -> bool:
                try:
                    index = stub(channel).RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5)
                except grpc.RpcError as e:  # a router started again on a port this process called before:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:  # gRPC may wait out its reconnection back-off
                        raise
                    return False
                return {m.name for m in index.models if m.state == "READY"} >= set(MODELS)
            wait_for(ready, 30, "routing every model")
        return proc, address

    def restore(self) -> None:
        """Start again whatever a test left stopped."""
        if self.nats.process is None or not self.nats.process.alive():
            self.nats.stop()
            self.nats.start()
        if self.audit is None or not self.audit.alive():
            if self.audit is not None:
                self.audit.stop()
            self.start_audit()

    def stop(self) -> None:
        for proc in (self.router, self.runtime, self.audit):
            if proc is not None:
                proc.stop(grace=5)
        self.nats.stop()


@pytest.fixture(scope="package")
def audit_mesh(etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditMesh]:
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_examples.py")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    repository = tmp_path_factory.mktemp("audit-models")
    shutil.copytree(ROOT / "examples" / "models" / "iris", repository / "iris")
    for name in ("pair", "vault"):
        _python_model(repository, name)
    mesh = AuditMesh(etcd, tmp_path_factory.mktemp("audit-mesh"), repository)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(autouse=True)
def mesh_whole(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the mesh: NATS and the audit service are running again."""
    yield
    if "audit_mesh" in request.fixturenames:
        request.getfixturevalue("audit_mesh").restore()


@pytest.fixture(scope="package")
def router(audit_mesh: AuditMesh) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(audit_mesh.router_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel
