"""`meshserve certs rotate` against a running TLS mesh: no failed call, new certificates on new connections.

Real etcd and NATS over TLS, a Python runtime (gRPC and mesh link) and a router, all with
certificates from one mesh CA. A client calls iris through the router without pause, on
one long-lived channel and on a fresh channel (a new handshake with the router) every few
calls, while the whole folder is rotated three times.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, infer, router_process, runtime_process

from meshserve.local.etcd import EtcdServer
from meshserve.local.nats import NatsServer
from meshserve.tls import MeshTls, certs

pytestmark = pytest.mark.slow

MESHSERVE = str(Path(sys.executable).parent / "meshserve")
NAMES = ("etcd", "nats", "router", "runtime", "operator")
ROTATIONS = 3


def _files(folder: Path, name: str) -> tuple[Path, Path, Path]:
    return folder / "ca.crt", folder / f"{name}.crt", folder / f"{name}.key"


def _flags(folder: Path, name: str) -> list[str]:
    ca, cert, key = _files(folder, name)
    return ["--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@dataclass
class Mesh:
    pki: Path
    router: str
    runtime: str
    link: str


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    pki = tmp_path_factory.mktemp("rotating-pki")
    certs.init_ca(pki)
    for name in NAMES:
        certs.issue(pki, name)
    folder = tmp_path_factory.mktemp("rotating-mesh")
    repository = folder / "models"
    shutil.copytree(EXAMPLES / "iris", repository / "iris")
    with EtcdServer(folder, folder / "etcd.log", tls_files=_files(pki, "etcd")) as etcd, \
            NatsServer(folder, folder / "nats.log", tls_files=_files(pki, "nats")) as broker, \
            runtime_process(repository, etcd.endpoint, folder, extra=_flags(pki, "runtime")) as (_, runtime, rid), \
            router_process(etcd.endpoint, folder, *_flags(pki, "router"), "--nats-url", broker.url) as (_, router):
        announced = json.loads((folder / f"runtime-{rid}.json").read_text())
        yield Mesh(pki, router, runtime, announced["link_address"])


def _operator(pki: Path) -> MeshTls:
    """The operator's identity, read again when its files change, as a mesh service's is.

    (Credentials made straight from the files could catch the new key beside the old
    certificate while they are replaced.)
    """
    return MeshTls(*_files(pki, "operator"))


def _presented(pki: Path, address: str, alpn: str | None) -> int:
    """The serial of the certificate a new TLS connection to ``address`` is shown, presenting the operator's."""
    ca, cert, key = _files(pki, "operator")
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(cert, key)
    if alpn:
        context.set_alpn_protocols([alpn])
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=3) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as connection:
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@dataclass
class Caller:
    """Calls iris through the router until stopped; every fifth call on a channel of its own."""

    identity: MeshTls
    router: str
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def answered_at_least(self, n: int) -> None:
        assert self.answered >= n or self.failures, self.answered

    def run(self) -> None:
        with grpc.secure_channel(self.router, self.identity.channel_credentials()) as kept:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    if n % 5:
                        infer(kept, "iris", IRIS_ROWS, timeout=10)
                    else:
                        with grpc.secure_channel(self.router, self.identity.channel_credentials()) as fresh:
                            infer(fresh, "iris", IRIS_ROWS, timeout=10)
                    self.answered += 1
                except grpc.RpcError as e:
                    self.failures.append(f"call {n}: {e.code().name}: {e.details()}")


def test_a_rotation_under_load_fails_no_call_and_new_connections_present_the_new_certificates(mesh: Mesh) -> None:
    operator = _operator(mesh.pki)
    with grpc.secure_channel(mesh.router, operator.channel_credentials()) as channel:
        assert_eventually(lambda: infer(channel, "iris", IRIS_ROWS), timeout=30,
                          retry_on=(AssertionError, grpc.RpcError))
    before = {name: _serial(mesh.pki / f"{name}.crt") for name in NAMES}
    caller = Caller(operator, mesh.router)
    thread = threading.Thread(target=caller.run, name="caller")
    thread.start()
    try:
        assert_eventually(lambda: caller.answered_at_least(20), timeout=30)
        for _ in range(ROTATIONS):
            done = subprocess.run([MESHSERVE, "certs", "rotate", str(mesh.pki)], capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            assert all(name in done.stdout for name in NAMES), done.stdout
            time.sleep(0.5)
        answered_at_last_rotation = caller.answered
        # Calls go on past the moment every service has looked at its files again (once a second).
        assert_eventually(lambda: caller.answered_at_least(answered_at_last_rotation + 20), timeout=30)
        time.sleep(1.5)
    finally:
        caller.stop.set()
        thread.join(timeout=30)
    assert caller.failures == [], caller.failures[:5]
    assert caller.answered >= 60, caller.answered
    after = {name: _serial(mesh.pki / f"{name}.crt") for name in NAMES}
    assert all(after[name] != before[name] for name in NAMES)
    # A new connection to each service is shown the certificate its files hold now.
    for address, name, alpn in ((mesh.router, "router", "h2"), (mesh.runtime, "runtime", "h2"),
                                (mesh.link, "runtime", None)):
        assert_eventually(lambda a=address, n=name, p=alpn: _presented_is(mesh.pki, a, p, after[n]), timeout=10,
                          retry_on=(AssertionError, OSError))
    # And the mesh still answers on new channels with the new operator certificate.
    assert operator.identity.cert == (mesh.pki / "operator.crt").read_bytes()
    with grpc.secure_channel(mesh.router, operator.channel_credentials()) as channel:
        assert infer(channel, "iris", IRIS_ROWS)["label"].shape == (len(IRIS_ROWS),)


def _presented_is(pki: Path, address: str, alpn: str | None, serial: int) -> None:
    assert _presented(pki, address, alpn) == serial
