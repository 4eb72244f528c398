"""Test 8: test 1's calls with the audit service storing into PostgreSQL (skipped, saying why, without it)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator

import grpc
import pytest

from meshserve.local.postgres import PostgresServer, unavailable_reason

from .conftest import AuditMesh
from .helpers import query, verify
from .scenario import check_trail, make_calls

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_audit(audit_mesh: AuditMesh) -> Iterator[str]:
    """A second audit service, on a throwaway PostgreSQL cluster, reading the same stream (its own consumer)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    server = PostgresServer()
    server.start()
    try:
        database = server.create_database(f"audit_{uuid.uuid4().hex[:12]}")
        proc, address = audit_mesh.start_audit(database, "audit-pg", "--consumer", "audit-pg")
        try:
            yield address
        finally:
            proc.stop()
    finally:
        server.stop()


def test_n_calls_on_postgresql(audit_mesh: AuditMesh, router: grpc.Channel, postgres_audit: str) -> None:
    expected, window = make_calls(router, audit_mesh.runtime_id)
    check_trail(functools.partial(query, postgres_audit), expected, window)
    verdict = verify(postgres_audit)
    assert verdict.ok, verdict
