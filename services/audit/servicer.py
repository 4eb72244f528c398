"""AuditService over gRPC: translates requests and records; the store does the work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from meshserve.errors import MeshError, grpc_errors
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

from .query import Filter, encode_page_token, parse_request
from .store import Store, StoredRecord

log = logging.getLogger(__name__)

FOLLOW_POLL_S = 0.2
FOLLOW_CHUNK = 1000


def to_record(stored: StoredRecord) -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(
        sequence=stored.sequence, event=audit_pb2.CallEvent.FromString(stored.event), hash=stored.hash,
        prev_hash=stored.prev_hash, stored_unix_nanos=stored.stored_unix_nanos,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Query and Verify over the store."""

    def __init__(self, store: Store, poll_s: float = FOLLOW_POLL_S) -> None:
        self.store = store
        self.poll_s = poll_s

    async def Query(
        self, request: audit_pb2.QueryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[audit_pb2.QueryResponse]:
        # An async generator (not context.write), so tracing instrumentation can wrap it.
        try:
            flt, after, limit = parse_request(request)
        except MeshError as e:
            await context.abort(e.code, e.message)
            return
        if not request.follow:
            async for response in self._page(flt, after, limit):
                yield response
            return
        async for response in self._follow(flt, after, limit, resume=bool(request.page_token)):
            yield response

    async def _page(self, flt: Filter, after: int, limit: int) -> AsyncIterator[audit_pb2.QueryResponse]:
        rows = await asyncio.to_thread(self.store.query, flt, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        for i, row in enumerate(rows):
            token = encode_page_token(row.sequence) if more and i == len(rows) - 1 else ""
            yield audit_pb2.QueryResponse(record=to_record(row), next_page_token=token)

    async def _follow(self, flt: Filter, after: int, limit: int,
                      resume: bool) -> AsyncIterator[audit_pb2.QueryResponse]:
        """The newest ``limit`` matches (or everything after a page token), then each new one as it is stored."""
        cursor = after
        if not resume:
            cursor, _ = await asyncio.to_thread(self.store.head)
            for row in await asyncio.to_thread(self.store.query, flt, 0, limit, upto=cursor, newest=True):
                yield audit_pb2.QueryResponse(record=to_record(row))
        while True:
            head, _ = await asyncio.to_thread(self.store.head)
            rows = await asyncio.to_thread(self.store.query, flt, cursor, FOLLOW_CHUNK, upto=head)
            for row in rows:
                yield audit_pb2.QueryResponse(record=to_record(row))
            if len(rows) == FOLLOW_CHUNK:
                cursor = rows[-1].sequence
                continue
            cursor = max(cursor, head)
            await asyncio.sleep(self.poll_s)

    @grpc_errors
    async def Verify(
        self, request: audit_pb2.VerifyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.VerifyResponse:
        verdict = await asyncio.to_thread(self.store.verify)
        if not verdict.ok:
            log.warning("audit trail verification failed at record %d: %s", verdict.first_bad_sequence,
                        verdict.problem)
        return audit_pb2.VerifyResponse(
            ok=verdict.ok, records_checked=verdict.records_checked, first_bad_sequence=verdict.first_bad_sequence,
            problem=verdict.problem, head_hash=verdict.head_hash,
        )
