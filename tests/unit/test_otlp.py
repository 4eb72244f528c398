"""The lean OTLP exporter writes what the SDK's OTLP encoder writes, and a collector reads it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from meshserve.tracing.otlp import OtlpExporter, encode_spans

Request = trace_service_pb2.ExportTraceServiceRequest
REMOTE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1"), ("other", "x")]))


def recorded(make: Any, resource: Resource | None = None) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "test", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    make(provider)
    provider.shutdown()
    return list(memory.get_finished_spans())


def same_as_sdk(spans: list[ReadableSpan]) -> None:
    assert Request.FromString(encode_spans(spans)) == sdk_encode_spans(spans)


def test_every_field_is_encoded_as_the_sdk_does() -> None:
    def make(provider: TracerProvider) -> None:
        tracer = provider.get_tracer("meshserve", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0",
                                     attributes={"scope.attr": True})
        other = provider.get_tracer("other")
        with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={
                "s": "text", "i": 42, "neg": -7, "f": 1.5, "t": True, "b": False, "z": 0,
                "strs": ("a", "b"), "ints": [1, -2], "floats": [0.5], "bools": [True, False]}) as root:
            root.add_event("event", {"k": "v", "n": 1})
            root.add_event("bare")
            root.set_status(Status(StatusCode.ERROR, "NOT_FOUND: no such model"))
            with tracer.start_as_current_span("child", kind=SpanKind.CLIENT,
                                              links=[Link(REMOTE, {"why": "batch"})]) as child:
                child.set_status(Status(StatusCode.OK))
            with other.start_as_current_span("internal"):
                pass
        remote = set_span_in_context(NonRecordingSpan(REMOTE))
        for kind in (SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.SERVER):
            tracer.start_span("remote child", context=remote, kind=kind).end()

    spans = recorded(make)
    assert len(spans) == 6
    same_as_sdk(spans)


def test_spans_of_several_resources_keep_their_groups() -> None:
    first = recorded(lambda p: p.get_tracer("a").start_span("one").end(), Resource.create({"service.name": "a"}))
    second = recorded(lambda p: p.get_tracer("b").start_span("two").end(), Resource.create({"service.name": "b"}))
    same_as_sdk(first + second + first)


scalars = st.one_of(st.text(max_size=20), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False))
attributes = st.dictionaries(st.text(min_size=1, max_size=10), st.one_of(
    scalars, st.lists(st.text(max_size=5), max_size=3), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3)),
    max_size=6)


@settings(max_examples=60, deadline=None)
@given(name=st.text(max_size=30), attrs=attributes, kind=st.sampled_from(list(SpanKind)))
def test_any_name_attributes_and_kind_encode_as_the_sdk_does(name: str, attrs: dict[str, Any],
                                                             kind: SpanKind) -> None:
    same_as_sdk(recorded(lambda p: p.get_tracer("t").start_span(name, kind=kind, attributes=attrs).end()))


class Collector:
    """An OTLP/gRPC receiver on loopback that keeps what it was sent."""

    def __init__(self, refuse: bool = False) -> None:
        self.received: list[Request] = []
        self.refuse = refuse
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(
                self._export, request_deserializer=Request.FromString,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)}),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.lock = threading.Lock()

    def _export(self, request: Request, context: grpc.ServicerContext) -> Any:
        if self.refuse:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "collector full")
        with self.lock:
            self.received.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    running.server.start()
    yield running
    running.server.stop(0)


def test_the_exporter_delivers_to_a_collector(collector: Collector) -> None:
    spans = recorded(lambda p: [p.get_tracer("t").start_span(f"span {i}").end() for i in range(3)])
    exporter = OtlpExporter(collector.address)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    (request,) = collector.received
    assert request == sdk_encode_spans(spans)


def test_a_refusing_or_absent_collector_drops_the_spans(collector: Collector, caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    collector.refuse = True
    spans = recorded(lambda p: p.get_tracer("t").start_span("lost").end())
    exporter = OtlpExporter(collector.address, timeout_s=2)
    try:
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(spans) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert exporter.dropped == 2
    warnings = [r.getMessage() for r in caplog.records if "trace collector" in r.getMessage()]
    assert len(warnings) == 1 and "RESOURCE_EXHAUSTED: collector full" in warnings[0]  # once a minute at most

    nobody = OtlpExporter("127.0.0.1:1", timeout_s=1)
    try:
        assert nobody.export(spans) is SpanExportResult.FAILURE
    finally:
        nobody.shutdown()
