"""AuditService over gRPC: Query filters, pagination, follow, bad filters, Verify."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc
from meshserve.services.audit.server import AuditService
from meshserve.services.audit.store import Incoming

from .helpers import BASE_NANOS, encode, make_event

N = 30


@pytest.fixture
async def stub(service: AuditService) -> AsyncIterator[Any]:
    assert service.store is not None
    events = [Incoming(encode(make_event(i)), "s") for i in range(N)]
    await asyncio.to_thread(service.store.ingest, events)
    async with grpc.aio.insecure_channel(service.address) as ch:
        yield audit_pb2_grpc.AuditServiceStub(ch)


async def query(stub: Any, **fields: Any) -> list[audit_pb2.QueryResponse]:
    return [r async for r in stub.Query(audit_pb2.QueryRequest(**fields), timeout=10)]


def seqs(responses: list[audit_pb2.QueryResponse]) -> list[int]:
    return [r.record.sequence for r in responses]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, list(range(1, N + 1))),
        ({"model": "iris"}, [i + 1 for i in range(N) if i % 3 == 0]),
        ({"version": "2"}, [i + 1 for i in range(N) if i % 2 == 1]),
        ({"principal": "user0", "model": "mtcars"}, [i + 1 for i in range(N) if i % 2 == 0 and i % 3 == 1]),
        ({"status": "NOT_FOUND"}, [i + 1 for i in range(N) if i % 5 == 4]),
        ({"status": "ok"}, [i + 1 for i in range(N) if i % 5 != 4]),
        ({"since_unix_nanos": BASE_NANOS + 10 * 10**9, "until_unix_nanos": BASE_NANOS + 13 * 10**9}, [11, 12, 13]),
        ({"request_id": "req-7"}, [8]),
        ({"model": "nope"}, []),
    ],
)
async def test_filters(stub: Any, fields: dict[str, Any], expected: list[int]) -> None:
    assert seqs(await query(stub, **fields)) == expected


async def test_records_carry_the_event_and_its_link(stub: Any) -> None:
    (response,) = await query(stub, request_id="req-3")
    record = response.record
    assert record.event.model == "iris" and record.event.request_id == "req-3"
    assert len(record.hash) == 64 and len(record.prev_hash) == 64 and record.stored_unix_nanos > 0


async def test_pagination_walks_everything_once(stub: Any) -> None:
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await query(stub, limit=7, page_token=token)
        seen += seqs(page)
        pages += 1
        token = page[-1].next_page_token
        assert all(not r.next_page_token for r in page[:-1])
        if not token:
            break
    assert seen == list(range(1, N + 1)) and pages == 5
    assert len(await query(stub)) == N  # default limit 100


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"status": "SORT_OF_OK"}, "unknown status 'SORT_OF_OK'"),
        ({"limit": -1}, "limit must be positive"),
        ({"limit": 10_001}, "over the maximum 10000"),
        ({"page_token": "not-a-token!"}, "page_token 'not-a-token!' is malformed"),
        ({"page_token": "c2VxOi01"}, "is malformed"),
        ({"since_unix_nanos": 20, "until_unix_nanos": 10}, "since (20) is after until (10)"),
    ],
)
async def test_bad_filters_are_invalid_argument(stub: Any, fields: dict[str, Any], words: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await query(stub, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")


async def test_follow_sends_the_newest_then_new_records(stub: Any, service: AuditService) -> None:
    assert service.store is not None
    call = stub.Query(audit_pb2.QueryRequest(model="iris", limit=2, follow=True))
    got: list[int] = []

    async def read(n: int) -> None:
        async for response in call:
            got.append(response.record.sequence)
            if len(got) == n:
                return

    await asyncio.wait_for(read(2), 5)
    assert got == [25, 28]
    more = [Incoming(encode(make_event(i)), "s") for i in range(N, N + 6)]
    await asyncio.to_thread(service.store.ingest, more)
    await asyncio.wait_for(read(4), 5)
    assert got == [25, 28, 31, 34]
    call.cancel()


async def test_verify_over_grpc(stub: Any) -> None:
    response = await stub.Verify(audit_pb2.VerifyRequest(), timeout=10)
    assert response.ok and response.records_checked == N and len(response.head_hash) == 64
    assert response.first_bad_sequence == 0 and not response.problem
