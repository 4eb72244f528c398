"""The publisher's counts behind the router's audit metrics, through an outage of a real NATS."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshserve.audit.publisher import EventPublisher, batches
from meshserve.audit.spool import Spool
from meshserve.local.nats import NatsServer

from .helpers import events, until


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
