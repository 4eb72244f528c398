"""A mesh of real processes whose metrics the tests read: etcd, NATS, the audit service, a Python runtime, a router.

Every service serves /metrics on a free port (``--metrics-port 0``) and says where in its
announce file. The repository holds ``iris`` (for ``meshserve top``) and ``counted``, a
copy that only the call-counting test calls, so its counts are exact whatever else ran.
The pipeline ``counted-pipe`` runs ``counted`` as its one step.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshserve import pipelines
from meshserve.errors import MeshError
from meshserve.local.etcd import EtcdServer
from meshserve.local.nats import NatsServer
from meshserve.local.process import ManagedProcess, start_service

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = """
name: counted-pipe
inputs:
  - {name: features, datatype: FP32, shape: [-1, 4]}
steps:
  - {name: classify, model: counted, inputs: {features: inputs.features}}
outputs:
  - {name: label, from: classify.label}
"""


@dataclass
class Service:
    process: ManagedProcess
    address: str
    metrics: str


@dataclass
class MetricsMesh:
    etcd: str
    router: Service
    runtime: Service
    audit: Service


def _apply(text: str, router: str) -> None:
    """Apply a pipeline through the router once it routes the step's model."""
    deadline = time.monotonic() + 15
    while True:
        try:
            asyncio.run(pipelines.apply(pipelines.parse(text), router=router))
            return
        except MeshError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="package")
def metrics_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsMesh]:
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_examples.py")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    folder = tmp_path_factory.mktemp("metrics-mesh")
    repository = folder / "models"
    for name in ("iris", "counted"):
        shutil.copytree(ROOT / "examples" / "models" / "iris", repository / name)
    started: list[ManagedProcess] = []

    def service(name: str, module: str, *args: str) -> Service:
        proc, info = start_service(name, module, ["--port", "0", "--metrics-port", "0", *args], folder)
        started.append(proc)
        return Service(proc, str(info["address"]), str(info["metrics_address"]))

    with EtcdServer(folder / "etcd", folder / "etcd.log") as etcd, \
            NatsServer(folder / "nats", folder / "nats.log") as nats:
        try:
            audit = service("audit", "meshserve.services.audit", "--nats-url", nats.url,
                            "--database", f"sqlite:///{folder / 'audit.db'}", "--dev-mode")
            runtime = service("runtime", "meshserve.runtimes.python", "--model-repository", str(repository),
                              "--etcd-endpoint", etcd.endpoint, "--dev-mode")
            router = service("router", "meshserve.services.router", "--etcd-endpoint", etcd.endpoint,
                             "--nats-url", nats.url, "--data-dir", str(folder / "router"), "--dev-mode")
            _apply(PIPELINE, router.address)
            yield MetricsMesh(etcd.endpoint, router, runtime, audit)
        finally:
            for proc in reversed(started):
                proc.stop(grace=5)
