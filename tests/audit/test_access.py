"""audit:read on Query and Verify: keys and rules from a real etcd, the service in-process."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserve.auth import apikeys
from meshserve.local.etcd import EtcdServer
from meshserve.local.nats import NatsServer
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry import keys
from meshserve.registry.etcd import connect
from meshserve.services.audit.query import like_pattern
from meshserve.services.audit.server import AuditService
from meshserve.services.audit.store import Incoming

from .conftest import audit_settings
from .helpers import encode, eventually, make_event

N = 30  # events 0..29: models iris, mtcars, simple in turn (sequence i + 1)
# Events 30..34: models the LIKE translation of a rule's pattern may match while the pattern does not.
LOOKALIKES = ("IRIS", "simple2", "Simple", "sample", "irises")


class Grants:
    """API keys and allow rules written to etcd as `meshserve keys create` / `policy allow` write them."""

    def __init__(self, client: aetcd.Client, service: AuditService) -> None:
        self.client = client
        self.service = service
        self.written: list[bytes] = []

    async def key(self, principal: str, *roles: str) -> tuple[str, str]:
        """(token, key id) of a new key, once the service has seen it."""
        token, record = apikeys.create(principal, list(roles))
        await self._put(keys.api_key_key(record.key_id), record.SerializeToString())
        registry = self.service.registry
        assert registry is not None

        async def seen() -> None:
            assert record.key_id in registry.api_keys
        await eventually(seen, within=5)
        return token, record.key_id

    async def rule(self, models: list[str], actions: tuple[str, ...] = ("audit:read",), *, principal: str = "",
                   role: str = "") -> None:
        rule = auth_pb2.AccessRule(id=uuid.uuid4().hex[:12], principal=principal, role=role, models=models,
                                   actions=list(actions))
        await self._put(keys.access_rule_key(rule.id), rule.SerializeToString())
        registry = self.service.registry
        assert registry is not None

        async def seen() -> None:
            assert rule.id in registry.access_rules
        await eventually(seen, within=5)

    async def revoke(self, key_id: str) -> None:
        await self.client.delete(keys.api_key_key(key_id))

    async def _put(self, key: bytes, value: bytes) -> None:
        await self.client.put(key, value)
        self.written.append(key)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def started(settings: Any) -> AsyncIterator[AuditService]:
    """The service in-process over a filled trail."""
    service = AuditService(settings)
    await service.start()
    try:
        assert service.store is not None
        events = [make_event(i) for i in range(N)]
        events += [make_event(N + i, model=model) for i, model in enumerate(LOOKALIKES)]
        await asyncio.to_thread(service.store.ingest, [Incoming(encode(e), "s") for e in events])
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def keyed(nats_server: NatsServer, database_url: str, etcd: EtcdServer) -> AsyncIterator[AuditService]:
    """The service reading keys and rules from etcd, not in dev mode, over a filled trail."""
    async with started(audit_settings(nats_server.url, database_url, etcd_endpoint=etcd.endpoint,
                                      dev_mode=False)) as service:
        yield service


@contextlib.asynccontextmanager
async def granting(etcd: EtcdServer, service: AuditService) -> AsyncIterator[Grants]:
    """Grants for ``service``, removed from etcd afterwards."""
    client = await connect(etcd.endpoint)
    grants = Grants(client, service)
    try:
        yield grants
    finally:
        for key in grants.written:
            await client.delete(key)
        await client.close()


@pytest.fixture
async def grants(keyed: AuditService, etcd: EtcdServer) -> AsyncIterator[Grants]:
    async with granting(etcd, keyed) as written:
        yield written


@pytest.fixture
async def stub(keyed: AuditService) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(keyed.address) as channel:
        yield audit_pb2_grpc.AuditServiceStub(channel)


async def query(stub: Any, token: str = "", **fields: Any) -> list[audit_pb2.QueryResponse]:
    metadata = bearer(token) if token else ()
    return [r async for r in stub.Query(audit_pb2.QueryRequest(**fields), timeout=10, metadata=metadata)]


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def models_of(responses: list[audit_pb2.QueryResponse]) -> list[str]:
    return [r.record.event.model for r in responses]


async def test_callers_without_a_key_are_unauthenticated(stub: Any) -> None:
    for fields in ({}, {"model": "iris"}):
        error = await refusal(query(stub, **fields))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "API key" in (error.details() or "") and "authorization: Bearer" in (error.details() or "")
    error = await refusal(stub.Verify(audit_pb2.VerifyRequest(), timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bad_key_is_unauthenticated(stub: Any, grants: Grants) -> None:
    principal = unique("gone")
    token, key_id = await grants.key(principal)
    await grants.rule(["*"], principal=principal)
    assert await query(stub, token, model="iris")
    await grants.revoke(key_id)

    async def refused() -> None:
        error = await refusal(query(stub, token, model="iris"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and key_id in (error.details() or "")
    await eventually(refused, within=2)


async def test_a_key_without_audit_read_is_denied(stub: Any, grants: Grants) -> None:
    principal = unique("scorer")
    token, _ = await grants.key(principal)
    await grants.rule(["*"], ("infer", "metadata"), principal=principal)
    everything = await refusal(query(stub, token))
    assert everything.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"principal {principal!r} may not audit:read any model" in (everything.details() or "")
    one = await refusal(query(stub, token, model="iris"))
    assert one.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"principal {principal!r} may not audit:read on 'iris'" in (one.details() or "")


async def test_an_unfiltered_query_shows_only_readable_models(stub: Any, grants: Grants) -> None:
    principal = unique("iris-auditor")
    token, _ = await grants.key(principal)
    # Patterns whose LIKE translations also match lookalikes (IRIS, irxs, Simple, ...): those must not show.
    await grants.rule(["iris", "ir?s", "s[i]mple"], principal=principal)
    readable = await query(stub, token, limit=1000)
    assert set(models_of(readable)) == {"iris", "simple"}
    assert [r.record.sequence for r in readable] == [i + 1 for i in range(N) if i % 3 != 1]

    paged: list[int] = []
    token_ = ""
    while True:  # small pages, each refilled past the rows the SQL filter let through
        page = await query(stub, token, limit=3, page_token=token_)
        paged += [r.record.sequence for r in page]
        token_ = page[-1].next_page_token if page else ""
        if not token_:
            break
    assert paged == [r.record.sequence for r in readable]

    assert models_of(await query(stub, token, model="simple")) == ["simple"] * 10
    denied = await refusal(query(stub, token, model="mtcars"))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "'mtcars'" in (denied.details() or "")
    verify = await refusal(stub.Verify(audit_pb2.VerifyRequest(), timeout=10, metadata=bearer(token)))
    assert verify.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs audit:read on '*'" in (verify.details() or "")


async def test_a_role_with_audit_read_on_everything_reads_and_verifies(stub: Any, grants: Grants) -> None:
    role = unique("auditors")
    token, _ = await grants.key(unique("carol"), role)
    await grants.rule(["*"], role=role)
    assert len(await query(stub, token, limit=1000)) == N + len(LOOKALIKES)
    response = await stub.Verify(audit_pb2.VerifyRequest(), timeout=10, metadata=bearer(token))
    assert response.ok and response.records_checked == N + len(LOOKALIKES)


async def test_following_ends_when_the_key_is_revoked(keyed: AuditService, stub: Any, grants: Grants) -> None:
    assert keyed.store is not None
    principal = unique("tailer")
    token, key_id = await grants.key(principal)
    await grants.rule(["mtcars"], principal=principal)
    call = stub.Query(audit_pb2.QueryRequest(limit=2, follow=True), metadata=bearer(token))
    got: list[str] = []

    async def read(n: int) -> None:
        async for response in call:
            got.append(response.record.event.model)
            if len(got) == n:
                return

    await asyncio.wait_for(read(2), 5)
    more = [Incoming(encode(make_event(i)), "s") for i in range(100, 106)]
    await asyncio.to_thread(keyed.store.ingest, more)
    await asyncio.wait_for(read(4), 5)
    assert got == ["mtcars"] * 4

    await grants.revoke(key_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(read(100), 3)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_dev_mode_with_etcd_lets_anonymous_read_but_keys_follow_their_rules(
        nats_server: NatsServer, sqlite_url: str, etcd: EtcdServer) -> None:
    settings_ = audit_settings(nats_server.url, sqlite_url, etcd_endpoint=etcd.endpoint, dev_mode=True)
    async with (started(settings_) as service, granting(etcd, service) as grants,
                grpc.aio.insecure_channel(service.address) as channel):
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        assert len(await query(stub, limit=1000)) == N + len(LOOKALIKES)
        assert (await stub.Verify(audit_pb2.VerifyRequest(), timeout=10)).ok
        token, _ = await grants.key(unique("keyed"))
        error = await refusal(query(stub, token))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_without_etcd_every_call_is_refused(nats_server: NatsServer, sqlite_url: str) -> None:
    async with (started(audit_settings(nats_server.url, sqlite_url, dev_mode=False)) as service,
                grpc.aio.insecure_channel(service.address) as channel):
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        for call in (query(stub), query(stub, "ms_0123456789abcdef_" + "x" * 43, model="iris"),
                     stub.Verify(audit_pb2.VerifyRequest(), timeout=10)):
            error = await refusal(call)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--etcd-endpoint" in (error.details() or "")


_NAMES = st.text(alphabet="abAB%_\\[]!-.", max_size=6)
_PATTERNS = st.text(alphabet="abAB%_\\[]!*?-", max_size=6)


@settings(max_examples=500, deadline=None)
@given(pattern=_PATTERNS, name=_NAMES)
def test_the_sql_filter_lets_through_every_name_a_pattern_matches(pattern: str, name: str) -> None:
    if fnmatch.fnmatchcase(name, pattern):
        with sqlite3.connect(":memory:") as conn:
            assert conn.execute("SELECT ? LIKE ? ESCAPE '\\'", (name, like_pattern(pattern))).fetchone()[0] == 1
