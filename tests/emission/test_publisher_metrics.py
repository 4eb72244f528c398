"""The publisher's counts behind the router's audit metrics, through an outage of a real NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshserve.audit.publisher import Event, EventPublisher, batches
from meshserve.audit.spool import Spool
from meshserve.local.nats import NatsServer
from meshserve.protos.meshserve.audit.v1 import audit_pb2


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


def events(n: int) -> list[Event]:
    made = [audit_pb2.CallEvent(event_id=uuid.uuid4().hex, model="iris") for _ in range(n)]
    return [(e.event_id, e.SerializeToString()) for e in made]


async def until(check: Callable[[], bool], within_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_events_are_counted_through_an_outage(broker: NatsServer, tmp_path: Path) -> None:
    publisher = EventPublisher(broker.url, Spool(tmp_path / "spool", 1 << 20), ack_timeout_s=1.0)
    await publisher.start()
    try:
        await until(lambda: publisher.connected)
        await publisher.publish(events(5))
        assert (publisher.events_published, publisher.events_spooled, publisher.spool_events) == (5, 0, 0)
        await asyncio.to_thread(broker.stop)
        await until(lambda: not publisher.connected)
        await publisher.publish(events(20))
        await publisher.publish_durably(events(1)[0])
        assert (publisher.events_published, publisher.events_spooled, publisher.spool_events) == (5, 21, 21)
        await asyncio.to_thread(broker.start)
        await until(lambda: publisher.spool_events == 0)
        assert (publisher.events_published, publisher.events_spooled, publisher.dropped) == (26, 21, 0)
        assert publisher.spool.size == 0
    finally:
        await publisher.stop()


async def test_a_spool_left_by_an_earlier_run_is_counted_at_start(broker: NatsServer, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    Spool(spool_dir, 1 << 20).append([data for _, data in batches(events(7))], sync=True)
    publisher = EventPublisher("nats://127.0.0.1:1", Spool(spool_dir, 1 << 20))  # no broker there
    await publisher.start()
    try:
        assert publisher.spool_events == 7
    finally:
        await publisher.stop()


async def test_events_a_full_spool_cannot_take_are_counted_as_dropped(tmp_path: Path) -> None:
    publisher = EventPublisher("nats://127.0.0.1:1", Spool(tmp_path / "spool", 64))  # no broker, tiny spool
    await publisher.start()
    try:
        await publisher.publish(events(3))
        assert (publisher.dropped, publisher.events_spooled, publisher.spool_events) == (3, 0, 0)
    finally:
        await publisher.stop()
