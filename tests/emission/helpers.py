"""What the publisher tests share: call events to publish, and waiting for a condition."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import nats

from meshserve.audit.publisher import Event
from meshserve.audit.stream import STREAM
from meshserve.protos.meshserve.audit.v1 import audit_pb2


def events(n: int) -> list[Event]:
    """``n`` distinct iris call events, as the router queues them (id, serialized event)."""
    made = [audit_pb2.CallEvent(event_id=uuid.uuid4().hex, model="iris") for _ in range(n)]
    return [(e.event_id, e.SerializeToString(deterministic=True)) for e in made]


async def until(check: Callable[[], bool], within_s: float = 15.0) -> None:
    """Wait until ``check()`` holds, failing the test after ``within_s``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def stored_events(url: str) -> list[audit_pb2.CallEvent]:
    """Every call event in the audit stream of the broker at ``url``, in order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        stored = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(STREAM, seq)
            batch = audit_pb2.CallEventBatch.FromString(message.data)
            stored += [audit_pb2.CallEvent.FromString(event) for event in batch.events]
        return stored
    finally:
        await nc.close()
