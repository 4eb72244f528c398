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
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Fields every meshserve gRPC service has."""

    host: str = Field("127.0.0.1", description="address to listen on (loopback unless you mean it)")
    port: int = Field(0, description="port to listen on; 0 picks a free one")
    etcd_endpoint: str = Field("127.0.0.1:2379", description="etcd host:port holding the registry")
    etcd_wait_s: float = Field(10.0, description="how long to wait for etcd at start-up before giving up")
    max_message_bytes: int = Field(64 * MiB, description="largest gRPC message accepted or sent")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    announce_file: Path | None = Field(
        None, description="once serving, write {pid, address} as JSON to this file (for supervisors)"
    )


class RuntimeSettings(ServiceSettings):
    """Fields every runtime has, beyond those of a service."""

    lease_ttl_s: int = Field(5, ge=1, description="seconds the registry keeps this runtime after it dies")
    link_port: int = Field(
        0, ge=-1, description="port of the mesh link routers call ModelInfer over; 0 picks a free one, -1 disables it"
    )


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
    return cls(**overrides)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aetcd logs every failed watch callback at ERROR; meshserve reports those itself.
    logging.getLogger("aetcd").setLevel(logging.CRITICAL)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
