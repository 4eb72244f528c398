"""Creating a meshserve gRPC server: options, health, reflection, bound address."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from meshserve.ports import bind_error
from meshserve.protos._pool import POOL
from meshserve.tls import MeshTls
from meshserve.tracing import OFF, Tracing

log = logging.getLogger(__name__)

MiB = 1024 * 1024


def _pool_with_standard_services() -> Any:
    """meshserve's descriptor pool, with the health and reflection protos added once."""
    from grpc_reflection.v1alpha import reflection_pb2

    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return POOL


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # grpcio sets SO_REUSEPORT by default: a leftover process would take a share of the calls.
        ("grpc.so_reuseport", 0),
    ]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # meshserve retries by itself, knowing which calls are safe to repeat; gRPC's
        # own retry buffering only costs a copy of every message.
        ("grpc.enable_retries", 0),
        ("grpc.keepalive_time_ms", 30_000),
        # A peer that restarts (a runtime, Triton) is found again within a second, not
        # after gRPC's default back-off of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


class ServiceServer:
    """An aio gRPC server with health checking and reflection for the named services.

    Services are registered with :meth:`add_handlers`; with ``tracing`` on (the service's,
    see :mod:`meshserve.tracing`), their calls get server spans.
    """

    def __init__(self, service_names: Iterable[str], *, max_message_bytes: int,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (), tracing: Tracing = OFF) -> None:
        self.tracing = tracing
        self.server = grpc.aio.server(options=server_options(max_message_bytes), interceptors=interceptors or None)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [*service_names, health.SERVICE_NAME]
        reflection.enable_server_reflection(
            [*self.service_names, reflection.SERVICE_NAME], self.server, pool=_pool_with_standard_services()
        )
        self.address = ""

    def add_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        """Serve ``service`` (its full name) with these method handlers, by method name."""
        self.server.add_registered_method_handlers(service, self.tracing.traced_handlers(service, handlers))

    def bind(self, host: str, port: int, *, mesh_tls: MeshTls | None = None, require_client_cert: bool = False) -> str:
        """Listen on host:port (port 0 picks a free one) and return the bound address.

        TLS with ``mesh_tls`` (a new certificate in its files is served from the next
        handshake on); then, with ``require_client_cert``, only callers holding a mesh
        certificate get in. Plain text without it. Never shares the port (no SO_REUSEPORT):
        one in use raises :class:`~meshserve.ports.PortInUse`.
        """
        try:
            if mesh_tls is None:
                bound = self.server.add_insecure_port(f"{host}:{port}")
            else:
                credentials = mesh_tls.server_credentials(require_client_cert=require_client_cert)
                bound = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError:  # grpcio's "Failed to bind to address"
            bound = 0
        if bound == 0:
            raise bind_error(host, port)
        self.address = f"{host}:{bound}"
        return self.address

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 2.0) -> None:
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


def write_announce_file(path: str | os.PathLike[str] | None, **fields: Any) -> None:
    """Atomically write what a parent process needs to find this service (its address)."""
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **fields}))
    tmp.replace(target)
