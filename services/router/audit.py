"""Turning every call the router sees into a CallEvent, off the call's path.

The per-call path only notes what it learnt (a :class:`Call`, as a JournalRecord) and
appends it with the request and response bytes to the call journal
(:mod:`meshserve.audit.journal`) before the answer leaves; a background task builds the
events (parsing the messages, computing digests, applying the model's policy), gives
them to the publisher in batches, and marks their journal records done once JetStream
acknowledged them or the spool took them. A router that dies meanwhile finds the
records in its journal when it starts again and publishes their events then. Models
whose policy is ``strict`` instead wait, before their answer goes back, until their
event is acknowledged by the broker or fsynced to the spool, and are refused when
neither is possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf.message import DecodeError

from meshserve.audit.digest import TensorData, request_tensors, response_tensors, side_digest
from meshserve.audit.journal import Journal, Segment
from meshserve.audit.publisher import Event, EventPublisher
from meshserve.auth.access import ANONYMOUS
from meshserve.errors import Unavailable
from meshserve.names import is_request_id
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.registry.cache import Replica
from meshserve.tracing import OFF, Tracing, current_trace_id

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
BUILD_CHUNK = 4  # events built between two yields to the loop: bounds the wait of a call arriving meanwhile
LARGE_EVENT_BYTES = 256 * 1024
_NO_POLICY = audit_pb2.AuditPolicy()


class Call:
    """What the router learns about one call while routing it (traced with the router's ``tracing``)."""

    __slots__ = ("method", "model", "parent_request_id", "principal", "replica", "request_id", "requested_version",
                 "resolved_version", "shadow", "start_ns", "trace_id", "trusted")

    def __init__(self, method: str, tracing: Tracing = OFF) -> None:
        self.method = method
        self.start_ns = time.time_ns()
        self.model = ""
        self.requested_version = ""
        self.resolved_version = ""
        self.replica: Replica | None = None
        self.shadow = False  # a mirrored call whose answer only the audit trail sees
        self.request_id = ""  # set by the router when it gave the call an id (a pipeline)
        self.parent_request_id = ""  # a pipeline step: the pipeline call's request id
        self.principal = ANONYMOUS  # who called, once authenticated
        self.trusted = False  # made by the router itself (pipeline steps, shadows): no access check
        # With tracing on: the trace the call is part of (its span is current while it is routed).
        self.trace_id = current_trace_id() if tracing.active else ""


JournalRecord = audit_pb2.JournalRecord
# A call waiting for its event: what was journaled, the request and response, and the
# journal segment holding it (None when the journal is off or could not take it).
Pending = tuple[JournalRecord, bytes, bytes, Segment | None]


def journal_record(call: Call, code: grpc.StatusCode, message: str, peer: str, metadata: Metadata,
                   router_id: str) -> JournalRecord:
    """What the event of a finished call is built from (its request and response aside), with its event id."""
    replica = call.replica
    record = JournalRecord(event_id=os.urandom(16).hex(), router_id=router_id, method=call.method, model=call.model,
                           principal=call.principal.name, peer=peer, start_unix_nanos=call.start_ns,
                           end_unix_nanos=time.time_ns(), status_code=code.value[0])
    # Most of these are empty on most calls: setting only the others is cheaper.
    if call.requested_version:
        record.requested_version = call.requested_version
    if call.resolved_version:
        record.resolved_version = call.resolved_version
    if replica is not None:
        record.runtime_kind, record.runtime_id = replica.kind, replica.runtime_id
    if call.request_id:
        record.request_id = call.request_id
    if call.parent_request_id:
        record.parent_request_id = call.parent_request_id
    if call.shadow:
        record.shadow = True
    if call.trace_id:
        record.trace_id = call.trace_id
    if message:
        record.status_message = message
    for key, value in metadata:
        record.metadata.add(key=key, value=value.encode() if isinstance(value, str) else value)
    return record


def _metadata_value(record: JournalRecord, key: str) -> str:
    for entry in record.metadata:
        if entry.key == key:
            return entry.value.decode(errors="replace")
    return ""


def _trace_id(record: JournalRecord) -> str:
    parts = _metadata_value(record, "traceparent").split("-")  # W3C: version-traceid-spanid-flags
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


class CallAudit:
    """Journals, builds and hands over call events; a no-op when the router has no broker configured."""

    def __init__(self, publisher: EventPublisher | None, policies: Mapping[str, audit_pb2.AuditPolicy],
                 router_id: str, capture_max_bytes: int, flush_s: float = 0.05,
                 journal: Journal | None = None) -> None:
        self.publisher = publisher
        self.journal = journal if publisher is not None else None
        self.flush_s = flush_s
        self.policies = policies
        self.router_id = router_id
        self.capture_max_bytes = capture_max_bytes
        self.journal_failures = 0  # calls the journal could not take (their events wait in memory only)
        self._pending: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._journaling: set[asyncio.Task[None]] = set()  # large calls being journaled in a thread

    @property
    def enabled(self) -> bool:
        return self.publisher is not None

    def strict(self, model: str) -> bool:
        policy = self.policies.get(model)
        return policy is not None and policy.strict

    def precheck(self, model: str) -> None:
        """Refuse a strict model's call up front when its event could not be kept."""
        if self.publisher is not None and self.strict(model) and not self.publisher.can_queue_durably():
            raise Unavailable(f"model {model!r} requires a durable audit trail, and the audit broker at "
                              f"{self.publisher.nats_url} is unreachable while the router's audit spool is full")

    def record(self, call: Call, request: bytes, response: bytes | None, code: grpc.StatusCode, message: str,
               peer: str, metadata: Metadata) -> asyncio.Future[None] | None:
        """Note a finished call: in the journal when this returns, its event built and published in the background.

        Returns what must be awaited before the call's answer leaves, if anything: the fsync
        of its record (journal policy ``always``), or the journaling of a large call, done in
        a thread so the loop goes on serving meanwhile. The call is journaled whether or not
        that is awaited.
        """
        if self.publisher is None:
            return None
        record = journal_record(call, code, message, peer, metadata, self.router_id)
        response = response or b""
        journal = self.journal
        if journal is None:
            self._queue((record, request, response, None))
            return None
        if len(request) + len(response) > LARGE_EVENT_BYTES:
            task = asyncio.ensure_future(self._journal_large(journal, record, request, response))
            self._journaling.add(task)
            task.add_done_callback(self._journaling.discard)
            return asyncio.shield(task)  # a caller that leaves does not cut the journaling short
        try:
            segment, ticket = journal.append(record.SerializeToString(), request, response)
        except OSError as e:
            self._journal_failed(e)
            segment = None
        self._queue((record, request, response, segment))
        return journal.synced(ticket) if segment is not None and journal.always else None

    async def _journal_large(self, journal: Journal, record: JournalRecord, request: bytes, response: bytes) -> None:
        try:
            segment, ticket = await asyncio.to_thread(journal.append, record.SerializeToString(), request, response)
        except OSError as e:
            self._journal_failed(e)
            self._queue((record, request, response, None))
            return
        self._queue((record, request, response, segment))
        if journal.always and (synced := journal.synced(ticket)) is not None:
            await synced

    def _journal_failed(self, error: OSError) -> None:
        self.journal_failures += 1
        if self.journal_failures == 1 or self.journal_failures % 1000 == 0:
            log.error("the audit journal could not take a call (%d so far; their events wait in memory only, "
                      "a crash would lose them): %s", self.journal_failures, error)

    def _queue(self, item: Pending) -> None:
        self._pending.append(item)
        self._wake.set()

    async def record_durably(self, call: Call, request: bytes, response: bytes | None, code: grpc.StatusCode,
                             message: str, peer: str, metadata: Metadata) -> None:
        """Build the event now and return once it is durably queued (Unavailable otherwise)."""
        if self.publisher is None:
            return
        record = journal_record(call, code, message, peer, metadata, self.router_id)
        event = self.build(record, request, response or b"")
        await self.publisher.publish_durably((event.event_id, event.SerializeToString(deterministic=True)))

    # -- background ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start publishing; the calls a dead router left in the journal are published first."""
        if self.publisher is None:
            return
        if self.journal is not None:
            for segment, record in self.journal.open():
                self._queue((record, record.request, record.response, segment))
            self.journal.start()
        await self.publisher.start()
        self._worker = asyncio.create_task(self._work(), name="audit-events")

    async def stop(self) -> None:
        """Publish (or spool) everything noted so far, then stop."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self.publisher is not None:
            if self._journaling:
                await asyncio.wait(self._journaling)
            taken: list[Segment | None] = []
            await self.publisher.publish(self._drain(taken))
            self._done(taken)
            await self.publisher.stop()
        if self.journal is not None:
            await self.journal.close()  # the calls of a batch cut short stay in it, for the next start

    async def _work(self) -> None:
        assert self.publisher is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_s)  # let the calls of the next few milliseconds join the batch
            self._wake.clear()
            events: list[Event] = []
            taken: list[Segment | None] = []
            while self._pending:
                if self._large(self._pending[0]):
                    # Hashing megabytes in a thread (hashlib lets go of the GIL) keeps the loop serving.
                    events += await asyncio.to_thread(self._drain, taken, 1)
                else:
                    events += self._drain(taken, BUILD_CHUNK, small_only=True)
                await asyncio.sleep(0)  # building is CPU work: let calls in flight go on between chunks
            if events:
                await self.publisher.publish(events)  # acknowledged or spooled when it returns
            self._done(taken)

    def _done(self, taken: list[Segment | None]) -> None:
        """The journal records of these calls are done: their events were delivered (or could not be built)."""
        if self.journal is not None:
            for segment in taken:
                if segment is not None:
                    self.journal.done(segment)

    @staticmethod
    def _large(item: Pending) -> bool:
        return len(item[1]) + len(item[2]) > LARGE_EVENT_BYTES

    def _drain(self, taken: list[Segment | None], most: int | None = None, small_only: bool = False) -> list[Event]:
        """Build the events of up to ``most`` pending calls; their journal segments go to ``taken``."""
        events: list[Event] = []
        while self._pending and (most is None or len(events) < most):
            if small_only and self._large(self._pending[0]):
                break
            record, request, response, segment = self._pending.popleft()
            taken.append(segment)
            try:
                event = self.build(record, request, response)
            except Exception:
                log.exception("could not build the audit event of a call to %r", record.model)
                continue
            events.append((event.event_id, event.SerializeToString(deterministic=True)))
        return events

    # -- events ----------------------------------------------------------------------------

    def build(self, record: JournalRecord, request: bytes, response: bytes) -> audit_pb2.CallEvent:
        """The event of a call, from its journal record (its event id included) and its messages."""
        event = audit_pb2.CallEvent(
            event_id=record.event_id, trace_id=record.trace_id or _trace_id(record),
            principal=record.principal, peer=record.peer,
            model=record.model, requested_version=record.requested_version, resolved_version=record.resolved_version,
            runtime_kind=record.runtime_kind, runtime_id=record.runtime_id,
            start_unix_nanos=record.start_unix_nanos,
            duration_nanos=record.end_unix_nanos - record.start_unix_nanos,
            status_code=record.status_code, status_message=record.status_message, input_bytes=len(request),
            output_bytes=len(response), method=record.method, router_id=record.router_id or self.router_id,
            shadow=record.shadow,
        )
        policy = self.policies.get(record.model, _NO_POLICY)
        with contextlib.suppress(DecodeError):
            parsed = oip.ModelInferRequest.FromString(request)
            event.request_id = parsed.id
            inputs = request_tensors(parsed)
            event.input_digest = side_digest(inputs)
            event.inputs.extend(self._records(inputs, policy, policy.redact_inputs))
        if response:
            with contextlib.suppress(DecodeError):
                outputs = response_tensors(self._infer_response(record.method, response, event))
                event.output_digest = side_digest(outputs)
                event.outputs.extend(self._records(outputs, policy, ()))
        request_id = record.request_id or event.request_id or _metadata_value(record, "x-request-id")
        # A refused id is not stored: the event's own id stands in (the status message shows it escaped).
        event.request_id = request_id if request_id and is_request_id(request_id) else event.event_id
        if record.shadow:  # the mirrored request is the caller's: link the shadow to it
            event.parent_request_id = event.request_id
        elif record.parent_request_id:
            event.parent_request_id = record.parent_request_id
        return event

    @staticmethod
    def _infer_response(method: str, response: bytes, event: audit_pb2.CallEvent) -> oip.ModelInferResponse:
        if method != "ModelStreamInfer":
            return oip.ModelInferResponse.FromString(response)
        streamed = oip.ModelStreamInferResponse.FromString(response)
        if streamed.error_message:
            event.status_code = grpc.StatusCode.UNKNOWN.value[0]
            event.status_message = streamed.error_message
        return streamed.infer_response

    def _records(self, tensors: Sequence[TensorData], policy: audit_pb2.AuditPolicy,
                 redact: Sequence[str]) -> list[audit_pb2.TensorRecord]:
        cap = policy.max_payload_bytes or self.capture_max_bytes
        records = []
        for t in tensors:
            record = audit_pb2.TensorRecord(name=t.name, datatype=t.datatype, shape=t.shape, digest=t.digest)
            if policy.capture_payloads:
                if t.name in redact:
                    record.redacted = True
                elif len(t.data) > cap:
                    record.truncated = True
                else:
                    record.data = t.data
            records.append(record)
        return records
