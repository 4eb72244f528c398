"""Test 7: after everything above, the chain verifies; a record edited in SQLite is named by verify."""

from __future__ import annotations

import sqlite3
import time
import uuid

import grpc
from e2e.helpers import IRIS_ROWS

from .conftest import AuditMesh
from .helpers import all_stored_once, meshserve_cli, query, request, stub, verify


def set_principal(mesh: AuditMesh, sequence: int, principal: str) -> None:
    with sqlite3.connect(mesh.db_path, timeout=10) as conn:
        changed = conn.execute("UPDATE records SET principal = ? WHERE sequence = ?", (principal, sequence)).rowcount
    conn.close()
    assert changed == 1


def test_verify_then_tamper(audit_mesh: AuditMesh, router: grpc.Channel) -> None:
    since = time.time_ns()
    sent = set()
    for i in range(4):  # the trail is never empty, even when this test runs alone
        req = request("iris", [("features", "FP32", IRIS_ROWS[i:i + 1])], raw=True,
                      request_id=f"verify-{uuid.uuid4().hex[:6]}")
        stub(router).ModelInfer(req, timeout=10)
        sent.add(req.id)
    all_stored_once(audit_mesh.audit_address, sent, since)

    records = query(audit_mesh.audit_address)
    verdict = verify(audit_mesh.audit_address)
    assert verdict.ok, verdict
    assert verdict.records_checked == len(records) == records[-1].sequence
    assert verdict.head_hash == records[-1].hash
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    cli = meshserve_cli("audit", "verify", "--audit", audit_mesh.audit_address)
    assert cli.returncode == 0, cli.stdout + cli.stderr

    victim = records[len(records) // 2]
    assert victim.event.principal == "anonymous"
    set_principal(audit_mesh, victim.sequence, "mallory")
    try:
        cli = meshserve_cli("audit", "verify", "--audit", audit_mesh.audit_address)
        assert cli.returncode == 1, cli.stdout + cli.stderr
        assert f"record {victim.sequence} " in cli.stdout + cli.stderr, cli.stdout + cli.stderr
        verdict = verify(audit_mesh.audit_address)
        assert not verdict.ok and verdict.first_bad_sequence == victim.sequence, verdict
        assert "principal" in verdict.problem, verdict
    finally:
        set_principal(audit_mesh, victim.sequence, "anonymous")
    assert verify(audit_mesh.audit_address).ok
