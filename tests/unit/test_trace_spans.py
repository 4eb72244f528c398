"""meshserve's own spans: sampling, the caller's context, the API's span methods, and the SDK's
spans started inside them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from meshserve.tracing.otlp import encode_spans
from meshserve.tracing.spans import MeshSpan, Recorder, remote_parent

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RESOURCE = Resource.create({"service.name": "test"})
SCOPE = InstrumentationScope("meshserve", "0")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def recorder(exporter: InMemorySpanExporter) -> Recorder:
    return Recorder(SimpleSpanProcessor(exporter), RESOURCE, SCOPE, 1.0)


def test_a_span_continues_the_callers_trace(recorder: Recorder, exporter: InMemorySpanExporter) -> None:
    parent = remote_parent([("x-request-id", "r1"), ("traceparent", CALLER), ("tracestate", "vendor=v1")])
    assert parent is not None and parent.is_remote
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == \
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert parent.trace_state.get("vendor") == "v1"
    span = recorder.start("call", SpanKind.SERVER, parent, {"rpc.system": "grpc"})
    assert isinstance(span, MeshSpan)
    span.end()
    span.end()  # once only
    (done,) = exporter.get_finished_spans()
    assert done is span and done.parent == parent and done.context.trace_id == parent.trace_id
    assert done.context.trace_state.get("vendor") == "v1" and done.end_time is not None


@pytest.mark.parametrize("traceparent", [
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # an all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # an all-zero parent id
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # the forbidden version
    "garbage", "",
])
def test_an_invalid_traceparent_starts_a_new_trace(traceparent: str) -> None:
    assert remote_parent([("traceparent", traceparent)]) is None


def test_a_future_version_is_read_by_the_sdk_rules() -> None:
    parent = remote_parent([("traceparent", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra")])
    assert parent is not None and parent.span_id == 0xB7AD6B7169203331


def test_an_unsampled_caller_is_not_traced_but_its_context_goes_on(recorder: Recorder,
                                                                   exporter: InMemorySpanExporter) -> None:
    parent = remote_parent([("traceparent", CALLER[:-2] + "00")])
    assert parent is not None
    span = recorder.start("call", SpanKind.SERVER, parent)
    assert isinstance(span, NonRecordingSpan) and not span.get_span_context().trace_flags.sampled
    assert span.get_span_context().trace_id == parent.trace_id
    span.end()
    assert exporter.get_finished_spans() == ()


def test_traces_starting_here_are_sampled_at_the_ratio(exporter: InMemorySpanExporter) -> None:
    tenth = Recorder(SimpleSpanProcessor(exporter), RESOURCE, SCOPE, 0.1)
    sampled = sum(isinstance(tenth.start("root", SpanKind.SERVER, None), MeshSpan) for _ in range(20_000))
    assert 1_700 < sampled < 2_300  # 2,000 expected; the bounds are 7 standard deviations
    none = Recorder(None, RESOURCE, SCOPE, 0.0)
    assert not any(isinstance(none.start("root", SpanKind.SERVER, None), MeshSpan) for _ in range(1_000))


def test_the_span_api_as_the_sdk_behaves(recorder: Recorder, exporter: InMemorySpanExporter) -> None:
    span = recorder.start("call", SpanKind.INTERNAL, None, {"a": 1})
    assert span.is_recording()
    span.set_attributes({"b": "two", "c": None})
    span.update_name("renamed")
    span.set_status(Status(StatusCode.ERROR, "NOT_FOUND: no such model"))
    span.set_status(StatusCode.UNSET)  # UNSET changes nothing
    try:
        raise ValueError("bad input")
    except ValueError as e:
        span.record_exception(e, {"extra": True})
    span.end()
    assert not span.is_recording()
    (done,) = exporter.get_finished_spans()
    assert done.name == "renamed" and dict(done.attributes) == {"a": 1, "b": "two"}
    assert (done.status.status_code, done.status.description) == (StatusCode.ERROR, "NOT_FOUND: no such model")
    (event,) = done.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert event.attributes["extra"] is True and "bad input" in event.attributes["exception.stacktrace"]
    ok = recorder.start("ok", SpanKind.INTERNAL, None)
    ok.set_status(Status(StatusCode.OK))
    ok.set_status(Status(StatusCode.ERROR, "late"))  # OK is final
    assert isinstance(ok, MeshSpan) and ok.status.status_code is StatusCode.OK


@pytest.fixture
def sdk_spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_sdk_spans_started_inside_join_the_trace_and_export_alike(
        recorder: Recorder, exporter: InMemorySpanExporter,
        sdk_spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, model_spans = sdk_spans
    ours = recorder.start("predict iris", SpanKind.INTERNAL, None)
    token = otel_context.attach(trace.set_span_in_context(ours))
    try:
        assert trace.get_current_span() is ours
        with provider.get_tracer("model code").start_as_current_span("feature scaling"):
            pass
    finally:
        otel_context.detach(token)
    ours.end()
    (inner,) = model_spans.get_finished_spans()
    assert inner.parent is not None and inner.parent.span_id == ours.get_span_context().span_id
    assert inner.context.trace_id == ours.get_span_context().trace_id
    # One batch holding both kinds encodes as OTLP.
    assert encode_spans([*exporter.get_finished_spans(), inner])
