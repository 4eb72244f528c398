"""No listener shares its port: each fails at once, naming the port, even against a holder that allows sharing.

The holder sets SO_REUSEPORT itself: a listener of ours that set it too (grpcio's
default) would then bind the same port and silently take a share of its connections.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from meshserve.grpcutil.server import ServiceServer
from meshserve.link.server import serve_link
from meshserve.metrics import MetricsServer
from meshserve.ports import PortInUse, bind_error


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port listened on by a socket that allows sharing it (SO_REUSEPORT)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def in_use(port: int) -> str:
    return f"port {port} on 127.0.0.1 is in use"


def test_a_sharing_listener_would_have_bound(held_port: int) -> None:
    """The check below means something: with SO_REUSEPORT the same port binds."""
    with socket.socket() as sharer:
        sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sharer.bind(("127.0.0.1", held_port))


async def test_the_grpc_server_does_not_share_a_port(held_port: int) -> None:
    server = ServiceServer(["test.Service"], max_message_bytes=1024)
    with pytest.raises(PortInUse, match=in_use(held_port)):
        server.bind("127.0.0.1", held_port)


async def test_the_metrics_server_does_not_share_a_port(held_port: int) -> None:
    with pytest.raises(PortInUse, match=f"cannot serve metrics on 127.0.0.1:{held_port}: {in_use(held_port)}"):
        MetricsServer(CollectorRegistry()).start("127.0.0.1", held_port)


async def test_the_mesh_link_does_not_share_a_port(held_port: int) -> None:
    async def handler(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
        return payload

    with pytest.raises(PortInUse, match=f"cannot serve the mesh link: {in_use(held_port)}"):
        await serve_link("127.0.0.1", held_port, handler, 1024)


def test_bind_error_says_why(held_port: int) -> None:
    assert isinstance(bind_error("127.0.0.1", held_port), PortInUse)
    not_here = bind_error("192.0.2.1", 8001)  # TEST-NET-1: not an address of this host
    assert not isinstance(not_here, PortInUse) and "cannot listen on 192.0.2.1:8001" in str(not_here)
