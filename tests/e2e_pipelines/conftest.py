"""The whole local mesh for the pipeline tests: Python, R and Triton runtimes, audit, one router.

It serves the example models and applies the example pipeline (``sentiment``), as
``make up`` does. Triton and R are required here (``make test`` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e.helpers import ROOT
from e2e_triton.conftest import require_triton

from meshserve.local.mesh import LocalMesh, MeshConfig
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

SENTIMENT = ROOT / "examples" / "pipelines" / "sentiment.yaml"


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    require_triton()
    config = MeshConfig(model_repository=ROOT / "examples" / "models", triton_repository=ROOT / "examples" / "triton",
                        pipelines=(SENTIMENT,), router_port=0, etcd_port=0, nats_port=0, audit_port=0,
                        data_dir=tmp_path_factory.mktemp("pipeline-mesh"))
    with LocalMesh(config) as running:
        yield running


@pytest.fixture
def stub(mesh: LocalMesh) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(mesh.router_address) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def tmp_yaml(tmp_path: Path) -> Path:
    return tmp_path / "pipeline.yaml"
