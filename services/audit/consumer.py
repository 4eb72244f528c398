"""The durable JetStream consumer: fetch a batch, store it in one transaction, then ack it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import nats
from google.protobuf.message import DecodeError
from nats.js import api

from meshserve.audit.stream import BATCH_SUBJECT, STREAM, SUBJECTS, ensure_stream
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.tls import MeshTls, nats_options

from .metrics import AuditMetrics
from .settings import AuditSettings
from .store import Incoming, Store

log = logging.getLogger(__name__)

RETRY_S = 1.0
FETCH_TIMEOUT_S = 1.0


def unbatch(data: bytes, subject: str) -> list[Incoming]:
    """The events in one message: a router's batch, or a single event."""
    if subject != BATCH_SUBJECT:
        return [Incoming(data, subject)]
    try:
        batch = audit_pb2.CallEventBatch.FromString(data)
    except DecodeError:
        return [Incoming(data, subject)]  # not a batch: the store quarantines it
    return [Incoming(event, subject) for event in batch.events]


@dataclass
class ConsumerStats:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0


class Consumer:
    """Pulls call events from the audit stream into the store until stopped; rides out NATS outages."""

    def __init__(self, store: Store, settings: AuditSettings, metrics: AuditMetrics | None = None, *,
                 mesh_tls: MeshTls | None = None) -> None:
        self.store = store
        self.settings = settings
        self.mesh_tls = mesh_tls  # for a tls:// URL
        self.stats = ConsumerStats()
        self.metrics = metrics if metrics is not None else AuditMetrics()
        self.subscribed = asyncio.Event()
        self._nc: Any = None
        self._stopping = False
        self._reported_unreachable = False
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether the consumer holds a live connection to NATS."""
        nc = self._nc
        return nc is not None and bool(nc.is_connected)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-consumer")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def _run(self) -> None:
        # Checked as well as cancelling: nats-py can swallow a cancellation that races a fetch's timeout.
        while not self._stopping:
            try:
                if self._nc is None or self._nc.is_closed:
                    self._nc = await self._connect()
                sub = await self._subscribe()
                try:
                    await self._pump(sub)
                finally:
                    self.subscribed.clear()
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the consumer must keep going whatever NATS does
                log.warning("audit consumer interrupted (%s: %s); resubscribing in %.0f s", type(e).__name__, e,
                            RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _connect(self) -> Any:
        # With unlimited reconnect attempts nats-py keeps trying the first connection itself,
        # reporting each failure to error_cb; the loop covers any other way connect gives up.
        while True:
            try:
                nc = await nats.connect(
                    self.settings.nats_url, name="meshserve-audit", allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=RETRY_S, connect_timeout=2,
                    error_cb=self._nats_error, disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    **nats_options(self.settings.nats_url, self.mesh_tls),
                )
            except Exception as e:  # noqa: BLE001 - nats-py raises several types for "not reachable"
                await self._nats_error(e)
                await asyncio.sleep(RETRY_S)
                continue
            log.info("connected to NATS at %s", self.settings.nats_url)
            return nc

    async def _nats_error(self, e: Exception) -> None:
        if self._nc is None and not self._reported_unreachable:
            log.warning("NATS at %s is not reachable yet (%s); retrying every %.0f s in the background",
                        self.settings.nats_url, e or type(e).__name__, RETRY_S)
            self._reported_unreachable = True
        else:
            log.debug("NATS: %s", e)

    async def _disconnected(self) -> None:
        if self._stopping:
            return
        log.warning("lost NATS at %s; reconnecting (unacked events will be redelivered)", self.settings.nats_url)

    async def _reconnected(self) -> None:
        log.info("reconnected to NATS at %s", self.settings.nats_url)

    async def _subscribe(self) -> Any:
        js = self._nc.jetstream()
        await ensure_stream(js, max_age_s=self.settings.stream_max_age_s)
        config = api.ConsumerConfig(
            durable_name=self.settings.consumer, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_s, max_ack_pending=max(1000, 4 * self.settings.batch_size),
        )
        sub = await js.pull_subscribe(SUBJECTS, durable=self.settings.consumer, stream=STREAM, config=config)
        log.info("consuming %s as durable consumer %r", STREAM, self.settings.consumer)
        self.subscribed.set()
        return sub

    async def _pump(self, sub: Any) -> None:
        while not self._stopping:
            try:
                msgs = await sub.fetch(self.settings.batch_size, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                self.metrics.lag = 0  # nothing to deliver
                continue
            with contextlib.suppress(Exception):  # the pending count rides in the last message's reply subject
                self.metrics.lag = msgs[-1].metadata.num_pending
            batch = [incoming for m in msgs for incoming in unbatch(bytes(m.data), m.subject)]
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(self.store.ingest, batch)
            except Exception as e:  # noqa: BLE001 - a database hiccup must not lose the batch: redeliver it
                self.metrics.store_failures.inc()
                self.metrics.database_up = False
                log.error("cannot store %d events (%s: %s); they will be redelivered", len(msgs),
                          type(e).__name__, e)
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.nak(delay=RETRY_S)
                await asyncio.sleep(RETRY_S)
                continue
            # Acks only after the commit: a crash before this point means redelivery, and
            # the store skips what it already holds.
            self.metrics.batch_seconds.observe(time.monotonic() - started)
            self.metrics.database_up = True
            for m in msgs:
                await m.ack()
            self._count(result.stored, result.duplicates, result.quarantined)

    def _count(self, stored: int, duplicates: int, quarantined: list[tuple[str, str]]) -> None:
        self.stats.batches += 1
        self.stats.stored += stored
        self.stats.duplicates += duplicates
        self.stats.quarantined += len(quarantined)
        self.metrics.stored.inc(stored)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.quarantined.inc(len(quarantined))
        for subject, error in quarantined:
            log.warning("quarantined a malformed message on %s: %s (%d quarantined so far)", subject, error,
                        self.stats.quarantined)
        if duplicates:
            log.info("skipped %d events already stored", duplicates)
