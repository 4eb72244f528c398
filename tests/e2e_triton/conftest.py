"""A mesh of real processes for the Triton tests: etcd, a real tritonserver, its registrar, a router.

Triton serves a copy of examples/triton plus ``broken``, a model whose code fails to
load. Tests that kill Triton or the registrar start their own (see test_faults.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e.helpers import ROOT, allow_anonymous, assert_eventually, router_process

from meshserve.local import triton
from meshserve.local.etcd import EtcdServer
from meshserve.local.process import ManagedProcess

from .helpers import BROKEN_CONFIG, BROKEN_MODEL, ready_models, registrar_process

TRITON_EXAMPLES = ROOT / "examples" / "triton"


def require_triton() -> None:
    """Skip without Triton, unless the run must have it (make test sets MESHSERVE_REQUIRE_TRITON)."""
    if triton.available():
        return
    why = f"Triton is not installed: {triton.INSTALL_HINT} and install Debian's python3-numpy"
    if os.environ.get("MESHSERVE_REQUIRE_TRITON"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="package")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_triton()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_examples.py")], check=True, capture_output=True)
    repository = tmp_path_factory.mktemp("triton-models")
    for model in ("simple", "iris-onnx", "countdown"):
        shutil.copytree(TRITON_EXAMPLES / model, repository / model)
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "config.pbtxt").write_text(BROKEN_CONFIG)
    (repository / "broken" / "1" / "model.py").write_text(BROKEN_MODEL)
    return repository


@pytest.fixture(scope="package")
def triton_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    folder = tmp_path_factory.mktemp("triton-etcd")
    with EtcdServer(folder, folder / "etcd.log") as server:
        allow_anonymous(server.endpoint, "load")  # the tests load and unload Triton models without a key
        yield server


@pytest.fixture(scope="package")
def triton_server(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton.TritonServer]:
    folder = tmp_path_factory.mktemp("triton")
    server = triton.TritonServer(triton_repository, folder, folder / "triton.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def registrar(triton_server: triton.TritonServer, triton_etcd: EtcdServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    with registrar_process(triton_server.address, triton_etcd.endpoint,
                           tmp_path_factory.mktemp("registrar")) as process:
        yield process


@pytest.fixture(scope="package")
def router_address(triton_etcd: EtcdServer, registrar: ManagedProcess,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A router that sees Triton's models ready."""
    with router_process(triton_etcd.endpoint, tmp_path_factory.mktemp("triton-router")) as (_, address), \
            grpc.insecure_channel(address) as channel:
        assert_eventually(lambda: _all_ready(channel), timeout=20, retry_on=(AssertionError, grpc.RpcError))
        yield address


@pytest.fixture(scope="package")
def router(router_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(router_address) as channel:
        yield channel


def _all_ready(channel: grpc.Channel) -> None:
    assert {"simple", "iris-onnx", "countdown"} <= ready_models(channel)
