"""Distributed tracing with OpenTelemetry: one trace per call, from the caller through the
router to the runtimes and their R workers.

A service's tracing is a :class:`Tracing`: the service makes it once at start-up from its
settings (:func:`setup`) and hands it to every part that records spans (its gRPC server,
its channels, the router's forwarder and mesh-link clients, a runtime's servicer, data
plane and loader), each keeping a reference. It is off unless the service's
``trace_sample_ratio`` is above 0: :func:`setup` then gives :data:`OFF` (the tracing of a
part given none), and nothing is installed, no gRPC interceptor, no span; the call paths
check ``self.tracing.active`` (one attribute) and go on. On:

- incoming gRPC calls get a SERVER span (:meth:`Tracing.traced_handlers`, applied by
  :class:`~meshserve.grpcutil.server.ServiceServer`), continuing the caller's trace when
  its metadata carries a W3C ``traceparent``; health and reflection are left alone;
- calls made on channels built with :meth:`Tracing.client_interceptors` get a CLIENT span
  and carry its ``traceparent`` on (the router's channels to runtimes and Triton);
- the mesh link does the same by hand: :meth:`Tracing.client_span` plus
  :func:`with_context` on the router's side, :meth:`Tracing.server_span` from the frame's
  metadata on the runtime's;
- :meth:`Tracing.span` opens an INTERNAL span in the current trace (a pipeline and its
  steps, a predict, an R worker call).

The configuration is the object's; what belongs to one call (its current span) is in
OpenTelemetry's context, as everywhere.

meshserve's spans are recorded by :mod:`.spans` (API spans without the SDK's per-span
cost); the first tracing made in a process installs its OpenTelemetry SDK tracer provider
as the process's, so spans that model code or libraries start join the same trace and go
the same way. Sampling is parent-based: a call whose caller's trace is sampled is traced,
one whose caller's trace is not is not, and a call arriving without a trace starts one
with probability ``trace_sample_ratio``. Spans go,
in batches, to the OTLP/gRPC collector at ``otlp_endpoint`` (:mod:`.otlp`);
:meth:`Tracing.shutdown` exports what is left when the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import meshserve
from meshserve.errors import MeshError
from meshserve.tracing.spans import Recorder, remote_parent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from meshserve.settings import ServiceSettings

log = logging.getLogger(__name__)

TRACE_KEYS = ("traceparent", "tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()
NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()
_ROOT = Context()


class Tracing:
    """One service's tracing: its span recorder and the SDK tracer provider exporting the spans.

    Made once by the service (:func:`setup`) and handed to each part that records spans,
    which keeps it and checks :attr:`active` on each call: while False, tracing costs
    nothing else. :meth:`shutdown` (when the service stops) exports what is left and turns
    it off.
    """

    __slots__ = ("_provider", "_recorder", "active")

    def __init__(self, recorder: Recorder | None = None, provider: TracerProvider | None = None) -> None:
        self._recorder = recorder
        self._provider = provider
        self.active = recorder is not None

    def __repr__(self) -> str:
        return f"Tracing(active={self.active})"

    def shutdown(self, wait_s: float = 3.0) -> None:
        """Export the spans not exported yet and stop tracing (when the service stops).

        Waits at most ``wait_s`` (a collector that does not answer must not hold up a stop);
        spans still unsent then are dropped with a warning.
        """
        provider, self._provider = self._provider, None
        self._recorder = None
        self.active = False
        if provider is None:
            return
        flushing = threading.Thread(target=provider.shutdown, name="trace-shutdown", daemon=True)
        flushing.start()
        flushing.join(wait_s)
        if flushing.is_alive():
            log.warning("the trace collector took more than %.0f s: spans not exported yet are dropped", wait_s)

    # -- spans ------------------------------------------------------------------------------

    def start_span(self, name: str, kind: SpanKind, parent: SpanContext | None,
                   attributes: Mapping[str, Any] | None) -> Span:
        recorder = self._recorder
        if recorder is None:  # tracing was turned off meanwhile
            return trace.INVALID_SPAN
        return recorder.start(name, kind, parent, attributes)

    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Scope:
        """An INTERNAL span, current for the ``with`` block, child of the current span.

        Call it only when :attr:`active` (``with self.tracing.span(...) if
        self.tracing.active else tracing.NO_SPAN``). An exception leaving the block marks
        the span as an error.
        """
        return Scope(self.start_span(name, SpanKind.INTERNAL, current_span_context(), attributes), None)

    def client_span(self, name: str, peer: str, system: str = "grpc") -> Scope:
        """A CLIENT span for a call to ``peer`` (host:port); send its context with :func:`with_context`."""
        return Scope(self.start_span(name, SpanKind.CLIENT, current_span_context(),
                                     rpc_attributes(name, system, peer)), STATUS_CODE_ATTRIBUTE)

    def server_span(self, name: str, metadata: Iterable[tuple[str, Any]], system: str = "grpc") -> Scope:
        """A SERVER span for a call received with ``metadata``, continuing the caller's trace."""
        return Scope(self.start_span(name, SpanKind.SERVER, remote_parent(metadata), rpc_attributes(name, system)),
                     STATUS_CODE_ATTRIBUTE)

    # -- gRPC (.interceptors) ---------------------------------------------------------------

    def traced_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]],
                        ) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """``service``'s method handlers, each call in a SERVER span while tracing is on.

        Wrapping at registration leaves a traced call no costlier than its span: no
        interceptor runs per call. Health checking and reflection are registered otherwise
        and left alone. Off, the handlers as they are.
        """
        if not self.active:
            return dict(handlers)
        from meshserve.tracing.interceptors import traced_handler

        return {method: traced_handler(self, f"{service}/{method}", handler) for method, handler in handlers.items()}

    def client_interceptors(self, target: str) -> list[grpc.aio.ClientInterceptor]:
        """What a channel to ``target`` needs for its calls to be traced: [] while tracing is off.

        Unary-unary and stream-stream calls (the inference protocol's) get a CLIENT span each.
        """
        if not self.active:
            return []
        from meshserve.tracing.interceptors import StreamClientInterceptor, UnaryClientInterceptor

        return [UnaryClientInterceptor(self, target), StreamClientInterceptor(self, target)]


