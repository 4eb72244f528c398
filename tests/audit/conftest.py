"""Fixtures of the audit tests: real NATS, SQLite and (when installed) PostgreSQL, the service in-process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from meshserve.local.nats import NatsServer
from meshserve.local.postgres import PostgresServer, unavailable_reason
from meshserve.services.audit.server import AuditService
from meshserve.services.audit.settings import AuditSettings


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"audit_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit.db'}"


def audit_settings(nats_url: str, database: str, **overrides: Any) -> AuditSettings:
    """Settings of an in-process service; in dev mode (anyone reads) unless ``overrides`` say otherwise."""
    return AuditSettings(**{"port": 0, "nats_url": nats_url, "database": database, "ack_wait_s": 2.0,
                            "dev_mode": True, **overrides})


@pytest.fixture
async def service(nats_server: NatsServer, database_url: str) -> AsyncIterator[AuditService]:
    """The audit service in-process, on port 0, consuming from the test's NATS into a fresh database."""
    svc = AuditService(audit_settings(nats_server.url, database_url))
    await svc.start()
    assert svc.consumer is not None
    await asyncio.wait_for(svc.consumer.subscribed.wait(), 10)  # the stream exists from here on
    yield svc
    await svc.stop()
