"""Call events reach JetStream, or wait in the spool until the broker is back (real NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshserve.audit.publisher import EventPublisher, batches
from meshserve.audit.spool import Spool
from meshserve.errors import Unavailable
from meshserve.local.nats import NatsServer

from .helpers import events, stored_events, until


async def stored_ids(url: str) -> list[str]:
    return [event.event_id for event in await stored_events(url)]


@pytest.fixture
async def publisher(broker: NatsServer, tmp_path: Path) -> AsyncIterator[EventPublisher]:
    publisher = EventPublisher(broker.url, Spool(tmp_path / "spool", 1 << 20), ack_timeout_s=1.0)
    await publisher.start()
    await until(lambda: publisher.connected)
    yield publisher
    await publisher.stop()


async def test_events_are_stored_once_each(publisher: EventPublisher, broker: NatsServer) -> None:
    sent = events(50)
    await publisher.publish(sent)
    assert await stored_ids(broker.url) == [event_id for event_id, _ in sent]
    assert publisher.published == 1  # one batch


async def test_an_outage_spools_and_the_return_replays(publisher: EventPublisher, broker: NatsServer) -> None:
    before, during = events(5), events(20)
    await publisher.publish(before)
    await asyncio.to_thread(broker.stop)
    await until(lambda: not publisher.connected)
    await publisher.publish(during)  # returns at once: the events go to disk
    assert publisher.spooled == 1 and publisher.spool.size > 0  # one batch, on disk
    await asyncio.to_thread(broker.start)
    await until(lambda: publisher.spool.size == 0, within_s=15)
    assert await stored_ids(broker.url) == [event_id for event_id, _ in before + during]


async def test_a_restarted_router_replays_what_it_spooled(broker: NatsServer, tmp_path: Path) -> None:
    spool_dir = tmp_path / "router-spool"
    spooled = events(7)
    Spool(spool_dir, 1 << 20).append([data for _, data in batches(spooled)], sync=True)  # left by a killed router
    publisher = EventPublisher(broker.url, Spool(spool_dir, 1 << 20))
    await publisher.start()
    try:
        await until(lambda: publisher.spool.size == 0, within_s=15)
        assert await stored_ids(broker.url) == [event_id for event_id, _ in spooled]
    finally:
        await publisher.stop()


async def test_durable_publishing_refuses_when_nothing_can_keep_the_event(tmp_path: Path) -> None:
    publisher = EventPublisher("nats://127.0.0.1:1", Spool(tmp_path / "spool", 10))  # no broker, tiny spool
    await publisher.start()
    try:
        assert not publisher.can_queue_durably()
        with pytest.raises(Unavailable, match="could not be durably queued"):
            await publisher.publish_durably(events(1)[0])
    finally:
        await publisher.stop()
