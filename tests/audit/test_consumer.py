"""The JetStream consumer against real NATS: exactly-once storage, duplicates, quarantine, outages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest

from meshserve.audit.stream import SUBJECT
from meshserve.local.nats import NatsServer
from meshserve.services.audit.events import COLUMNS
from meshserve.services.audit.query import Filter
from meshserve.services.audit.server import AuditService
from meshserve.services.audit.store import Store

from .conftest import audit_settings
from .helpers import encode, eventually, make_event, publish


def stored(service: AuditService) -> Store:
    assert service.store is not None
    return service.store


async def count(service: AuditService, n: int) -> None:
    records = await asyncio.to_thread(stored(service).query, Filter(), 0, 10_000)
    assert len(records) == n, f"{len(records)} records, expected {n}"


async def test_n_events_give_exactly_n_records_with_the_right_columns(service: AuditService, js: Any,
                                                                     database_url: str) -> None:
    events = [make_event(i) for i in range(60)]
    await publish(js, events)
    await eventually(lambda: count(service, 60))
    records = stored(service).query(Filter(), 0, 100)
    assert [r.event for r in records] == [encode(e) for e in events]
    from .helpers import execute

    rows = execute(database_url, f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY sequence")
    assert rows == [tuple(getattr(e, c) for c in COLUMNS) for e in events]
    assert stored(service).verify().ok


async def test_the_same_event_under_two_message_ids_is_stored_once(service: AuditService, js: Any) -> None:
    events = [make_event(i) for i in range(5)]
    await publish(js, events)
    await eventually(lambda: count(service, 5))
    await publish(js, events[:3], msg_id_suffix="-replayed")  # JetStream's dedupe cannot catch these
    await publish(js, [make_event(99)])
    await eventually(lambda: count(service, 6))
    assert service.consumer is not None
    await eventually(lambda: _at_least(service.consumer.stats.duplicates, 3))
    await asyncio.sleep(0.3)
    await count(service, 6)


async def _at_least(value: int, n: int) -> None:
    assert value >= n


async def test_a_malformed_message_is_quarantined_and_the_consumer_keeps_going(service: AuditService,
                                                                              js: Any) -> None:
    await publish(js, [make_event(0)])
    await js.publish(SUBJECT, b"\x08\x96\x01\xff garbage", headers={"Nats-Msg-Id": "bad-1"})
    await js.publish(SUBJECT, encode(make_event(1, event_id="")), headers={"Nats-Msg-Id": "bad-2"})
    await publish(js, [make_event(i) for i in range(1, 4)])
    await eventually(lambda: count(service, 4))
    quarantined = stored(service).quarantined()
    assert len(quarantined) == 2
    assert quarantined[0].data == b"\x08\x96\x01\xff garbage" and quarantined[0].subject == SUBJECT
    assert service.consumer is not None and service.consumer.stats.quarantined == 2


async def test_the_service_starts_before_nats_and_catches_up(tmp_path: Path, sqlite_url: str) -> None:
    server = NatsServer(tmp_path / "nats", tmp_path / "nats.log")
    from meshserve.local.process import free_port

    server.port = free_port()
    service = AuditService(audit_settings(server.url, sqlite_url))
    await service.start()  # NATS is not up: the service serves anyway and keeps trying
    try:
        assert service.address
        await asyncio.sleep(0.5)
        server.start()
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            assert service.consumer is not None
            await asyncio.wait_for(service.consumer.subscribed.wait(), 10)
            await publish(js, [make_event(i) for i in range(10)])
            await eventually(lambda: count(service, 10))
        finally:
            await nc.close()
    finally:
        await service.stop()
        server.stop()


@pytest.mark.slow
async def test_a_nats_restart_loses_and_duplicates_nothing(tmp_path: Path, sqlite_url: str) -> None:
    server = NatsServer(tmp_path / "nats", tmp_path / "nats.log")
    server.start()
    service = AuditService(audit_settings(server.url, sqlite_url))
    await service.start()
    try:
        assert service.consumer is not None
        await asyncio.wait_for(service.consumer.subscribed.wait(), 10)
        nc = await nats.connect(server.url)
        await publish(nc.jetstream(), [make_event(i) for i in range(100)])
        await nc.close()
        await eventually(lambda: count(service, 100))
        server.stop()
        await asyncio.sleep(1.0)
        server.start()  # same port, same store: the stream and the durable consumer survive
        nc = await nats.connect(server.url)
        await publish(nc.jetstream(), [make_event(i) for i in range(100, 250)])
        await nc.close()
        await eventually(lambda: count(service, 250), within=20)
        assert stored(service).verify().ok
    finally:
        await service.stop()
        server.stop()
