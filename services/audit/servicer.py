"""AuditService over gRPC: translates requests and records; the store does the work."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc

from meshserve.errors import as_mesh_error, grpc_errors
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

from .access import AuditAccess, Reader
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
    """Query and Verify over the store, for callers allowed audit:read."""

    def __init__(self, store: Store, access: AuditAccess, poll_s: float = FOLLOW_POLL_S) -> None:
        self.store = store
        self.access = access
        self.poll_s = poll_s
        self.component = "the audit service"  # who failed, in internal errors

    async def Query(
        self, request: audit_pb2.QueryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[audit_pb2.QueryResponse]:
        # An async generator (not context.write), so tracing instrumentation can wrap it.
        authorize = functools.partial(self.access.reader, context.invocation_metadata() or (), request.model)
        try:
            reader = authorize()
            flt, after, limit = parse_request(request)
            if not request.follow:
                async for response in self._page(reader, flt, after, limit):
                    yield response
                return
            async for response in self._follow(authorize, flt, after, limit, resume=bool(request.page_token)):
                yield response
        except Exception as caught:  # noqa: BLE001 - a MeshError, or a bug logged under an error id
            error = as_mesh_error(caught, self.component)
            await context.abort(error.code, error.message)

    async def _readable(self, reader: Reader, flt: Filter, after: int, limit: int, *, upto: int | None = None,
                        newest: bool = False) -> list[StoredRecord]:
        """Up to ``limit`` matching records the reader may see: the oldest after ``after`` or the newest up to ``upto``.

        The SQL filter on the reader's model patterns may let through a few records it may
        not see (see ``like_pattern``); those are dropped here and more are read in their place.
        """
        flt = replace(flt, readable=reader.patterns)
        kept: list[StoredRecord] = []
        while True:
            rows = await asyncio.to_thread(self.store.query, flt, after, limit, upto=upto, newest=newest)
            visible = [row for row in rows if reader.may_read(row.model)]
            kept = visible + kept if newest else kept + visible
            if len(rows) < limit or len(kept) >= limit:
                return kept[-limit:] if newest else kept[:limit]
            if newest:
                upto = rows[0].sequence - 1
            else:
                after = rows[-1].sequence

    async def _page(self, reader: Reader, flt: Filter, after: int,
                    limit: int) -> AsyncIterator[audit_pb2.QueryResponse]:
        rows = await self._readable(reader, flt, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        for i, row in enumerate(rows):
            token = encode_page_token(row.sequence) if more and i == len(rows) - 1 else ""
            yield audit_pb2.QueryResponse(record=to_record(row), next_page_token=token)

    async def _follow(self, authorize: Callable[[], Reader], flt: Filter, after: int, limit: int,
                      resume: bool) -> AsyncIterator[audit_pb2.QueryResponse]:
        """The newest ``limit`` matches (or everything after a page token), then each new one as it is stored.

        The caller is authorized again before each poll, so a revoked key or rule ends the stream.
        """
        cursor = after
        if not resume:
            cursor, _ = await asyncio.to_thread(self.store.head)
            for row in await self._readable(authorize(), flt, 0, limit, upto=cursor, newest=True):
                yield audit_pb2.QueryResponse(record=to_record(row))
        while True:
            reader = authorize()
            head, _ = await asyncio.to_thread(self.store.head)
            rows = await asyncio.to_thread(self.store.query, replace(flt, readable=reader.patterns), cursor,
                                           FOLLOW_CHUNK, upto=head)
            for row in rows:
                if reader.may_read(row.model):
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
        self.access.verifier(context.invocation_metadata() or ())
        verdict = await asyncio.to_thread(self.store.verify)
        if not verdict.ok:
            log.warning("audit trail verification failed at record %d: %s", verdict.first_bad_sequence,
                        verdict.problem)
        return audit_pb2.VerifyResponse(
            ok=verdict.ok, records_checked=verdict.records_checked, first_bad_sequence=verdict.first_bad_sequence,
            problem=verdict.problem, head_hash=verdict.head_hash,
        )
