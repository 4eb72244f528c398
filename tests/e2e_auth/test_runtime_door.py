"""Outside dev mode, in plain text, the router is the only door: runtimes refuse callers without the mesh credential.

A mesh started like ``meshserve up --no-dev-mode`` (real etcd, NATS, router, Python and R
runtimes, Triton): straight to a runtime's port or mesh link, anonymous ModelInfer,
ModelMetadata, RepositoryModelLoad and RepositoryModelUnload are refused (UNAUTHENTICATED
from meshserve's runtimes; Triton's own refusal), and nothing was unloaded; keyed calls
through the router are served from every runtime kind.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import ROOT, rpc_error
from e2e_triton.conftest import require_triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from e2e_auth.helpers import meshserve, new_key
from meshserve.auth import mesh as mesh_credential
from meshserve.errors import Unauthenticated
from meshserve.link import MODEL_INFER, LinkClient
from meshserve.local.mesh import LocalMesh, MeshConfig
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

IRIS = {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}
MTCARS = {"wt": np.array([2.62]), "hp": np.array([110.0])}
SIMPLE = {"INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16), "INPUT1": np.ones((1, 16), dtype=np.int32)}
CALLS = {"runtime": ("iris", IRIS), "r-runtime": ("mtcars", MTCARS), "triton": ("simple", SIMPLE)}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    require_triton()
    config = MeshConfig(model_repository=ROOT / "examples" / "models", triton_repository=ROOT / "examples" / "triton",
                        dev_mode=False, router_port=0, etcd_port=0, nats_port=0, audit_port=0,
                        data_dir=tmp_path_factory.mktemp("door-mesh"))
    with LocalMesh(config) as running:
        yield running


@pytest.fixture(scope="module")
def key(mesh: LocalMesh) -> str:
    key = new_key(mesh, "door-tester")
    done = meshserve(mesh, "policy", "allow", "--principal", "door-tester", "--models", "*",
                     "--actions", "infer,metadata")
    assert done.returncode == 0, done.stderr
    return key


@contextmanager
def _stub(address: str) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def _anonymous_calls(model: str, inputs: dict[str, np.ndarray]) -> dict[str, Callable[
        [oip_grpc.GRPCInferenceServiceStub], object]]:
    return {
        "ModelInfer": lambda s: s.ModelInfer(build_request(model, inputs), timeout=5),
        "ModelMetadata": lambda s: s.ModelMetadata(oip.ModelMetadataRequest(name=model), timeout=5),
        "RepositoryModelLoad": lambda s: s.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=model),
                                                               timeout=5),
        "RepositoryModelUnload": lambda s: s.RepositoryModelUnload(
            oip.RepositoryModelUnloadRequest(model_name=model), timeout=5),
    }


def _served_through_router(mesh: LocalMesh, key: str, runtime: str) -> dict[str, np.ndarray]:
    model, inputs = CALLS[runtime]
    with grpc.insecure_channel(mesh.router_address) as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            build_request(model, inputs), metadata=(("authorization", f"Bearer {key}"),), timeout=10)
    return decode_response(reply)


@pytest.mark.parametrize("runtime", ["runtime", "r-runtime"])
def test_meshserve_runtimes_refuse_anonymous_calls_of_every_kind(mesh: LocalMesh, key: str, runtime: str) -> None:
    model, inputs = CALLS[runtime]
    with _stub(mesh.addresses[runtime]) as stub:
        for method, call in _anonymous_calls(model, inputs).items():
            error = rpc_error(functools.partial(call, stub))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert "takes calls from the mesh only" in (error.details() or ""), method
        # A forged credential is no better than none.
        forged = (("meshserve-mesh-credential", mesh_credential.generate()),)
        error = rpc_error(lambda: stub.ModelInfer(build_request(model, inputs), metadata=forged, timeout=5))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health checks stay open for probes.
        with grpc.insecure_channel(mesh.addresses[runtime]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    # The anonymous unload changed nothing: keyed callers are still served.
    assert _served_through_router(mesh, key, runtime)


def test_triton_refuses_callers_without_the_mesh_credential(mesh: LocalMesh, key: str) -> None:
    model, inputs = CALLS["triton"]
    with _stub(mesh.addresses["triton"]) as stub:
        for method, call in _anonymous_calls(model, inputs).items():
            error = rpc_error(functools.partial(call, stub))
            assert "restricted" in (error.details() or ""), method
    answer = _served_through_router(mesh, key, "triton")
    assert answer["OUTPUT0"].tolist() == (SIMPLE["INPUT0"] + SIMPLE["INPUT1"]).tolist()


def test_the_mesh_link_refuses_frames_without_the_credential(mesh: LocalMesh) -> None:
    link_address = _link_address(mesh)
    request = build_request("iris", IRIS).SerializeToString()

    async def call(credential: str | None) -> bytes:
        link = await LinkClient.connect(link_address, 64 * 1024 * 1024, credential=credential)
        try:
            return await link.call(MODEL_INFER, request, 5.0)
        finally:
            link.close()

    with pytest.raises(Unauthenticated, match="takes calls from the mesh only"):
        asyncio.run(call(None))
    with pytest.raises(Unauthenticated):
        asyncio.run(call(mesh_credential.generate()))
    assert mesh.mesh_credential_file is not None
    answer = oip.ModelInferResponse.FromString(asyncio.run(call(mesh_credential.read(mesh.mesh_credential_file))))
    assert answer.model_name == "iris"


def test_refusals_are_logged_rate_limited(mesh: LocalMesh) -> None:
    log = mesh.log_dir / "runtime.log"
    with _stub(mesh.addresses["runtime"]) as stub:
        for _ in range(20):
            rpc_error(functools.partial(stub.ModelMetadata, oip.ModelMetadataRequest(name="iris"), timeout=5))
    lines = [line for line in log.read_text().splitlines() if "refused" in line and "mesh credential" in line]
    assert lines, "no refusal logged"
    # Refusals in this module came within seconds: at most a few lines, not one per call.
    assert len(lines) <= 4, lines
    assert mesh_credential.read(mesh.mesh_credential_file or Path()) not in log.read_text()


def test_a_runtime_outside_dev_mode_with_neither_tls_nor_credential_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshserve.runtimes.python", "--model-repository", str(ROOT / "examples" / "models"),
         "--etcd-endpoint", "127.0.0.1:1", "--port", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "would take calls from anyone" in done.stderr and "--dev-mode" in done.stderr
    assert "Traceback" not in done.stderr


def _link_address(mesh: LocalMesh) -> str:
    """The Python runtime's mesh link, from what it announced to the mesh."""
    announced = json.loads((mesh.data_dir / "runtime.json").read_text())
    return str(announced["link_address"])