OFF = Tracing()  # tracing off: what a service with a sample ratio of 0 has, and a part given no tracing


def setup(settings: ServiceSettings, service: str, instance: str = "", *,
          exporter: SpanExporter | None = None) -> Tracing:
    """The tracing of a service with these settings: :data:`OFF` unless ``settings.trace_sample_ratio`` is above 0.

    ``service`` is the service's kind (``router``, ``python``, ``r``, ``audit``): the
    spans' ``service.name``; ``instance`` its id. ``exporter`` replaces the OTLP exporter
    (tests). Called once by each service, at start-up; the first tracing made in a
    process also becomes OpenTelemetry's tracer provider there.
    """
    ratio = settings.trace_sample_ratio
    if ratio <= 0:
        return OFF
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    resource = Resource.create({
        "service.name": service, "service.namespace": "meshserve", "service.version": meshserve.__version__,
        "service.instance.id": instance or f"{socket.gethostname()}-{os.getpid()}",
    })
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(ALWAYS_ON if ratio >= 1 else TraceIdRatioBased(ratio)))
    if exporter is None and settings.otlp_endpoint:
        exporter = _otlp_exporter(settings.otlp_endpoint)
    processor = None
    if exporter is not None:
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=max(1, int(settings.trace_export_s * 1000)))
        provider.add_span_processor(processor)
        where = settings.otlp_endpoint or type(exporter).__name__
    else:
        where = "nowhere (no --otlp-endpoint): trace ids travel and reach the audit trail, spans are dropped"
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # so that libraries tracing on their own join in
    recorder = Recorder(processor, resource, InstrumentationScope("meshserve", meshserve.__version__), ratio)
    log.info("tracing on: %s, sampling %g of the calls that start here, spans to %s", service, ratio, where)
    return Tracing(recorder, provider)


