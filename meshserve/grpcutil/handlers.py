"""Registering a servicer's methods, some of them taking raw request bytes."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

if TYPE_CHECKING:
    from meshserve.grpcutil.server import ServiceServer


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


def add_service(server: ServiceServer, service: ServiceDescriptor, servicer: object, raw: Collection[str] = ()) -> None:
    """Register every method of ``service`` on ``server``, calling ``servicer.<Method>``.

    Methods named in ``raw`` receive the request as bytes, so the servicer parses it
    itself and can answer a malformed request with INVALID_ARGUMENT (gRPC's own
    deserializer would fail the call with UNKNOWN before any of our code runs).
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        options = {
            "request_deserializer": None if method.name in raw else request_type.FromString,
            "response_serializer": _serialize,
        }
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, **options)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(behaviour, **options)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behaviour, **options)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **options)
    server.add_handlers(service.full_name, handlers)
