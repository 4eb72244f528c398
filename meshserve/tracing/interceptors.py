"""Tracing gRPC calls: a server's handlers, wrapped as they are registered, and a channel's
interceptors (see :mod:`meshserve.tracing`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from meshserve.tracing import STATUS_CODE_ATTRIBUTE, current_span_context, grpc_metadata, mark_failed, rpc_attributes

if TYPE_CHECKING:
    from meshserve.tracing import Tracing

Behavior = Callable[..., Any]


def traced_handler(tracing: Tracing, name: str, handler: grpc.RpcMethodHandler[Any, Any],
                   ) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a SERVER span of ``tracing`` around each call (``name``: ``service/Method``).

    Streaming responses must come from async generators (not ``context.write``), as
    meshserve's do.
    """
    server_span = tracing.server_span
    options = {"request_deserializer": handler.request_deserializer,
               "response_serializer": handler.response_serializer}
    if handler.response_streaming:
        streaming: Behavior = handler.stream_stream or handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with server_span(name, context.invocation_metadata() or ()):
                async for response in streaming(request, context):
                    yield response

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(stream, **options)
        return grpc.unary_stream_rpc_method_handler(stream, **options)
    unary: Behavior = handler.unary_unary or handler.stream_unary

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with server_span(name, context.invocation_metadata() or ()) as current:
            try:
                return await unary(request, context)
            except grpc.aio.AbortError:  # context.abort(): the status is in the context
                code = context.code()
                if isinstance(code, grpc.StatusCode):
                    mark_failed(current, code, str(context.details() or ""), STATUS_CODE_ATTRIBUTE)
                raise

    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(call, **options)
    return grpc.unary_unary_rpc_method_handler(call, **options)


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return (method.decode() if isinstance(method, bytes) else method).lstrip("/")


class UnaryClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, tracing: Tracing, target: str) -> None:
        self.tracing = tracing
        self.target = target

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        with self.tracing.client_span(_method_name(details), self.target):
            call = await continuation(details._replace(metadata=grpc_metadata(details.metadata)), request)
            await call  # the span lasts until the answer; an error (AioRpcError) goes on to the caller
            return call


class StreamClientInterceptor(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, tracing: Tracing, target: str) -> None:
        self.tracing = tracing
        self.target = target

    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        name = _method_name(details)
        # The span lasts as long as the stream: it ends when the call is done.
        current = self.tracing.start_span(name, SpanKind.CLIENT, current_span_context(),
                                          rpc_attributes(name, "grpc", self.target))
        try:
            call = await continuation(details._replace(metadata=grpc_metadata(
                details.metadata, trace.set_span_in_context(current))), request_iterator)
        except BaseException:
            current.end()
            raise

        def done(finished: Any) -> None:  # the status is a coroutine's to read
            task = asyncio.ensure_future(_end_stream(current, finished))
            _ENDING.add(task)  # held until it ran
            task.add_done_callback(_ENDING.discard)

        call.add_done_callback(done)
        return call


_ENDING: set[asyncio.Future[None]] = set()


async def _end_stream(current: Span, call: Any) -> None:
    try:
        code = await call.code()
        if code is not grpc.StatusCode.OK:
            mark_failed(current, code, await call.details() or "", STATUS_CODE_ATTRIBUTE)
    finally:
        current.end()