def _otlp_exporter(endpoint: str) -> SpanExporter:
    from meshserve.tracing.otlp import OtlpExporter

    # host:port is plain text (a collector beside the service); https://host:port is TLS.
    return OtlpExporter(endpoint, timeout_s=5)


# -- context --------------------------------------------------------------------------------


def current_trace_id() -> str:
    """The current call's trace id (32 hex digits) when it is sampled, else ""."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else ""


def extract(metadata: Iterable[tuple[str, Any]]) -> Context:
    """The caller's trace context found in ``metadata`` (gRPC metadata or link pairs); empty when none."""
    carrier = {key: value for key, value in metadata if key in TRACE_KEYS and isinstance(value, str)}
    return _PROPAGATOR.extract(carrier) if carrier else _ROOT


def with_context(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """``metadata`` with the current span's ``traceparent`` (and ``tracestate``) in place of the caller's."""
    out = {k: v for k, v in metadata.items() if k not in TRACE_KEYS} if metadata else {}
    _PROPAGATOR.inject(out)
    return out


def grpc_metadata(metadata: Any, context: Context | None = None) -> grpc.aio.Metadata:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    out = grpc.aio.Metadata(*((k, v) for k, v in (metadata or ()) if k not in TRACE_KEYS))
    for key, value in carrier.items():
        out.add(key, value)
    return out


def annotate(model: str, version: str) -> None:
    """Note on the current span which model version the call is for."""
    trace.get_current_span().set_attributes({"meshserve.model": model, "meshserve.model_version": version})


# -- spans ----------------------------------------------------------------------------------


def current_span_context() -> SpanContext:
    return trace.get_current_span().get_span_context()


class Scope:
    """Makes ``span`` current for a ``with`` block, sets its status from how the block ends, ends it.

    A class rather than ``contextlib.contextmanager``: it runs on every traced call.
    """

    __slots__ = ("_code_attribute", "_token", "span")

    def __init__(self, span: Span, code_attribute: str | None) -> None:
        self.span = span
        self._code_attribute = code_attribute  # an RPC span's status code attribute, born OK (0)
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = context_api.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: Any) -> None:
        current, code_attribute = self.span, self._code_attribute
        try:
            if error is None:
                pass
            elif isinstance(error, MeshError):
                mark_failed(current, error.code, error.message, code_attribute)
            elif isinstance(error, grpc.aio.AioRpcError):
                mark_failed(current, error.code(), error.details() or "", code_attribute)
            elif isinstance(error, asyncio.CancelledError):
                mark_failed(current, grpc.StatusCode.CANCELLED, "cancelled", code_attribute)
            elif not isinstance(error, grpc.aio.AbortError):  # after abort() the status is already set
                current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        finally:
            context_api.detach(self._token)  # type: ignore[arg-type]
            current.end()


def mark_failed(current: Span, code: grpc.StatusCode, message: str, code_attribute: str | None) -> None:
    if code_attribute is not None:
        current.set_attribute(code_attribute, code.value[0])
    current.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))


STATUS_CODE_ATTRIBUTE = "rpc.grpc.status_code"


@functools.lru_cache(maxsize=4096)
def rpc_attributes(name: str, system: str, peer: str = "") -> dict[str, Any]:
    """An RPC span's attributes, computed once per method and peer (spans copy them)."""
    service, _, method = name.partition("/")
    attributes: dict[str, Any] = {"rpc.system": system, "rpc.service": service, "rpc.method": method,
                                  STATUS_CODE_ATTRIBUTE: 0}
    if peer:
        host, _, port = peer.rpartition(":")
        attributes.update({"server.address": host, "server.port": int(port) if port.isdigit() else 0})
    return attributes
