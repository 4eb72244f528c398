"""meshserve's own spans: OpenTelemetry API spans, recorded without the SDK's per-span machinery.

A call through the mesh makes four or more spans, each on the call's path. The SDK's spans
cost 20-55 us each (attribute validation, locks, sampler objects, processor fan-out), which
on a 1.4 ms call is most of a 10 % budget. A :class:`MeshSpan` keeps what a span is (ids,
parent, name, kind, times, attributes, events, status) in plain fields and hands itself,
once ended, to the span processor meshserve installed: a few microseconds a span.

It stays an OpenTelemetry span for everyone else:

- it is an API :class:`~opentelemetry.trace.Span`, current in the OpenTelemetry context
  while its block runs: model code and libraries calling ``trace.get_current_span()`` or
  starting child spans with any tracer (the process's SDK tracer provider) join the call's
  trace;
- it has the fields of the SDK's ``ReadableSpan`` that processors and exporters read, so the
  SDK's batch processor and exporters (the in-memory one in tests, :mod:`.otlp` in services)
  take it as they take the SDK's own.

Sampling follows the SDK's ``ParentBased(TraceIdRatioBased(ratio))``: a span with a parent
is sampled when its parent is; a trace starting here is sampled when the low 64 bits of its
id fall under ``ratio`` of their range. An unsampled span is a ``NonRecordingSpan`` that
still carries its context on, so the calls it makes are not sampled either.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import Event
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.util.types import Attributes

SAMPLED, UNSAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_LOW_64 = (1 << 64) - 1
_UNSET = Status(StatusCode.UNSET)
# W3C trace context, version 00: the form every caller sends; anything else goes to the SDK's parser.
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_PROPAGATOR = TraceContextTextMapPropagator()
_getrandbits = random.getrandbits
_time_ns = time.time_ns


class Recorder:
    """Where this process's finished spans go, and whether a trace starting here is sampled."""

    __slots__ = ("_all", "_bound", "processor", "resource", "scope")

    def __init__(self, processor: SpanProcessor | None, resource: Resource, scope: InstrumentationScope,
                 ratio: float) -> None:
        self.processor = processor  # None: spans are made (their ids travel) and dropped
        self.resource = resource
        self.scope = scope
        self._all = ratio >= 1
        self._bound = round(ratio * (_LOW_64 + 1))

    def sampled_root(self, trace_id: int) -> bool:
        return self._all or (trace_id & _LOW_64) < self._bound

    def start(self, name: str, kind: SpanKind, parent: SpanContext | None,
              attributes: Mapping[str, Any] | None = None) -> Span:
        """A new span, child of ``parent`` (a span's context; None or invalid: a new trace)."""
        span_id = _getrandbits(64) or 1
        if parent is not None and parent.is_valid:
            context = SpanContext(parent.trace_id, span_id, False, SAMPLED if parent.trace_flags.sampled
                                  else UNSAMPLED, parent.trace_state)
        else:
            parent = None
            trace_id = _getrandbits(128) or 1
            context = SpanContext(trace_id, span_id, False, SAMPLED if self.sampled_root(trace_id) else UNSAMPLED)
        if not context.trace_flags.sampled:
            return NonRecordingSpan(context)
        return MeshSpan(self, name, kind, context, parent, attributes)


def remote_parent(metadata: Iterable[tuple[str, Any]]) -> SpanContext | None:
    """The caller's span context from the ``traceparent`` (and ``tracestate``) in ``metadata``."""
    traceparent = tracestate = None
    for key, value in metadata:
        if key == "traceparent":
            traceparent = value
        elif key == "tracestate":
            tracestate = value
    if not isinstance(traceparent, str):
        return None
    match = _TRACEPARENT_00.fullmatch(traceparent)
    if match is None or not isinstance(tracestate, str | None):
        return _parsed_by_sdk(traceparent, tracestate)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(trace_id, span_id, True, TraceFlags(int(match[3], 16) & TraceFlags.SAMPLED), state)


def _parsed_by_sdk(traceparent: str, tracestate: Any) -> SpanContext | None:
    carrier = {"traceparent": traceparent}
    if isinstance(tracestate, str):
        carrier["tracestate"] = tracestate
    from opentelemetry import trace

    context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None


class MeshSpan(Span):
    """A sampled span meshserve records: see the module's docstring."""

    __slots__ = ("_recorder", "attributes", "context", "end_time", "events", "kind", "name", "parent",
                 "start_time", "status")
    links: Sequence[Any] = ()
    dropped_attributes = dropped_events = dropped_links = 0

    def __init__(self, recorder: Recorder, name: str, kind: SpanKind, context: SpanContext,
                 parent: SpanContext | None, attributes: Mapping[str, Any] | None) -> None:
        self._recorder = recorder
        self.name = name
        self.kind = kind
        self.context = context
        self.parent = parent
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.events: list[Event] = []
        self.status = _UNSET
        self.start_time = _time_ns()
        self.end_time: int | None = None

    # -- what processors and exporters read (the SDK's ReadableSpan) -------------------------

    @property
    def resource(self) -> Resource:
        return self._recorder.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._recorder.scope

    def __repr__(self) -> str:
        return f"MeshSpan({self.name!r}, {self.kind.name}, {self.context.span_id:016x})"

    # -- the API's Span --------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        if value is not None:  # as the SDK: None is not an attribute value
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        self.events.append(Event(name, attributes, timestamp or _time_ns()))

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.status.status_code is StatusCode.OK:  # as the SDK: OK is final
            return
        new = status if isinstance(status, Status) else Status(status, description)
        if new.status_code is not StatusCode.UNSET:
            self.status = new

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        described: dict[str, Any] = {
            "exception.type": type(exception).__qualname__, "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped)}
        if attributes:
            described.update(attributes)
        self.add_event("exception", described, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time or _time_ns()
        processor = self._recorder.processor
        if processor is not None:
            processor.on_end(self)  # type: ignore[arg-type]  # a ReadableSpan in all that it reads
