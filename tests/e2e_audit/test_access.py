"""Who may read the trail: an audit service outside dev mode, keys and rules made with the CLI in real etcd.

The service runs beside the package's (dev-mode) one, on its own database and durable
consumer, so it stores every call the router makes.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import aetcd
import grpc
import pytest
from e2e.helpers import IRIS_ROWS, assert_eventually, rpc_error

from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry import keys
from meshserve.registry.etcd import read_records, with_etcd

from .conftest import AuditMesh
from .helpers import query, request, stub, verify
from .scenario import pair_tensors

TAG = uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Key:
    principal: str
    token: str
    key_id: str

    @property
    def bearer(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)


def meshserve(mesh: AuditMesh, audit: str, *args: str, key: Key | None = None) -> subprocess.CompletedProcess[str]:
    """The ``meshserve`` command line against this mesh's etcd and the given audit service."""
    env = {**os.environ, "COLUMNS": "200", "MESHSERVE_ETCD": mesh.etcd_endpoint, "MESHSERVE_AUDIT": audit}
    env.pop("MESHSERVE_API_KEY", None)
    if key is not None:
        env["MESHSERVE_API_KEY"] = key.token
    return subprocess.run([sys.executable, "-m", "meshserve.cli.main", *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def new_key(mesh: AuditMesh, audit: str, name: str, *rules: tuple[str, str]) -> Key:
    """A key for principal ``name``, and a rule per (model patterns, actions), made as an operator makes them."""
    principal = f"{name}-{TAG}"
    done = meshserve(mesh, audit, "keys", "create", "--principal", principal)
    assert done.returncode == 0, done.stderr
    token = next(line for line in done.stdout.splitlines() if line.startswith("ms_"))
    for models, actions in rules:
        done = meshserve(mesh, audit, "policy", "allow", "--principal", principal, "--models", models,
                         "--actions", actions)
        assert done.returncode == 0, done.stderr
    return Key(principal, token, token.split("_")[1])


def forget(etcd_endpoint: str) -> None:
    """Remove the keys and rules this module made."""
    async def remove(client: aetcd.Client) -> None:
        for prefix, parse, message in ((keys.API_KEYS, keys.parse_api_key_key, auth_pb2.ApiKey),
                                       (keys.ACCESS_RULES, keys.parse_access_rule_key, auth_pb2.AccessRule)):
            for name, record in (await read_records(client, prefix, parse, message)).items():
                if record.principal.endswith(f"-{TAG}"):
                    await client.delete((prefix + name).encode())
    with_etcd(etcd_endpoint, remove)


@dataclass(frozen=True)
class Locked:
    """The audit service outside dev mode, and keys for it."""

    address: str
    scorer: Key  # infer and metadata, no audit:read
    iris: Key  # audit:read on iris*
    auditor: Key  # audit:read on *


@pytest.fixture(scope="module")
def locked(audit_mesh: AuditMesh) -> Iterator[Locked]:
    database = f"sqlite:///{audit_mesh.folder / 'locked-audit.db'}"
    proc, address = audit_mesh.start_audit(database, "audit-locked", "--consumer", "audit-locked", dev_mode=False)
    try:
        yield Locked(
            address,
            scorer=new_key(audit_mesh, address, "scorer", ("*", "infer,metadata")),
            iris=new_key(audit_mesh, address, "iris-auditor", ("iris*", "audit:read")),
            auditor=new_key(audit_mesh, address, "auditor", ("*", "audit:read")),
        )
    finally:
        proc.stop()
        forget(audit_mesh.etcd_endpoint)


def code(call: functools.partial[object]) -> tuple[grpc.StatusCode, str]:
    error = rpc_error(call)
    return error.code(), error.details() or ""


def test_callers_without_a_key_are_unauthenticated(audit_mesh: AuditMesh, locked: Locked) -> None:
    status, details = code(functools.partial(query, locked.address))
    assert status == grpc.StatusCode.UNAUTHENTICATED and "API key" in details
    assert code(functools.partial(query, locked.address, model="iris"))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert code(functools.partial(verify, locked.address))[0] == grpc.StatusCode.UNAUTHENTICATED
    cli = meshserve(audit_mesh, locked.address, "audit", "query", "--model", "iris")
    assert cli.returncode == 1
    assert "UNAUTHENTICATED" in cli.stderr and "set MESHSERVE_API_KEY to a key allowed audit:read" in cli.stderr


def test_a_key_without_audit_read_is_denied(locked: Locked) -> None:
    for filters in ({}, {"model": "iris"}):
        status, details = code(functools.partial(query, locked.address, metadata=locked.scorer.bearer, **filters))
        assert status == grpc.StatusCode.PERMISSION_DENIED, details
        assert f"principal {locked.scorer.principal!r} may not audit:read" in details


def test_audit_read_on_iris_shows_iris_calls_only(audit_mesh: AuditMesh, router: grpc.Channel,
                                                  locked: Locked) -> None:
    since = time.time_ns()
    iris = request("iris", [("features", "FP32", IRIS_ROWS[:1])], raw=True, request_id=f"{TAG}-iris")
    pair = request("pair", pair_tensors(1), raw=True, request_id=f"{TAG}-pair")
    for call in (iris, pair):
        stub(router).ModelInfer(call, timeout=10)

    def both_stored() -> None:
        found = {r.event.request_id for r in query(locked.address, metadata=locked.auditor.bearer,
                                                   since_unix_nanos=since)}
        assert {iris.id, pair.id} <= found, found
    assert_eventually(both_stored, timeout=20, interval=0.2, retry_on=(AssertionError, grpc.RpcError))

    seen = query(locked.address, metadata=locked.iris.bearer, since_unix_nanos=since)
    assert iris.id in {r.event.request_id for r in seen}
    assert pair.id not in {r.event.request_id for r in seen}
    assert all(fnmatch.fnmatchcase(r.event.model, "iris*") for r in seen), [r.event.model for r in seen]
    status, details = code(functools.partial(query, locked.address, metadata=locked.iris.bearer, model="pair"))
    assert status == grpc.StatusCode.PERMISSION_DENIED
    assert f"principal {locked.iris.principal!r} may not audit:read on 'pair'" in details

    shown = meshserve(audit_mesh, locked.address, "audit", "query", "--request-id", iris.id, "--json",
                      key=locked.iris)
    assert shown.returncode == 0 and iris.id in shown.stdout, shown.stderr
    refused = meshserve(audit_mesh, locked.address, "audit", "query", "--model", "pair", key=locked.iris)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr, refused.stderr


def test_verify_needs_audit_read_on_everything(audit_mesh: AuditMesh, locked: Locked) -> None:
    status, details = code(functools.partial(verify, locked.address, metadata=locked.iris.bearer))
    assert status == grpc.StatusCode.PERMISSION_DENIED and "needs audit:read on '*'" in details
    assert verify(locked.address, metadata=locked.auditor.bearer).ok
    cli = meshserve(audit_mesh, locked.address, "audit", "verify", key=locked.auditor)
    assert cli.returncode == 0 and "OK" in cli.stdout, cli.stdout + cli.stderr


def test_a_revoked_key_stops_working_at_once(audit_mesh: AuditMesh, locked: Locked) -> None:
    key = new_key(audit_mesh, locked.address, "leaver", ("*", "audit:read"))
    assert_eventually(lambda: query(locked.address, metadata=key.bearer, request_id=key.key_id), timeout=5,
                      retry_on=(grpc.RpcError,))

    async def revoke(client: aetcd.Client) -> None:  # as `meshserve keys revoke` does, timed from the delete
        assert await client.delete(keys.api_key_key(key.key_id))
    with_etcd(audit_mesh.etcd_endpoint, revoke)
    revoked_at = time.monotonic()

    def refused() -> None:
        status, details = code(functools.partial(query, locked.address, metadata=key.bearer, request_id=key.key_id))
        assert status == grpc.StatusCode.UNAUTHENTICATED and key.key_id in details
    assert_eventually(refused, timeout=2, interval=0.05)
    assert time.monotonic() - revoked_at < 2


def test_the_dev_mode_service_still_serves_callers_without_a_key(audit_mesh: AuditMesh, locked: Locked) -> None:
    # The package's service runs as `meshserve up` runs it: with etcd, in dev mode.
    assert query(audit_mesh.audit_address, request_id=f"{TAG}-none") == []
    status, _ = code(functools.partial(query, audit_mesh.audit_address, metadata=locked.scorer.bearer))
    assert status == grpc.StatusCode.PERMISSION_DENIED  # keyed callers get what their rules say
