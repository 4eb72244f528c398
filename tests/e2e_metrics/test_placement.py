"""Cold starts of catalog models in the router's metrics: one placed, one that cannot be."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from e2e.helpers import assert_eventually
from e2e_catalog.helpers import register

from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .conftest import MetricsMesh
from .helpers import scrape, value

ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)

pytestmark = pytest.mark.slow


def test_placements_are_counted_and_timed(metrics_mesh: MetricsMesh) -> None:
    revision = value(scrape(metrics_mesh.router.metrics), "meshserve_router_registry_revision")
    register(metrics_mesh.etcd, "cold")  # the example iris, loaded on its first call
    register(metrics_mesh.etcd, "broken", artifact="nowhere/1")
    assert_eventually(lambda: value(scrape(metrics_mesh.router.metrics),
                                    "meshserve_router_registry_revision") >= revision + 2)
    with grpc.insecure_channel(metrics_mesh.router.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(build_request("cold", {"features": ROW}), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(build_request("broken", {"features": ROW}), timeout=30)

    router = scrape(metrics_mesh.router.metrics)
    assert value(router, "meshserve_router_placements_total", result="placed") == 1
    assert value(router, "meshserve_router_placements_total", result="failed") == 1
    assert value(router, "meshserve_router_placement_duration_seconds_count") == 1
    assert value(router, "meshserve_router_placements_in_progress") == 0
    assert value(router, "meshserve_router_calls_total", method="ModelInfer", model="cold", version="1",
                 runtime_kind="python", code="OK") == 1
    runtime = scrape(metrics_mesh.runtime.metrics)
    assert value(runtime, "meshserve_runtime_calls_total", model="cold", version="1", code="OK") == 1
