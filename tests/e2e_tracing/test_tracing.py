"""One trace per call: a client's trace goes on through the router, the runtimes, an R worker and Triton.

The client traces with the OpenTelemetry SDK into an in-memory exporter (its grpc client
instrumentation sends ``traceparent``); the mesh's processes export to the receiver in
this process. The audit event of each call carries the trace id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from e2e.helpers import IRIS_ROWS, assert_eventually
from e2e_audit.helpers import query
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import client_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .receiver import ReceivedSpan, SpanReceiver, children

pytestmark = [pytest.mark.slow, pytest.mark.r, pytest.mark.triton, pytest.mark.timeout(180)]

MODEL_INFER = "inference.GRPCInferenceService/ModelInfer"
TEXTS = np.array([b"I love it, great and fast", b"terrible, slow and broken"], dtype=object)


@pytest.fixture(scope="module")
def client_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture(scope="module")
def stub(mesh: LocalMesh, client_spans: InMemorySpanExporter) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    """A stub whose calls the client traces (its own tracer provider, not the process's global one)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(client_spans))
    with grpc.insecure_channel(mesh.router_address) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(intercept_channel(channel, client_interceptor(provider)))
    provider.shutdown()


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def only(spans: list[ReceivedSpan], **fields: str) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, f"{len(found)} spans with {fields}: {found}"
    return found[0]


def child(spans: list[ReceivedSpan], parent: ReceivedSpan, **fields: str) -> ReceivedSpan:
    return only(list(children(spans, parent)), **fields)


def test_a_pipeline_call_is_one_trace_from_the_client_to_the_r_worker(
        stub: oip_grpc.GRPCInferenceServiceStub, client_spans: InMemorySpanExporter, receiver: SpanReceiver,
        mesh: LocalMesh) -> None:
    client_spans.clear()
    request_id = f"traced-{time.time_ns()}"
    reply = stub.ModelInfer(build_request("sentiment", {"text": TEXTS}, request_id=request_id), timeout=30)
    assert list(decode_response(reply)["label"]) == [b"positive", b"negative"]
    (client,) = client_spans.get_finished_spans()
    assert client.name == f"/{MODEL_INFER}"
    trace = trace_id(client)

    def whole_trace() -> list[ReceivedSpan]:
        spans = receiver.spans(trace)
        names = {(s.service, s.name) for s in spans}
        assert {("python", "predict text-features"), ("r", "R worker predict"),
                ("router", "pipeline step sentiment/label"), ("triton", "InferRequest")} <= names, names
        return spans

    spans = assert_eventually(whole_trace, timeout=20)
    assert not [s for s in spans if s.error], [s for s in spans if s.error]

    # The router continues the client's span; the pipeline's steps are children of the pipeline's span.
    server = only(spans, service="router", kind="server")
    assert (server.name, server.parent_id) == (MODEL_INFER, span_id(client))
    pipeline = child(spans, server, name="pipeline sentiment")
    assert pipeline.attributes["meshserve.request_id"] == request_id
    steps = {s.attributes["meshserve.pipeline_step"]: s for s in children(spans, pipeline)}
    assert set(steps) == {"features", "score", "label"}
    assert steps["score"].attributes["meshserve.model"] == "sentiment-glm"

    # Each step calls its runtime: the Python and R runtimes over the mesh link, Triton over gRPC.
    for step, service, system in (("features", "python", "meshserve_link"), ("score", "r", "meshserve_link"),
                                  ("label", "triton", "grpc")):
        call = child(spans, steps[step], kind="client")
        assert call.attributes["rpc.system"] == system
        if service != "triton":
            runtime = child(spans, call, service=service, kind="server", name=MODEL_INFER)
            predict = child(spans, runtime, name=f"predict {steps[step].attributes['meshserve.model']}")
            assert predict.attributes["meshserve.platform"] == service
        else:
            runtime = child(spans, call, service="triton", name="InferRequest")  # Triton's own span
    r_predict = only(spans, service="r", kind="internal", name="predict sentiment-glm")
    worker = child(spans, r_predict, name="R worker predict")
    assert worker.attributes["meshserve.r.model"] == "sentiment-glm/1"
    assert worker.attributes["meshserve.r.worker_pid"] > 0 and worker.attributes["meshserve.r.predict_ns"] > 0

    # The audit trail holds the trace id of the pipeline call and of each step, and finds them by it.
    def audited() -> list[audit_pb2.AuditRecord]:
        records = query(mesh.audit_address, trace_id=trace)
        assert len(records) == 4, records
        return records

    records = assert_eventually(audited, timeout=15)
    assert {r.event.model for r in records} == {"sentiment", "text-features", "sentiment-glm", "sentiment-label"}
    assert all(r.event.trace_id == trace for r in records)
    assert {r.event.request_id for r in records} == {request_id}


def test_a_call_without_a_trace_starts_one_in_the_router(mesh: LocalMesh, receiver: SpanReceiver) -> None:
    request_id = f"untraced-{time.time_ns()}"
    with grpc.insecure_channel(mesh.router_address) as channel:
        oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            build_request("mtcars", {"wt": np.array([2.6]), "hp": np.array([110.0])}, request_id=request_id),
            timeout=15)
    (record,) = assert_eventually(lambda: _one(query(mesh.audit_address, request_id=request_id)), timeout=15)
    trace = record.event.trace_id
    assert len(trace) == 32

    def spans() -> list[ReceivedSpan]:
        found = receiver.spans(trace)
        assert {s.service for s in found} == {"router", "r"}, found
        assert any(s.name == "R worker predict" for s in found)
        return found

    found = assert_eventually(spans, timeout=15)
    root = only(found, service="router", kind="server")
    assert root.parent_id == "" and root.attributes["meshserve.model"] == "mtcars"


def _one(records: list[audit_pb2.AuditRecord]) -> list[audit_pb2.AuditRecord]:
    assert len(records) == 1, records
    return records


def test_streams_and_health_watch_work_while_traced(mesh: LocalMesh, receiver: SpanReceiver,
                                                    client_spans: InMemorySpanExporter) -> None:
    with grpc.insecure_channel(mesh.router_address) as channel:
        requests = [build_request("iris", {"features": IRIS_ROWS[i:i + 1]}, request_id=f"stream-{i}")
                    for i in range(3)]
        replies = list(oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=15))
        assert [r.infer_response.id for r in replies] == ["stream-0", "stream-1", "stream-2"]
        assert not any(r.error_message for r in replies)
        # grpc's health Watch writes with context.write(): tracing must leave it alone.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

    def streamed() -> None:
        router = [s for s in receiver.spans() if s.service == "router" and s.name.endswith("/ModelStreamInfer")]
        assert {s.kind for s in router} >= {"server", "client"}, router
        server = only(router, kind="server")
        upstream = child(receiver.spans(server.trace_id), server, kind="client")
        child(receiver.spans(server.trace_id), upstream, service="python", kind="server")

    assert_eventually(streamed, timeout=15)


def test_metadata_calls_and_errors_are_traced_with_their_status(
        stub: oip_grpc.GRPCInferenceServiceStub, client_spans: InMemorySpanExporter, receiver: SpanReceiver) -> None:
    client_spans.clear()
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(oip.ModelInferRequest(model_name="no-such-model"), timeout=5)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    (client,) = client_spans.get_finished_spans()
    server = assert_eventually(lambda: only(receiver.spans(trace_id(client)), service="router"), timeout=15)
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.error.startswith("NOT_FOUND")
