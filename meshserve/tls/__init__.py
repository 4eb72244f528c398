"""TLS for every mesh link: a service's mesh identity and the credentials made from it.

A mesh process has one identity: the mesh CA's certificate plus its own certificate and
key (see :mod:`meshserve.tls.certs`). A service makes a :class:`MeshTls` from its
``tls_ca``/``tls_cert``/``tls_key`` settings at start-up
(:meth:`meshserve.settings.ServiceSettings.mesh_tls`) and hands it to everything that
opens a connection; a command makes one from ``$MESHSERVE_TLS_CA``/``_CERT``/``_KEY``
(:meth:`MeshTls.from_env`). ``None`` in its place means plain text, as in the dev mesh
of ``meshserve up``.

- gRPC servers: :meth:`MeshTls.server_credentials` (``require_client_cert`` for
  runtimes, which answer mesh services only);
- gRPC channels to mesh services: :func:`aio_channel`, :func:`channel`;
- the mesh link and NATS: :meth:`MeshTls.server_context`, :meth:`MeshTls.client_context`,
  :func:`nats_options`.

**Rotation.** The three files are read again when they change (their size, modification
time or inode; looked at when a connection is made, at most every ``check_s``): gRPC
servers and the mesh link server present the new certificate from their next handshake
on, and connections opened from then on present it as a client. A file that cannot be
used (half written, a key that does not match its certificate) is not taken: the last
good identity stays in use and a warning says why. Connections already open keep the
certificate they were opened with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshserve.errors import FailedPrecondition

log = logging.getLogger(__name__)

ENV_PREFIX = "MESHSERVE_TLS_"
CHECK_S = 1.0  # the longest a changed certificate file goes unnoticed while connections are made
Files = tuple[Path, Path, Path]


def _public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class Identity:
    """PEM bytes of the mesh CA, this process's certificate chain and its private key, checked to belong together."""

    ca: bytes
    cert: bytes
    key: bytes
    files: Files
    serial: int = 0
    not_after: str = ""

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path) -> Identity:
        """Read and check the three files; FailedPrecondition saying what is wrong with them."""
        try:
            data = ca.read_bytes(), cert.read_bytes(), key.read_bytes()
        except OSError as e:
            raise FailedPrecondition(f"cannot read TLS file {e.filename}: {e.strerror} "
                                     "(make them with `meshserve certs init` and `meshserve certs issue`)") from e
        return cls.parse(*data, files=(ca, cert, key))

    @classmethod
    def parse(cls, ca: bytes, cert: bytes, key: bytes, *, files: Files) -> Identity:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as e:
            raise FailedPrecondition(f"{files[0]} holds no PEM certificate: {e}") from None
        try:
            leaf = x509.load_pem_x509_certificates(cert)[0]
        except ValueError as e:
            raise FailedPrecondition(f"{files[1]} holds no PEM certificate: {e}") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as e:
            raise FailedPrecondition(f"{files[2]} holds no unencrypted PEM private key: {e}") from None
        if _public(private.public_key()) != _public(leaf.public_key()):
            raise FailedPrecondition(f"the key in {files[2]} does not belong to the certificate in {files[1]}")
        return cls(ca, cert, key, files, leaf.serial_number, f"{leaf.not_valid_after_utc:%Y-%m-%d}")

    def same_as(self, other: Identity) -> bool:
        return (self.ca, self.cert, self.key) == (other.ca, other.cert, other.key)


def _signature(files: Files) -> tuple[tuple[int, int, int, int], ...]:
    stats = [os.stat(path) for path in files]
    return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path holding ``data``, for ``ssl``, which loads key pairs from files only.

    The bytes are those checked when the identity was read, not whatever the service's
    files hold by now; an in-memory file where the platform has one.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshserve-tls")
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="meshserve-tls-") as folder:
        path = Path(folder) / "pem"
        path.write_bytes(data)
        path.chmod(0o600)
        yield str(path)


def _context(purpose: ssl.Purpose, identity: Identity) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cadata=identity.ca.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with _pem_file(identity.cert) as cert, _pem_file(identity.key) as key:
        context.load_cert_chain(cert, key)
    return context


def _certificate_configuration(identity: Identity) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(identity.key, identity.cert)], root_certificates=identity.ca)


