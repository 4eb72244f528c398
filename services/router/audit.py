"""Turning every call the router sees into a CallEvent, off the call's path.

The per-call path only notes what it learnt (a :class:`Call`) and hands it over with
the request and response bytes; a background task builds the events (parsing the
messages, computing digests, applying the model's policy) and gives them to the
publisher in batches. Models whose policy is ``strict`` instead wait, before their
answer goes back, until their event is acknowledged by the broker or fsynced to the
spool, and are refused when neither is possible.
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

from meshserve import tracing
from meshserve.audit.digest import TensorData, request_tensors, response_tensors, side_digest
from meshserve.audit.publisher import Event, EventPublisher
from meshserve.auth.access import ANONYMOUS
from meshserve.errors import Unavailable
from meshserve.names import is_request_id
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.registry.cache import Replica

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
BUILD_CHUNK = 4  # events built between two yields to the loop: bounds the wait of a call arriving meanwhile
LARGE_EVENT_BYTES = 256 * 1024
_NO_POLICY = audit_pb2.AuditPolicy()


class Call:
    """What the router learns about one call while routing it."""

    __slots__ = ("method", "model", "parent_request_id", "principal", "replica", "request_id", "requested_version",
                 "resolved_version", "shadow", "start_ns", "trace_id", "trusted")

    def __init__(self, method: str) -> None:
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
        self.trace_id = tracing.current_trace_id() if tracing.active else ""


def _metadata_value(metadata: Metadata, key: str) -> str:
    for k, v in metadata:
        if k == key and isinstance(v, str):
            return v
    return ""


def _trace_id(metadata: Metadata) -> str:
    parts = _metadata_value(metadata, "traceparent").split("-")  # W3C: version-traceid-spanid-flags
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


class CallAudit:
    """Builds and hands over call events; a no-op when the router has no broker configured."""

    def __init__(self, publisher: EventPublisher | None, policies: Mapping[str, audit_pb2.AuditPolicy],
                 router_id: str, capture_max_bytes: int, flush_s: float = 0.05) -> None:
        self.publisher = publisher
        self.flush_s = flush_s
        self.policies = policies
        self.router_id = router_id
        self.capture_max_bytes = capture_max_bytes
        self._pending: deque[tuple[Call, bytes, bytes | None, grpc.StatusCode, str, str, Metadata, int]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

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
               peer: str, metadata: Metadata) -> None:
        """Note a finished call; its event is built and published in the background."""
        if self.publisher is None:
            return
        self._pending.append((call, request, response, code, message, peer, metadata, time.time_ns()))
        self._wake.set()

    async def record_durably(self, call: Call, request: bytes, response: bytes | None, code: grpc.StatusCode,
                             message: str, peer: str, metadata: Metadata) -> None:
        """Build the event now and return once it is durably queued (Unavailable otherwise)."""
        if self.publisher is None:
            return
        event = self.build(call, request, response, code, message, peer, metadata, time.time_ns())
        await self.publisher.publish_durably((event.event_id, event.SerializeToString(deterministic=True)))

    # -- background ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.publisher is not None:
            await self.publisher.start()
            self._worker = asyncio.create_task(self._work(), name="audit-events")

    async def stop(self) -> None:
        """Publish (or spool) everything noted so far, then stop."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self.publisher is not None:
            await self.publisher.publish(self._drain())
            await self.publisher.stop()

    async def _work(self) -> None:
        assert self.publisher is not None
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_s)  # let the calls of the next few milliseconds join the batch
            self._wake.clear()
            events: list[Event] = []
            while self._pending:
                if self._large(self._pending[0]):
                    # Hashing megabytes in a thread (hashlib lets go of the GIL) keeps the loop serving.
                    events += await asyncio.to_thread(self._drain, 1)
                else:
                    events += self._drain(BUILD_CHUNK, small_only=True)
                await asyncio.sleep(0)  # building is CPU work: let calls in flight go on between chunks
            if events:
                await self.publisher.publish(events)

    @staticmethod
    def _large(item: tuple[Call, bytes, bytes | None, grpc.StatusCode, str, str, Metadata, int]) -> bool:
        return len(item[1]) + len(item[2] or b"") > LARGE_EVENT_BYTES

    def _drain(self, most: int | None = None, small_only: bool = False) -> list[Event]:
        events: list[Event] = []
        while self._pending and (most is None or len(events) < most):
            if small_only and self._large(self._pending[0]):
                break
            item = self._pending.popleft()
            try:
                event = self.build(*item)
            except Exception:
                log.exception("could not build the audit event of a call to %r", item[0].model)
                continue
            events.append((event.event_id, event.SerializeToString(deterministic=True)))
        return events

    # -- events ----------------------------------------------------------------------------

    def build(self, call: Call, request: bytes, response: bytes | None, code: grpc.StatusCode, message: str,
              peer: str, metadata: Metadata, end_ns: int) -> audit_pb2.CallEvent:
        replica = call.replica
        event = audit_pb2.CallEvent(
            event_id=os.urandom(16).hex(), trace_id=call.trace_id or _trace_id(metadata),
            principal=call.principal.name, peer=peer,
            model=call.model, requested_version=call.requested_version, resolved_version=call.resolved_version,
            runtime_kind=replica.kind if replica else "", runtime_id=replica.runtime_id if replica else "",
            start_unix_nanos=call.start_ns, duration_nanos=end_ns - call.start_ns,
            status_code=code.value[0], status_message=message, input_bytes=len(request),
            output_bytes=len(response) if response else 0, method=call.method, router_id=self.router_id,
            shadow=call.shadow,
        )
        policy = self.policies.get(call.model, _NO_POLICY)
        with contextlib.suppress(DecodeError):
            parsed = oip.ModelInferRequest.FromString(request)
            event.request_id = parsed.id
            inputs = request_tensors(parsed)
            event.input_digest = side_digest(inputs)
            event.inputs.extend(self._records(inputs, policy, policy.redact_inputs))
        if response:
            with contextlib.suppress(DecodeError):
                outputs = response_tensors(self._infer_response(call, response, event))
                event.output_digest = side_digest(outputs)
                event.outputs.extend(self._records(outputs, policy, ()))
        request_id = call.request_id or event.request_id or _metadata_value(metadata, "x-request-id")
        # A refused id is not stored: the event's own id stands in (the status message shows it escaped).
        event.request_id = request_id if request_id and is_request_id(request_id) else event.event_id
        if call.shadow:  # the mirrored request is the caller's: link the shadow to it
            event.parent_request_id = event.request_id
        elif call.parent_request_id:
            event.parent_request_id = call.parent_request_id
        return event

    @staticmethod
    def _infer_response(call: Call, response: bytes, event: audit_pb2.CallEvent) -> oip.ModelInferResponse:
        if call.method != "ModelStreamInfer":
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
