"""Certificates read again when their files change: a gRPC server and a mesh link server on loopback.

Each test makes a mesh CA, serves with a ``server`` certificate and connects as ``client``;
the certificate a new connection is shown is read off the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshserve.grpcutil.server import ServiceServer
from meshserve.link import MODEL_INFER, LinkClient, frames, serve_link
from meshserve.tls import MeshTls, aio_channel, certs


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@dataclass
class Pki:
    folder: Path
    server: MeshTls
    client: MeshTls

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def serial(self, name: str) -> int:
        return _serial(self.folder / f"{name}.crt")

    def presented(self, address: str, alpn: str | None = None) -> int:
        """The serial of the certificate a new TLS connection to ``address`` is shown (as the client)."""
        host, _, port = address.rpartition(":")
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.folder / "client.crt", self.folder / "client.key")
        if alpn:
            context.set_alpn_protocols([alpn])
        with socket.create_connection((host, int(port)), timeout=3) as sock, \
                context.wrap_socket(sock, server_hostname="localhost") as connection:
            der = connection.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    certs.init_ca(tmp_path)
    for name in ("server", "client"):
        certs.issue(tmp_path, name)
    files = {name: (tmp_path / "ca.crt", tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
             for name in ("server", "client")}
    return Pki(tmp_path, MeshTls(*files["server"], check_s=0), MeshTls(*files["client"], check_s=0))


@pytest.fixture
async def grpc_server(pki: Pki) -> AsyncIterator[str]:
    server = ServiceServer([], max_message_bytes=1 << 20)
    address = server.bind("127.0.0.1", 0, mesh_tls=pki.server, require_client_cert=True)
    await server.start()
    yield address
    await server.stop(0)


async def _check(address: str, mesh_tls: MeshTls) -> int:
    async with aio_channel(address.replace("127.0.0.1", "localhost"), mesh_tls) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    return int(response.status)


async def test_a_grpc_server_presents_a_rotated_certificate_from_its_next_handshake(pki: Pki,
                                                                                  grpc_server: str) -> None:
    first = pki.serial("server")
    assert await asyncio.to_thread(pki.presented, grpc_server, "h2") == first
    async with aio_channel(grpc_server.replace("127.0.0.1", "localhost"), pki.client) as kept:
        stub = health_pb2_grpc.HealthStub(kept)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
        certs.rotate(pki.folder, ("server",))
        second = pki.serial("server")
        assert second != first
        assert await asyncio.to_thread(pki.presented, grpc_server, "h2") == second
        assert pki.server.generation == 1
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=3)  # the connection open before goes on
    assert await _check(grpc_server, pki.client) == health_pb2.HealthCheckResponse.SERVING


async def test_a_half_written_certificate_keeps_the_last_good_one(pki: Pki, grpc_server: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    first = pki.serial("server")
    cert = pki.folder / "server.crt"
    whole = cert.read_bytes()
    with caplog.at_level(logging.WARNING, logger="meshserve.tls"):
        cert.write_bytes(whole[: len(whole) // 2])  # a writer that has not finished
        for _ in range(3):
            assert await asyncio.to_thread(pki.presented, grpc_server, "h2") == first
            assert await _check(grpc_server, pki.client) == health_pb2.HealthCheckResponse.SERVING
    warnings = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once for this state of the files, not once per handshake
    assert "keeping the certificate in use" in warnings[0]
    assert pki.server.generation == 0
    cert.write_bytes(whole)  # the writer finishes
    certs.rotate(pki.folder, ("server",))
    assert await asyncio.to_thread(pki.presented, grpc_server, "h2") == pki.serial("server") != first


async def test_a_key_from_another_certificate_is_not_taken(pki: Pki, grpc_server: str) -> None:
    first = pki.serial("server")
    (pki.folder / "server.key").write_bytes((pki.folder / "client.key").read_bytes())
    assert await asyncio.to_thread(pki.presented, grpc_server, "h2") == first
    assert pki.server.generation == 0


async def _echo(method: int, payload: bytes, metadata: dict[str, str]) -> bytes:
    return payload[::-1]


async def test_the_mesh_link_presents_a_rotated_certificate_and_clients_present_theirs(pki: Pki) -> None:
    link = await serve_link("127.0.0.1", 0, _echo, 1 << 20, mesh_tls=pki.server)
    try:
        first = pki.serial("server")
        assert await asyncio.to_thread(pki.presented, link.address) == first
        kept = await LinkClient.connect(link.address, 1 << 20, mesh_tls=pki.client)
        assert await kept.call(MODEL_INFER, b"abc", 3) == b"cba"
        client_before = pki.client.client_context()
        certs.rotate(pki.folder)
        assert await asyncio.to_thread(pki.presented, link.address) == pki.serial("server") != first
        assert await kept.call(MODEL_INFER, b"abc", 3) == b"cba"  # the open connection goes on
        assert pki.client.client_context() is not client_before  # new connections present the new certificate
        fresh = await LinkClient.connect(link.address, 1 << 20, mesh_tls=pki.client)
        assert await fresh.call(MODEL_INFER, b"xyz", 3) == b"zyx"
        fresh.close()
        kept.close()
    finally:
        await link.close()


async def test_the_mesh_link_still_refuses_callers_without_a_certificate_after_a_rotation(pki: Pki) -> None:
    link = await serve_link("127.0.0.1", 0, _echo, 1 << 20, mesh_tls=pki.server)
    try:
        certs.rotate(pki.folder, ("server",))
        host, _, port = link.address.rpartition(":")
        context = ssl.create_default_context(cafile=str(pki.ca))  # trusts the CA, presents nothing
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname="localhost")
        writer.write(frames.MAGIC)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await writer.drain()
            if not await reader.read(1):
                raise ConnectionResetError("closed by the server")
        writer.close()
    finally:
        await link.close()


def test_channels_made_after_a_rotation_use_the_new_certificate(pki: Pki) -> None:
    old = pki.client.identity
    certs.rotate(pki.folder, ("client",))
    assert pki.client.identity.cert == (pki.folder / "client.crt").read_bytes() != old.cert
    assert pki.client.identity.key == (pki.folder / "client.key").read_bytes() != old.key
