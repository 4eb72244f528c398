"""TLS for every mesh link: the process's mesh identity and the credentials made from it.

A mesh process has one identity: the mesh CA's certificate plus its own certificate and
key (see :mod:`meshserve.tls.certs`). Services install it once at start-up from their
``tls_ca``/``tls_cert``/``tls_key`` settings (:func:`install`); the command line from
``$MESHSERVE_TLS_CA``/``_CERT``/``_KEY``. Everything that opens a connection asks this
module for credentials:

- gRPC servers: :func:`server_credentials` (``require_client_cert`` for runtimes, which
  answer mesh services only);
- gRPC channels to mesh services: :func:`channel`;
- the mesh link, NATS and etcd: :func:`server_context` / :func:`client_context`.

Without an identity everything is plain text, as in the dev mesh of ``meshserve up``.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from meshserve.errors import FailedPrecondition

log = logging.getLogger(__name__)

ENV_PREFIX = "MESHSERVE_TLS_"


@dataclass(frozen=True)
class Identity:
    """PEM bytes of the mesh CA, this process's certificate chain and its private key."""

    ca: bytes
    cert: bytes
    key: bytes
    files: tuple[Path, Path, Path]

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path) -> Identity:
        try:
            return cls(ca.read_bytes(), cert.read_bytes(), key.read_bytes(), (ca, cert, key))
        except OSError as e:
            raise FailedPrecondition(f"cannot read TLS file {e.filename}: {e.strerror} "
                                     "(make them with `meshserve certs init` and `meshserve certs issue`)") from e


_identity: Identity | None = None


def from_paths(ca: Path | None, cert: Path | None, key: Path | None) -> Identity | None:
    """The identity in these files; None when none is given; FailedPrecondition when only some are."""
    given = [p for p in (ca, cert, key) if p]
    if not given:
        return None
    if ca is None or cert is None or key is None:
        raise FailedPrecondition("TLS needs all three of --tls-ca, --tls-cert and --tls-key "
                                 f"(got only {', '.join(str(p) for p in given)})")
    return Identity.load(ca, cert, key)


def install(identity: Identity | None) -> None:
    """Make ``identity`` this process's mesh identity (None: plain text)."""
    global _identity
    _identity = identity
    if identity is not None:
        log.info("TLS on: mesh CA %s, certificate %s", identity.files[0], identity.files[1])


def install_from_env() -> None:
    """The command line's identity: ``$MESHSERVE_TLS_CA``, ``_CERT`` and ``_KEY``, when set."""
    paths = [os.environ.get(ENV_PREFIX + name, "").strip() for name in ("CA", "CERT", "KEY")]
    ca, cert, key = (Path(p) if p else None for p in paths)
    install(from_paths(ca, cert, key))


def current() -> Identity | None:
    return _identity


def enabled() -> bool:
    return _identity is not None


def _required() -> Identity:
    if _identity is None:
        raise FailedPrecondition("this connection needs TLS, but no mesh certificate is configured "
                                 "(set --tls-ca, --tls-cert and --tls-key, or $MESHSERVE_TLS_CA/_CERT/_KEY)")
    return _identity


def server_credentials(*, require_client_cert: bool) -> grpc.ServerCredentials | None:
    """Credentials for a gRPC server port, or None for plain text."""
    if _identity is None:
        return None
    return grpc.ssl_server_credentials([(_identity.key, _identity.cert)], root_certificates=_identity.ca,
                                       require_client_auth=require_client_cert)


def channel_credentials() -> grpc.ChannelCredentials:
    """Credentials of a channel to a mesh service: trust the mesh CA, present this process's certificate."""
    identity = _required()
    return grpc.ssl_channel_credentials(root_certificates=identity.ca, private_key=identity.key,
                                        certificate_chain=identity.cert)


def aio_channel(target: str, options: Sequence[tuple[str, Any]] = (),
                interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> grpc.aio.Channel:
    """An asyncio channel to a mesh service: TLS when this process has an identity.

    ``interceptors``: e.g. :func:`meshserve.tracing.client_interceptors` for traced calls.
    """
    if _identity is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors or None)
    return grpc.aio.secure_channel(target, channel_credentials(), options=options, interceptors=interceptors or None)


def channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel to a mesh service: TLS when this process has an identity."""
    if _identity is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, channel_credentials(), options=options)


def _context(purpose: ssl.Purpose, identity: Identity) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cadata=identity.ca.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a key pair from files only; the identity remembers where they are.
    context.load_cert_chain(identity.files[1], identity.files[2])
    return context


def server_context(*, require_client_cert: bool) -> ssl.SSLContext | None:
    """An SSL context for a TCP server (the mesh link), or None for plain text."""
    if _identity is None:
        return None
    context = _context(ssl.Purpose.CLIENT_AUTH, _identity)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context() -> ssl.SSLContext:
    """An SSL context for a client connection to a mesh service (the link, NATS)."""
    return _context(ssl.Purpose.SERVER_AUTH, _required())


def nats_options(url: str) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` for ``url``: TLS for a ``tls://`` URL."""
    return {"tls": client_context()} if url.startswith("tls://") else {}
