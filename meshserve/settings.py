"""Typed settings shared by every service.

Each service declares one pydantic-settings class with its own environment prefix
(``MESHSERVE_ROUTER_``, ``MESHSERVE_PYTHON_`` ...). :func:`load_settings` builds the
command-line flags from the same fields, so every setting can come from a flag, the
environment or its default, in that order.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings

from meshserve.errors import MeshError
from meshserve.registry.etcd_token import EtcdCredentials
from meshserve.tls import MeshTls, from_paths

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Fields every meshserve gRPC service has."""

    host: str = Field("127.0.0.1", description="address to listen on (loopback unless you mean it)")
    port: int = Field(0, description="port to listen on; 0 picks a free one")
    etcd_endpoint: str = Field("127.0.0.1:2379", description="etcd host:port holding the registry")
    etcd_wait_s: float = Field(10.0, description="how long to wait for etcd at start-up before giving up")
    etcd_user: str = Field(
        "", description="etcd user this service authenticates as, with etcd_password_file (etcd with authentication "
        "on; under TLS etcd takes the user from the certificate's name instead)")
    etcd_password_file: Path | None = Field(None, description="file holding the etcd user's password")
    max_message_bytes: int = Field(64 * MiB, description="largest gRPC message accepted or sent")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    announce_file: Path | None = Field(
        None, description="once serving, write {pid, address} as JSON to this file (for supervisors)"
    )
    tls_ca: Path | None = Field(None, description="mesh CA certificate (PEM); with tls_cert and tls_key turns TLS on")
    tls_cert: Path | None = Field(None, description="this service's certificate (PEM), from `meshserve certs issue`; "
                                  "read again when the file changes (`meshserve certs rotate`)")
    tls_key: Path | None = Field(None, description="this service's private key (PEM), read again with the certificate")
    trace_sample_ratio: float = Field(
        0.0, ge=0.0, le=1.0,
        description="tracing: share of the calls arriving without a trace that start one (0 turns tracing off, "
                    "1 traces every call); a call from a sampled trace is always traced (see docs/tracing.md)")
    otlp_endpoint: str = Field(
        "", description="OTLP/gRPC collector the spans go to: host:port (plain text) or https://host:port; "
                        "empty: spans are not exported")
    trace_export_s: float = Field(1.0, gt=0, description="the longest a finished span waits before it is exported")

    # Runtimes answer mesh services only: with TLS on, a caller must present a mesh certificate.
    require_client_cert: ClassVar[bool] = False

    def mesh_tls(self) -> MeshTls | None:
        """This service's mesh identity from ``tls_ca``, ``tls_cert`` and ``tls_key`` (None: plain text).

        Make it once at start-up and pass it to what opens connections; it reads the files
        again when they change (see :mod:`meshserve.tls`).
        """
        return from_paths(self.tls_ca, self.tls_cert, self.tls_key)

    def etcd_credentials(self) -> EtcdCredentials | None:
        """The etcd user this service connects as (None: no etcd authentication, or TLS certificates)."""
        return EtcdCredentials.from_file(self.etcd_user, self.etcd_password_file)


class MeshCredentialSettings(BaseSettings):
    """The mesh credential of a service that calls runtimes or is one (see meshserve/auth/mesh.py)."""

    mesh_credential_file: Path | None = Field(
        None, description="file holding the mesh credential: routers present it on every call to a runtime, and a "
        "runtime given one refuses every call without it (plain-text meshes; `meshserve up --no-dev-mode` makes it)")


class MetricsSettings(BaseSettings):
    """The Prometheus endpoint of a service that serves one (see meshserve/metrics.py)."""

    metrics_port: int = Field(
        0, ge=-1, description="port serving Prometheus metrics (HTTP /metrics on host); 0 picks a free one, "
        "-1 disables it")


class RuntimeSettings(MeshCredentialSettings, ServiceSettings):
    """Fields every runtime has, beyond those of a service."""

    require_client_cert: ClassVar[bool] = True

    lease_ttl_s: int = Field(5, ge=1, description="seconds the registry keeps this runtime after it dies")
    link_port: int = Field(
        0, ge=-1, description="port of the mesh link routers call ModelInfer over; 0 picks a free one, -1 disables it"
    )
    advertise_host: str = Field(
        "", description="host name or address routers reach this runtime at, as registered (default: host; "
        "set it when host is 0.0.0.0)")

    def advertised(self, address: str) -> str:
        """``address`` (host:port as bound) with the host routers should dial."""
        if not self.advertise_host or not address:
            return address
        return f"{self.advertise_host}:{address.rpartition(':')[2]}"


S = TypeVar("S", bound=BaseSettings)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_settings(cls: type[S], argv: Sequence[str] | None = None, prog: str | None = None) -> S:
    """Settings from flags (highest), then environment variables, then defaults."""
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    for name, field in cls.model_fields.items():
        help_text = field.description or ""
        if field.annotation is bool:
            parser.add_argument(_flag(name), dest=name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, default=None, help=help_text)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = cls(**overrides)
    except ValidationError as e:  # one line per problem, no traceback
        parser.error("; ".join(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}"
                               for err in e.errors()))
    if isinstance(settings, ServiceSettings):
        try:  # fail at once on unusable TLS files; the service makes its own identity when it starts
            settings.mesh_tls()
        except MeshError as e:
            parser.error(e.message)
    return settings


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aetcd logs every failed watch callback at ERROR; meshserve reports those itself.
    logging.getLogger("aetcd").setLevel(logging.CRITICAL)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
