"""Tracing's plumbing in one process: nothing installed when off; spans, parents and statuses when on.

The tests that turn tracing on make a tracing exporting to an in-memory exporter, give it
to the parts they test, and shut it down afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from e2e.helpers import assert_eventually
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshserve import tracing
from meshserve.errors import NotFound
from meshserve.grpcutil.server import ServiceServer
from meshserve.link import MODEL_INFER, LinkClient, serve_link
from meshserve.services.audit.query import Filter
from meshserve.settings import ServiceSettings
from meshserve.tracing import Tracing

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


ON = ServiceSettings(trace_sample_ratio=1.0, trace_export_s=0.01)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(spans: InMemorySpanExporter) -> Iterator[Tracing]:
    """Tracing on, its spans going to ``spans``."""
    on = tracing.setup(ON, "test", exporter=spans)
    assert on.active
    try:
        yield on
    finally:
        on.shutdown()


def finished(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    def check() -> list[ReadableSpan]:
        done = list(exporter.get_finished_spans())
        assert len(done) == count, done
        return done

    return assert_eventually(check, timeout=5)


def ids(span: ReadableSpan) -> tuple[str, str, str]:
    """(trace id, span id, parent span id) in hex."""
    assert span.context is not None
    parent = format(span.parent.span_id, "016x") if span.parent else ""
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"), parent


def test_off_nothing_is_installed() -> None:
    off = tracing.setup(ServiceSettings(), "test")
    assert not off.active
    assert off.client_interceptors("127.0.0.1:1") == []
    echo = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    assert off.traced_handlers("svc.S", {"Echo": echo}) == {"Echo": echo}
    assert tracing.current_trace_id() == ""


def test_the_sample_ratio_is_a_share() -> None:
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ServiceSettings(trace_sample_ratio=1.5)


async def test_a_link_call_carries_the_trace_and_its_error(traced: Tracing, spans: InMemorySpanExporter) -> None:
    seen: list[dict[str, str]] = []

    async def handler(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        seen.append(metadata)
        with traced.server_span("svc.S/M", metadata.items(), "meshserve_link"):
            if payload == b"missing":
                raise NotFound("no such thing")
            return payload

    server = await serve_link("127.0.0.1", 0, handler, 1 << 20)
    client = await LinkClient.connect(server.address, 1 << 20, tracing=traced)
    try:
        token = otel_context.attach(tracing.extract([("traceparent", CALLER)]))  # as a caller's call would
        try:
            with traced.span("router"):
                reply = await client.call(MODEL_INFER, b"hello", 5.0, {"traceparent": "stale", "x-request-id": "r1"})
                assert reply == b"hello"
                with pytest.raises(NotFound):
                    await client.call(MODEL_INFER, b"missing", 5.0)
        finally:
            otel_context.detach(token)
    finally:
        client.close()
        await server.close()
    assert seen[0]["x-request-id"] == "r1" and seen[0]["traceparent"] != "stale"
    done = {(s.name, ids(s)[1]): s for s in finished(spans, 5)}
    router = next(s for (name, _), s in done.items() if name == "router")
    assert ids(router)[0] == CALLER_TRACE and ids(router)[2] == CALLER_SPAN
    clients = [s for s in done.values() if s.kind.name == "CLIENT"]
    servers = [s for s in done.values() if s.kind.name == "SERVER"]
    assert len(clients) == len(servers) == 2
    for client_span in clients:
        assert ids(client_span)[2] == ids(router)[1]
        assert client_span.attributes is not None and client_span.attributes["rpc.system"] == "meshserve_link"
        (server_span,) = [s for s in servers if ids(s)[2] == ids(client_span)[1]]
        assert ids(server_span)[0] == CALLER_TRACE
    failed = [s for s in done.values() if s.status.status_code.name == "ERROR"]
    assert len(failed) == 2 and all(s.attributes and s.attributes["rpc.grpc.status_code"] == 5 for s in failed)


async def test_grpc_calls_get_server_and_client_spans(traced: Tracing, spans: InMemorySpanExporter) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you")
        raise AssertionError("unreachable")

    async def stream(requests: object, context: grpc.aio.ServicerContext[bytes, bytes]) -> object:
        async for request in requests:  # type: ignore[attr-defined]
            yield request

    server = ServiceServer(["svc.S"], max_message_bytes=1 << 20, tracing=traced)
    server.add_handlers("svc.S", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo), "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        "Stream": grpc.stream_stream_rpc_method_handler(stream)})
    address = server.bind("127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address, interceptors=traced.client_interceptors(address)) as channel:
            assert await channel.unary_unary("/svc.S/Echo")(b"hi", metadata=(("traceparent", CALLER),)) == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/svc.S/Refuse")(b"x")
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            call = channel.stream_stream("/svc.S/Stream")()
            await call.write(b"a")
            await call.done_writing()
            assert [r async for r in call] == [b"a"]
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            await asyncio.sleep(0)
    finally:
        await server.stop(0)
    done = finished(spans, 7)
    by_name: dict[tuple[str, str], ReadableSpan] = {(s.name, s.kind.name): s for s in done}
    assert set(by_name) == {(f"svc.S/{m}", k) for m in ("Echo", "Refuse", "Stream") for k in ("CLIENT", "SERVER")} \
        | {("grpc.health.v1.Health/Check", "CLIENT")}  # the server leaves health checks alone
    for method in ("Echo", "Refuse", "Stream"):
        client, served = by_name[f"svc.S/{method}", "CLIENT"], by_name[f"svc.S/{method}", "SERVER"]
        assert ids(served)[2] == ids(client)[1] and ids(served)[0] == ids(client)[0]
    # The client's own span replaced the caller's traceparent given as metadata.
    assert ids(by_name["svc.S/Echo", "CLIENT"])[0] != CALLER_TRACE
    refused_server = by_name["svc.S/Refuse", "SERVER"]
    assert refused_server.status.status_code.name == "ERROR"
    assert refused_server.status.description == "PERMISSION_DENIED: not you"
    assert refused_server.attributes and refused_server.attributes["rpc.grpc.status_code"] == 7


async def test_each_part_traces_with_the_tracing_it_was_given(traced: Tracing, spans: InMemorySpanExporter) -> None:
    """Two tracings in one process stay apart; a server given none traces nothing; a shut-down one stops alone."""
    other_spans = InMemorySpanExporter()
    other = tracing.setup(ON, "other", exporter=other_spans)

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    servers = [ServiceServer(["svc.S"], max_message_bytes=1 << 20, tracing=other),
               ServiceServer(["svc.S"], max_message_bytes=1 << 20)]  # no tracing given: off
    addresses = []
    for server in servers:
        server.add_handlers("svc.S", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        addresses.append(server.bind("127.0.0.1", 0))
        await server.start()
    try:
        for address in addresses:
            async with grpc.aio.insecure_channel(address, interceptors=traced.client_interceptors(address)) as channel:
                assert await channel.unary_unary("/svc.S/Echo")(b"hi") == b"hi"
    finally:
        for server in servers:
            await server.stop(0)
        other.shutdown()
    assert traced.active and not other.active
    clients = finished(spans, 2)
    (served,) = finished(other_spans, 1)
    assert {s.kind.name for s in clients} == {"CLIENT"} and served.kind.name == "SERVER"
    assert {s.resource.attributes["service.name"] for s in clients} == {"test"}
    assert served.resource.attributes["service.name"] == "other"
    assert ids(served)[2] in {ids(s)[1] for s in clients}


def test_the_audit_trail_can_be_queried_by_trace_id() -> None:
    clauses, params = Filter(trace_id=CALLER_TRACE).where()
    assert clauses == ["trace_id = ?"] and params == [CALLER_TRACE]
