"""Calls through a real router and Python runtime, counted exactly in both services' /metrics.

The model ``counted`` is called only here: 7 calls answered, 3 refused by the runtime
(a tensor of the wrong shape), 2 naming a model the mesh does not have, 2 requests on a
ModelStreamInfer stream and one call of the pipeline ``counted-pipe`` (one step).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from e2e.helpers import assert_eventually

from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .conftest import MetricsMesh
from .helpers import scrape, total, value

ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
OK, BAD, MISSING, STREAMED = 7, 3, 2, 2

pytestmark = pytest.mark.slow


def _make_calls(router: str) -> None:
    with grpc.insecure_channel(router) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(OK):
            stub.ModelInfer(build_request("counted", {"features": ROW}), timeout=10)
        for _ in range(BAD):
            with pytest.raises(grpc.RpcError) as bad:
                stub.ModelInfer(build_request("counted", {"features": ROW[:, :3]}), timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for _ in range(MISSING):
            with pytest.raises(grpc.RpcError) as missing:
                stub.ModelInfer(build_request("no-such-model", {"features": ROW}), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        requests = [build_request("counted", {"features": ROW}) for _ in range(STREAMED)]
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=10))
        assert len(answers) == STREAMED and not any(a.error_message for a in answers)
        stub.ModelInfer(build_request("counted-pipe", {"features": ROW}), timeout=10)


def test_calls_are_counted_by_router_and_runtime(metrics_mesh: MetricsMesh) -> None:
    _make_calls(metrics_mesh.router.address)

    router = scrape(metrics_mesh.router.metrics)
    calls = "meshserve_router_calls_total"
    infer = {"method": "ModelInfer", "model": "counted", "version": "1", "runtime_kind": "python"}
    assert value(router, calls, **infer, code="OK") == OK
    assert value(router, calls, **infer, code="INVALID_ARGUMENT") == BAD
    assert value(router, calls, method="ModelInfer", model="", version="", runtime_kind="", code="NOT_FOUND") == MISSING
    assert value(router, calls, method="ModelStreamInfer", model="counted", version="1", runtime_kind="python",
                 code="OK") == STREAMED
    assert value(router, calls, method="pipeline", model="counted-pipe", version="", runtime_kind="pipeline",
                 code="OK") == 1
    assert value(router, calls, method="pipeline_step", model="counted", version="1", runtime_kind="python",
                 code="OK") == 1
    assert total(router, calls, model="counted") == OK + BAD + STREAMED + 1
    # The latency histogram counts the same calls, every one within the +Inf bucket.
    histogram = "meshserve_router_call_duration_seconds"
    assert value(router, f"{histogram}_count", **infer, code="OK") == OK
    assert value(router, f"{histogram}_bucket", **infer, code="OK", le="+Inf") == OK
    assert value(router, f"{histogram}_count", **infer, code="INVALID_ARGUMENT") == BAD
    assert 0 < value(router, f"{histogram}_sum", **infer, code="OK") < OK * 10
    assert value(router, "meshserve_router_inflight_requests") == 0
    assert value(router, "meshserve_router_model_inflight_requests", model="counted", version="1") == 0
    assert value(router, "meshserve_router_retries_total") == 0
    assert value(router, "meshserve_router_etcd_connected") == 1
    assert value(router, "meshserve_router_registry_revision") > 0

    runtime = scrape(metrics_mesh.runtime.metrics)
    calls = "meshserve_runtime_calls_total"
    answered = OK + STREAMED + 1  # unary, streamed and the pipeline's step
    assert value(runtime, calls, model="counted", version="1", code="OK") == answered
    assert value(runtime, calls, model="counted", version="1", code="INVALID_ARGUMENT") == BAD
    assert total(runtime, calls, model="no-such-model") == 0  # the router refused it
    histogram = "meshserve_runtime_call_duration_seconds"
    assert value(runtime, f"{histogram}_count", model="counted", version="1", code="OK") == answered
    assert value(runtime, "meshserve_runtime_inflight_requests") == 0
    assert value(runtime, "meshserve_runtime_model_inflight_requests", model="counted", version="1") == 0
    assert value(runtime, "meshserve_runtime_predict_queue_depth") == 0
    loads = value(runtime, "meshserve_runtime_model_loads_total", result="ok")
    assert loads >= 2  # iris and counted at start (and catalog models, when test_placement ran first)
    assert value(runtime, "meshserve_runtime_model_loads_total", result="failed") == 0
    assert value(runtime, "meshserve_runtime_model_load_duration_seconds_count") == loads
    assert value(runtime, "meshserve_runtime_loaded_models") >= 2
    assert value(runtime, "meshserve_runtime_memory_used_bytes") > 0
    assert value(runtime, "meshserve_runtime_memory_budget_bytes") == 0  # no budget
    assert value(runtime, "meshserve_runtime_model_unloads_total", cause="evicted") == 0


def test_every_call_event_reaches_the_audit_store(metrics_mesh: MetricsMesh) -> None:
    with grpc.insecure_channel(metrics_mesh.router.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            stub.ModelInfer(build_request("iris", {"features": ROW}), timeout=10)

    def settled() -> tuple[float, float]:
        router, audit = scrape(metrics_mesh.router.metrics), scrape(metrics_mesh.audit.metrics)
        published = value(router, "meshserve_router_audit_events_published_total")
        stored = value(audit, "meshserve_audit_events_total", result="stored")
        assert published >= 3 and stored == published
        assert value(audit, "meshserve_audit_consumer_lag_events") == 0
        assert value(router, "meshserve_router_audit_journal_bytes") == 0  # every answered call's event delivered
        return published, stored

    assert_eventually(settled, timeout=20)
    router, audit = scrape(metrics_mesh.router.metrics), scrape(metrics_mesh.audit.metrics)
    assert value(router, "meshserve_router_nats_connected") == 1
    assert value(router, "meshserve_router_audit_spool_bytes") == 0
    assert value(router, "meshserve_router_audit_spool_events") == 0
    assert value(router, "meshserve_router_audit_events_dropped_total") == 0
    assert value(router, "meshserve_router_audit_journal_failures_total") == 0
    assert value(audit, "meshserve_audit_nats_connected") == 1
    assert value(audit, "meshserve_audit_database_connected") == 1
    assert value(audit, "meshserve_audit_events_total", result="quarantined") == 0
    assert value(audit, "meshserve_audit_store_batch_duration_seconds_count") >= 1
