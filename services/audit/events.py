"""Decoding call events and the queryable columns taken from them."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import DecodeError

from meshserve.protos.meshserve.audit.v1 import audit_pb2

# CallEvent fields copied into columns of their own, so queries can filter on them.
# Verify checks each against the value decoded from the record's stored bytes.
COLUMNS: tuple[str, ...] = (
    "event_id", "request_id", "trace_id", "principal", "peer", "model", "requested_version",
    "resolved_version", "runtime_kind", "runtime_id", "start_unix_nanos", "duration_nanos",
    "status_code", "status_message", "input_digest", "output_digest", "input_bytes", "output_bytes",
    "parent_request_id", "method", "router_id",
)
INTEGER_COLUMNS = frozenset({"start_unix_nanos", "duration_nanos", "status_code", "input_bytes", "output_bytes"})

STATUS_CODES: dict[str, int] = {code.name: int(code.value[0]) for code in grpc.StatusCode}
STATUS_NAMES: dict[int, str] = {number: name for name, number in STATUS_CODES.items()}


class BadEvent(ValueError):
    """Bytes on the stream that cannot be stored as a call event (they are quarantined)."""


def decode(data: bytes) -> audit_pb2.CallEvent:
    """The CallEvent in ``data``; :class:`BadEvent` saying why when it is not a storable one."""
    try:
        event = audit_pb2.CallEvent.FromString(data)
    except DecodeError as e:
        raise BadEvent(f"not a serialized CallEvent: {e}") from e
    if not event.event_id:
        raise BadEvent("the CallEvent has no event_id")
    for name in COLUMNS:
        value = getattr(event, name)
        if isinstance(value, str) and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise BadEvent(f"the CallEvent's {name} contains a NUL character")
    return event


def columns(event: audit_pb2.CallEvent) -> tuple[Any, ...]:
    """The event's values for :data:`COLUMNS`, in that order."""
    return tuple(getattr(event, name) for name in COLUMNS)


def status_name(code: int) -> str:
    return STATUS_NAMES.get(code, str(code))