class MeshTls:
    """One service's mesh identity, read from its files and read again when they change."""

    def __init__(self, ca: Path, cert: Path, key: Path, *, check_s: float = CHECK_S) -> None:
        self.files: Files = (ca, cert, key)
        self.check_s = check_s
        self._lock = threading.Lock()  # gRPC asks for certificates from its own threads
        self._signature: tuple[Any, ...] = ()
        self._state = (0, self._first_read())  # (generation, identity), swapped as one
        self._checked = time.monotonic()
        self._refused: tuple[Any, ...] = ()
        self._client: tuple[int, ssl.SSLContext] | None = None

    def _first_read(self) -> Identity:
        try:
            return self._read_files()
        except FailedPrecondition:
            time.sleep(0.1)  # perhaps caught between the new key and the new certificate of a rotation
            return self._read_files()

    def _read_files(self) -> Identity:
        try:  # before reading, so that a change made while they are read is seen next time
            self._signature = _signature(self.files)
        except OSError:
            self._signature = ()
        return Identity.load(*self.files)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> MeshTls | None:
        """A command's identity: ``$MESHSERVE_TLS_CA``, ``_CERT`` and ``_KEY``, when set."""
        paths = [environ.get(ENV_PREFIX + name, "").strip() for name in ("CA", "CERT", "KEY")]
        ca, cert, key = (Path(p) if p else None for p in paths)
        return from_paths(ca, cert, key)

    # -- the identity and its rotation ---------------------------------------------------

    @property
    def identity(self) -> Identity:
        """The identity in use now (the files are looked at first when ``check_s`` has passed)."""
        return self.current()[1]

    @property
    def generation(self) -> int:
        """How many times a new identity was taken since start-up."""
        return self._state[0]

    def current(self) -> tuple[int, Identity]:
        """(generation, identity) in use now, after looking at the files when ``check_s`` has passed."""
        if time.monotonic() - self._checked >= self.check_s:
            self.reload()
        return self._state

    def reload(self) -> bool:
        """Read the files again if they changed; True when a new identity was taken."""
        with self._lock:
            self._checked = time.monotonic()
            try:
                signature = _signature(self.files)
            except OSError as e:  # a file removed for a moment while it is replaced
                self._refuse((e.filename, e.errno), f"cannot read {e.filename}: {e.strerror}")
                return False
            if signature == self._signature:
                return False
            generation, identity = self._state
            try:
                fresh = Identity.load(*self.files)
            except FailedPrecondition as e:
                self._refuse(signature, e.message)
                return False
            self._signature = signature
            if fresh.same_as(identity):
                return False
            self._state = (generation + 1, fresh)
        log.info("TLS certificate %s reloaded: serial %x, valid until %s (was serial %x)", self.files[1],
                 fresh.serial, fresh.not_after, identity.serial)
        return True

    def _refuse(self, seen: tuple[Any, ...], why: str) -> None:
        if seen != self._refused:  # once per state of the files, not once per handshake
            self._refused = seen
            log.warning("TLS files changed but cannot be used (%s): keeping the certificate in use "
                        "(serial %x); they are read again when they change", why, self._state[1].serial)

    # -- credentials -----------------------------------------------------------------------

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        """Credentials for a gRPC server port; each new connection gets the identity current then."""
        served, identity = self.current()
        last = [served]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC before every handshake; None keeps the configuration it has.
            try:
                generation, fresh = self.current()
            except Exception:
                log.exception("checking the TLS files failed; keeping the certificate in use")
                return None
            if generation == last[0]:
                return None
            last[0] = generation
            return _certificate_configuration(fresh)

        log.info("TLS on: mesh CA %s, certificate %s (serial %x; read again when the files change)",
                 self.files[0], self.files[1], identity.serial)
        return grpc.dynamic_ssl_server_credentials(_certificate_configuration(identity), fetch,
                                                   require_client_authentication=require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials of a new channel to a mesh service: trust the mesh CA, present the current certificate."""
        identity = self.identity
        return grpc.ssl_channel_credentials(root_certificates=identity.ca, private_key=identity.key,
                                            certificate_chain=identity.cert)

    def server_context(self, *, require_client_cert: bool) -> ssl.SSLContext:
        """An SSL context for a TCP server (the mesh link); each handshake gets the identity current then."""
        generation, identity = self.current()
        base = self._server_context(identity, require_client_cert)
        chosen = [(generation, base)]

        def choose(connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
            # Called at every ClientHello (with or without SNI); a new context swaps the certificate.
            try:
                latest, fresh = self.current()
                if latest != chosen[0][0]:
                    chosen[0] = (latest, self._server_context(fresh, require_client_cert))
                if connection.context is not chosen[0][1]:
                    connection.context = chosen[0][1]
            except Exception:
                log.exception("switching the mesh link to a new TLS certificate failed")

        base.sni_callback = choose
        return base

    @staticmethod
    def _server_context(identity: Identity, require_client_cert: bool) -> ssl.SSLContext:
        context = _context(ssl.Purpose.CLIENT_AUTH, identity)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for a new client connection to a mesh service (the link, NATS)."""
        generation, identity = self.current()
        made = self._client
        if made is None or made[0] != generation:
            made = self._client = (generation, _context(ssl.Purpose.SERVER_AUTH, identity))
        return made[1]


def from_paths(ca: Path | None, cert: Path | None, key: Path | None) -> MeshTls | None:
    """The identity in these files; None when none is given; FailedPrecondition when only some are."""
    given = [p for p in (ca, cert, key) if p]
    if not given:
        return None
    if ca is None or cert is None or key is None:
        raise FailedPrecondition("TLS needs all three of --tls-ca, --tls-cert and --tls-key "
                                 f"(got only {', '.join(str(p) for p in given)})")
    return MeshTls(ca, cert, key)


def required(mesh_tls: MeshTls | None) -> MeshTls:
    """``mesh_tls``, or FailedPrecondition for a connection that needs TLS when there is no identity."""
    if mesh_tls is None:
        raise FailedPrecondition("this connection needs TLS, but no mesh certificate is configured "
                                 "(set --tls-ca, --tls-cert and --tls-key, or $MESHSERVE_TLS_CA/_CERT/_KEY)")
    return mesh_tls


def aio_channel(target: str, mesh_tls: MeshTls | None, options: Sequence[tuple[str, Any]] = (),
                interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> grpc.aio.Channel:
    """An asyncio channel to a mesh service: TLS with ``mesh_tls``, plain text without.

    ``interceptors``: e.g. :meth:`meshserve.tracing.Tracing.client_interceptors` for traced calls.
    """
    if mesh_tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors or None)
    return grpc.aio.secure_channel(target, mesh_tls.channel_credentials(), options=options,
                                   interceptors=interceptors or None)


def channel(target: str, mesh_tls: MeshTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to a mesh service: TLS with ``mesh_tls``, plain text without."""
    if mesh_tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, mesh_tls.channel_credentials(), options=options)


def nats_options(url: str, mesh_tls: MeshTls | None) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` for ``url``: TLS for a ``tls://`` URL."""
    return {"tls": required(mesh_tls).client_context()} if url.startswith("tls://") else {}
