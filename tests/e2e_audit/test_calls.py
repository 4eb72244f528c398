"""Test 1: every call through the router leaves exactly one correct record in the audit service."""

from __future__ import annotations

import functools

import grpc

from .conftest import AuditMesh
from .helpers import query
from .scenario import check_trail, make_calls


def test_n_calls_give_n_correct_records(audit_mesh: AuditMesh, router: grpc.Channel) -> None:
    expected, window = make_calls(router, audit_mesh.runtime_id)
    records = check_trail(functools.partial(query, audit_mesh.audit_address), expected, window)
    assert {r.event.router_id for r in records} == {records[0].event.router_id}
