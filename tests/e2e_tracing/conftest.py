"""A traced local mesh: router, audit, Python, R and Triton runtimes, the ``sentiment`` pipeline.

Every meshserve service samples every call and exports its spans to a collector in this
process (:class:`~.receiver.SpanReceiver`); Triton traces with its own OpenTelemetry
support and exports to the same receiver over OTLP/HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e.helpers import ROOT
from e2e_triton.conftest import require_triton

from meshserve.local.mesh import LocalMesh, MeshConfig

from .receiver import SpanReceiver

SENTIMENT = ROOT / "examples" / "pipelines" / "sentiment.yaml"


@pytest.fixture(scope="package")
def receiver() -> Iterator[SpanReceiver]:
    spans = SpanReceiver()
    spans.start()
    yield spans
    spans.stop()


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory, receiver: SpanReceiver) -> Iterator[LocalMesh]:
    require_triton()
    config = MeshConfig(model_repository=ROOT / "examples" / "models", triton_repository=ROOT / "examples" / "triton",
                        pipelines=(SENTIMENT,), router_port=0, etcd_port=0, nats_port=0, audit_port=0,
                        data_dir=tmp_path_factory.mktemp("traced-mesh"), trace_sample_ratio=1.0,
                        otlp_endpoint=receiver.grpc_address, trace_export_s=0.1, triton_trace_url=receiver.http_url)
    with LocalMesh(config) as running:
        yield running
