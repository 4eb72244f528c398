"""`meshserve up --tls`: the whole local mesh (etcd, NATS, audit, router, Python, R and Triton) over TLS.

The example pipeline crosses all three runtime kinds, so one call shows that the router
reaches the Python runtime's link, the R runtime and Triton (mutual TLS) with its mesh
certificate, and the audit service reads the trail from NATS over TLS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import ROOT, assert_eventually, rpc_error
from e2e_triton.conftest import require_triton

from meshserve.cli import context
from meshserve.local.mesh import LocalMesh, MeshConfig
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

TEXT = np.array([b"I love it, great and fast"], dtype=object)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    require_triton()
    config = MeshConfig(model_repository=ROOT / "examples" / "models", triton_repository=ROOT / "examples" / "triton",
                        pipelines=(ROOT / "examples" / "pipelines" / "sentiment.yaml",), router_port=0, etcd_port=0,
                        nats_port=0, audit_port=0, tls=True, data_dir=tmp_path_factory.mktemp("tls-local-mesh"))
    with LocalMesh(config) as running:
        yield running


def _operator(mesh: LocalMesh) -> grpc.ChannelCredentials:
    ca, cert, key = (path.read_bytes() for path in mesh.tls_files("operator"))
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def test_every_link_names_tls(mesh: LocalMesh) -> None:
    assert mesh.etcd_endpoint.startswith("https://")
    assert mesh.nats_url.startswith("tls://")


def test_the_pipeline_crosses_python_r_and_triton_over_tls(mesh: LocalMesh) -> None:
    with grpc.secure_channel(mesh.router_address, _operator(mesh)) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        answer = decode_response(stub.ModelInfer(build_request("sentiment", {"text": TEXT}), timeout=10))
    assert answer["label"].tolist() == [b"positive"]


@pytest.mark.parametrize("runtime", ["runtime", "r-runtime", "triton"])
def test_runtimes_refuse_callers_without_a_mesh_certificate(mesh: LocalMesh, runtime: str) -> None:
    ca = mesh.tls_files("operator")[0].read_bytes()
    with grpc.secure_channel(mesh.addresses[runtime], grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        error = rpc_error(lambda: oip_grpc.GRPCInferenceServiceStub(channel).ServerReady(
            oip.ServerReadyRequest(), timeout=3))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("runtime", ["runtime", "r-runtime", "triton"])
def test_runtimes_refuse_infer_metadata_load_and_unload_without_a_mesh_certificate(
        mesh: LocalMesh, runtime: str) -> None:
    ca = mesh.tls_files("operator")[0].read_bytes()
    model = {"runtime": "iris", "r-runtime": "mtcars", "triton": "simple"}[runtime]
    with grpc.secure_channel(mesh.addresses[runtime], grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            lambda: stub.ModelInfer(oip.ModelInferRequest(model_name=model), timeout=3),
            lambda: stub.ModelMetadata(oip.ModelMetadataRequest(name=model), timeout=3),
            lambda: stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=model), timeout=3),
            lambda: stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name=model), timeout=3),
        ]
        for call in calls:
            assert rpc_error(call).code() == grpc.StatusCode.UNAVAILABLE
    # Nothing was unloaded: the pipeline over all three runtimes still answers.
    with grpc.secure_channel(mesh.router_address, _operator(mesh)) as channel:
        answer = decode_response(oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            build_request("sentiment", {"text": TEXT}), timeout=10))
    assert answer["label"].tolist() == [b"positive"]


def test_the_audit_trail_arrives_over_tls(mesh: LocalMesh) -> None:
    with grpc.secure_channel(mesh.router_address, _operator(mesh)) as channel:
        oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(build_request("sentiment", {"text": TEXT}), timeout=10)
    with grpc.secure_channel(mesh.audit_address, _operator(mesh)) as channel:
        service = audit_pb2_grpc.AuditServiceStub(channel)

        def pipeline_calls() -> int:
            found = [response.record for response in service.Query(
                audit_pb2.QueryRequest(model="sentiment", limit=100), timeout=5)]
            assert found
            return len(found)

        assert assert_eventually(pipeline_calls, timeout=15) >= 1


def test_commands_given_no_address_use_the_operator_certificate_of_the_context(mesh: LocalMesh,
                                                                               tmp_path: Path) -> None:
    path = tmp_path / "context.json"
    context.write(path, context.make(
        router=mesh.router_address, routers=mesh.router_addresses, etcd=mesh.etcd_endpoint, audit=mesh.audit_address,
        nats=mesh.nats_url, metrics=[], tls=mesh.tls_files("operator"), data_dir=mesh.data_dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")} | {context.CONTEXT_ENV: str(path)}
    for args, words in ((["models"], "sentiment"), (["keys", "list"], "API keys"), (["audit", "verify"], "OK")):
        done = subprocess.run([sys.executable, "-m", "meshserve.cli.main", *args], capture_output=True, text=True,
                              timeout=60, check=False, env={**env, "COLUMNS": "200"})
        assert done.returncode == 0 and words in done.stdout, (args, done.stdout, done.stderr)
