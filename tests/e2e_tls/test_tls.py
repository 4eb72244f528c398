"""A mesh with TLS on every link: real etcd, NATS, runtime and routers, certificates from the mesh CA.

Callers reach the router over TLS (server certificate only; they identify with keys).
The runtime's gRPC port and mesh link take only callers presenting a certificate signed
by the mesh CA: a direct call without one, or with one from another CA, is refused,
while the routers (holding mesh certificates) are served. etcd and NATS require mesh
certificates too.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, infer, router_process, rpc_error, runtime_process

from meshserve.audit.stream import STREAM
from meshserve.errors import MeshError, Unavailable
from meshserve.link import MODEL_INFER, LinkClient
from meshserve.local.etcd import EtcdServer
from meshserve.local.nats import NatsServer
from meshserve.oip import build_request
from meshserve.registry.etcd import connect
from meshserve.tls import MeshTls, certs, from_paths

MESH_NAMES = ("etcd", "nats", "router", "runtime", "operator")


def _files(folder: Path, name: str) -> tuple[Path, Path, Path]:
    return folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key"


def _flags(folder: Path, name: str) -> list[str]:
    ca, cert, key = _files(folder, name)
    return ["--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]


def _credentials(folder: Path, name: str | None, ca_folder: Path | None = None) -> grpc.ChannelCredentials:
    """Trust the mesh CA; present ``name``'s certificate from ``folder`` when given."""
    ca = (ca_folder or folder) / "ca.crt"
    if name is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    _, cert, key = _files(folder, name)
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(), private_key=key.read_bytes(),
                                        certificate_chain=cert.read_bytes())


@dataclass
class TlsMesh:
    pki: Path
    rogue: Path
    folder: Path
    routers: dict[str, str]
    runtime: str
    link: str
    etcd: str
    nats: str


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMesh]:
    pki = tmp_path_factory.mktemp("pki")
    certs.init_ca(pki)
    for name in MESH_NAMES:
        certs.issue(pki, name)
    rogue = tmp_path_factory.mktemp("rogue-pki")  # a CA of its own: its certificates are not mesh certificates
    certs.init_ca(rogue)
    certs.issue(rogue, "intruder")
    folder = tmp_path_factory.mktemp("tls-mesh")
    repository = folder / "models"
    shutil.copytree(EXAMPLES / "iris", repository / "iris")
    with EtcdServer(folder, folder / "etcd.log", tls_files=_files(pki, "etcd")) as etcd, \
            NatsServer(folder, folder / "nats.log", tls_files=_files(pki, "nats")) as broker, \
            runtime_process(repository, etcd.endpoint, folder, extra=_flags(pki, "runtime")) as (_, runtime, rid), \
            router_process(etcd.endpoint, folder, *_flags(pki, "router"), "--nats-url", broker.url) as (_, link_r), \
            router_process(etcd.endpoint, folder, *_flags(pki, "router"), "--no-use-link") as (_, grpc_r):
        announced = json.loads((folder / f"runtime-{rid}.json").read_text())
        yield TlsMesh(pki, rogue, folder, {"mesh link": link_r, "gRPC": grpc_r}, runtime, announced["link_address"],
                      etcd.endpoint, broker.url)


def _iris(channel: grpc.Channel) -> None:
    out = infer(channel, "iris", IRIS_ROWS)
    assert out["label"].shape == (len(IRIS_ROWS),)


def test_etcd_and_nats_urls_name_tls(mesh: TlsMesh) -> None:
    assert mesh.etcd.startswith("https://") and mesh.nats.startswith("tls://")


@pytest.mark.parametrize("transport", ["mesh link", "gRPC"])
def test_router_answers_over_tls_and_reaches_the_runtime_with_its_mesh_certificate(mesh: TlsMesh,
                                                                                     transport: str) -> None:
    with grpc.secure_channel(mesh.routers[transport], _credentials(mesh.pki, None)) as channel:
        assert_eventually(lambda: _iris(channel), timeout=15, retry_on=(AssertionError, grpc.RpcError))
    for log in mesh.folder.glob("router-*.log"):  # the link router really used the (TLS) link
        assert "over gRPC for" not in log.read_text(), log.read_text()


def test_router_refuses_plain_text(mesh: TlsMesh) -> None:
    with grpc.insecure_channel(mesh.routers["gRPC"]) as channel:
        error = rpc_error(lambda: infer(channel, "iris", IRIS_ROWS, timeout=3))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("caller", ["plain text", "TLS without a certificate", "another CA's certificate"])
def test_runtime_refuses_direct_callers_without_a_mesh_certificate(mesh: TlsMesh, caller: str) -> None:
    open_channel: Callable[[], grpc.Channel] = {
        "plain text": lambda: grpc.insecure_channel(mesh.runtime),
        "TLS without a certificate": lambda: grpc.secure_channel(mesh.runtime, _credentials(mesh.pki, None)),
        "another CA's certificate": lambda: grpc.secure_channel(
            mesh.runtime, _credentials(mesh.rogue, "intruder", ca_folder=mesh.pki)),
    }[caller]
    with open_channel() as channel:
        error = rpc_error(lambda: infer(channel, "iris", IRIS_ROWS, timeout=3))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error


def test_runtime_serves_a_caller_with_a_mesh_certificate(mesh: TlsMesh) -> None:
    with grpc.secure_channel(mesh.runtime, _credentials(mesh.pki, "operator")) as channel:
        _iris(channel)


async def _link_call(address: str, mesh_tls: MeshTls | None = None) -> bytes:
    client = await LinkClient.connect(address, 1 << 20, connect_timeout_s=3, mesh_tls=mesh_tls)
    try:
        return await client.call(MODEL_INFER, build_request("iris", {"features": IRIS_ROWS}).SerializeToString(), 3)
    finally:
        client.close()


def test_mesh_link_refuses_plain_text(mesh: TlsMesh) -> None:
    with pytest.raises(MeshError):
        asyncio.run(_link_call(mesh.link))


def test_mesh_link_refuses_another_cas_certificate(mesh: TlsMesh) -> None:
    intruder = from_paths(*_files(mesh.rogue, "intruder"))  # a certificate signed by another CA
    with pytest.raises(MeshError):
        asyncio.run(_link_call(mesh.link, intruder))


def test_etcd_refuses_a_client_without_a_mesh_certificate(mesh: TlsMesh) -> None:
    plain = mesh.etcd.removeprefix("https://")
    with pytest.raises(Unavailable):
        asyncio.run(connect(plain, wait=1, call_timeout=1))


def test_audit_events_reach_nats_over_tls(mesh: TlsMesh) -> None:
    with grpc.secure_channel(mesh.routers["mesh link"], _credentials(mesh.pki, None)) as channel:
        assert_eventually(lambda: _iris(channel), timeout=15, retry_on=(AssertionError, grpc.RpcError))
    ca, cert, key = _files(mesh.pki, "operator")

    async def stored() -> int:
        nc = await nats.connect(mesh.nats, tls=_client_context(ca, cert, key), connect_timeout=3,
                                allow_reconnect=False)
        try:
            info = await nc.jetstream().stream_info(STREAM)
            return int(info.state.messages)
        finally:
            await nc.close()

    assert_eventually(lambda: _positive(asyncio.run(stored())), timeout=10)


def _positive(n: int) -> None:
    assert n > 0


def _client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(cert, key)
    return context


def test_nats_refuses_a_client_without_a_mesh_certificate(mesh: TlsMesh) -> None:
    async def plain() -> None:
        nc = await nats.connect(mesh.nats.replace("tls://", "nats://"), connect_timeout=2, allow_reconnect=False,
                                max_reconnect_attempts=0)
        await nc.close()

    with pytest.raises(Exception):  # noqa: B017 - nats-py raises several types for a refused connection
        asyncio.run(plain())

