"""Delivering call events to JetStream without ever making a call wait for the broker.

Events travel in batches (``CallEventBatch``, one JetStream message each, its batch id
as ``Nats-Msg-Id``) and count as delivered once JetStream acknowledges the batch. What
the broker does not acknowledge in time (it is down, or the connection dropped) goes to
the on-disk spool, which a background task replays once the broker is back; JetStream's
duplicate window drops a batch that was in fact stored before its ack was lost, and the
audit service skips events it already holds. Only a full spool loses events: they are
counted and logged, and strict callers are refused instead (see ``publish_durably``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshserve.audit.spool import Spool, SpoolFull, fsync_file, read_segment
from meshserve.audit.stream import BATCH_SUBJECT, ensure_stream
from meshserve.errors import Unavailable
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.tls import MeshTls, nats_options

log = logging.getLogger(__name__)

Event = tuple[str, bytes]  # (event id, serialized CallEvent)
Batch = tuple[str, bytes]  # (batch id, serialized CallEventBatch)

# Batches stay under NATS's default 1 MiB message limit.
MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 900 * 1024


def batches(events: Sequence[Event]) -> list[Batch]:
    """Group events into batches of bounded count and size (an oversized event travels alone)."""
    out: list[Batch] = []
    current: list[bytes] = []
    size = 0

    def close() -> None:
        batch = audit_pb2.CallEventBatch(batch_id=uuid.uuid4().hex, events=current)
        out.append((batch.batch_id, batch.SerializeToString()))

    for _, data in events:
        if current and (len(current) >= MAX_BATCH_EVENTS or size + len(data) > MAX_BATCH_BYTES):
            close()
            current, size = [], 0
        current.append(data)
        size += len(data)
    if current:
        close()
    return out


def _events(batch: bytes) -> int:
    """How many events a serialized CallEventBatch holds."""
    return len(audit_pb2.CallEventBatch.FromString(batch).events)


class EventPublisher:
    def __init__(self, nats_url: str, spool: Spool, *, ack_timeout_s: float = 2.0,
                 mesh_tls: MeshTls | None = None, sync_spool: bool = False) -> None:
        self.nats_url = nats_url
        self.mesh_tls = mesh_tls  # for a tls:// URL
        self.spool = spool
        self.ack_timeout_s = ack_timeout_s
        # fsync what ``publish`` spools: the router's journal, which deletes a call once its
        # event is spooled, fsyncs its own records.
        self.sync_spool = sync_spool
        # Counted in batches (published, spooled) and in events (dropped and the rest, for metrics).
        self.published = 0
        self.spooled = 0
        self.dropped = 0
        self.events_published = 0
        self.events_spooled = 0
        self.spool_events = 0  # events in the spool now (those left by an earlier run are counted at start)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._replay_wanted = asyncio.Event()
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self._js is not None and self._nc is not None and self._nc.is_connected

    def can_queue_durably(self) -> bool:
        return self.connected or self.spool.has_room(64 * 1024)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connect_forever(), name="audit-connect"),
                       asyncio.create_task(self._replay_forever(), name="audit-replay")]
        if segments := self.spool.sealed_segments():
            log.info("audit spool holds %d bytes from before: replaying once the broker answers", self.spool.size)
            self.spool_events = sum(_events(data) for segment in segments for data in read_segment(segment))
            self._replay_wanted.set()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self.spool.close()

    # -- publishing --------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> None:
        """Deliver events to JetStream, or to the spool; never raises."""
        grouped = batches(events)
        failed = await self._send(grouped) if self.connected else grouped
        unacked = len(events) if len(failed) == len(grouped) else sum(_events(data) for _, data in failed)
        self.events_published += len(events) - unacked
        if failed:
            await self._to_spool(failed, unacked)

    async def publish_durably(self, event: Event) -> None:
        """Deliver one event, or spool it on disk (fsync); Unavailable if neither is possible."""
        grouped = batches([event])
        if self.connected and not await self._send(grouped):
            self.events_published += 1
            return
        try:
            self.spool.append([data for _, data in grouped], sync=True)
        except (SpoolFull, OSError) as e:
            raise Unavailable(f"the audit event could not be durably queued: the broker at {self.nats_url} "
                              f"is unreachable and {e}") from e
        self.spooled += 1
        self.events_spooled += 1
        self.spool_events += 1
        self._replay_wanted.set()

    async def _send(self, grouped: Sequence[Batch]) -> list[Batch]:
        """Publish batches and wait for their acks; return the batches not acknowledged."""
        assert self._js is not None
        futures: list[asyncio.Future[Any]] = []
        try:
            for batch_id, data in grouped:
                futures.append(await self._js.publish_async(
                    BATCH_SUBJECT, data, headers={"Nats-Msg-Id": batch_id}, wait_stall=self.ack_timeout_s))
        except Exception as e:  # noqa: BLE001 - any broker trouble means: spool the rest
            log.debug("audit publish failed: %s", e)
        if futures:
            await asyncio.wait(futures, timeout=self.ack_timeout_s)
        failed = []
        for i, batch in enumerate(grouped):
            future = futures[i] if i < len(futures) else None
            if future is None or not future.done() or future.cancelled() or future.exception() is not None:
                if future is not None and not future.done():
                    future.cancel()
                failed.append(batch)
        self.published += len(grouped) - len(failed)
        return failed

    async def _to_spool(self, grouped: Sequence[Batch], events: int) -> None:
        try:
            segment = self.spool.append([data for _, data in grouped])
            self.spooled += len(grouped)
            self.events_spooled += events
            self.spool_events += events
        except (SpoolFull, OSError) as e:
            self.dropped += events
            log.error("LOST %d audit events (%d so far): %s", events, self.dropped, e)
            return
        self._replay_wanted.set()
        if self.sync_spool:  # in a thread: an fsync must not stall the calls in flight
            try:
                await asyncio.to_thread(fsync_file, segment)
            except FileNotFoundError:
                pass  # replayed and removed meanwhile
            except OSError as e:
                log.error("could not fsync the audit spool's %s: %s", segment.name, e)

    # -- background tasks ----------------------------------------------------------------

    async def _connect_forever(self) -> None:
        delay = 0.2
        while self._nc is None:
            try:
                nc = await nats.connect(self.nats_url, allow_reconnect=True, max_reconnect_attempts=-1,
                                        reconnect_time_wait=0.5, connect_timeout=2,
                                        reconnected_cb=self._on_reconnect, disconnected_cb=self._on_disconnect,
                                        error_cb=self._on_error, **nats_options(self.nats_url, self.mesh_tls))
                js = nc.jetstream()
                await ensure_stream(js)
                self._nc, self._js = nc, js
                log.info("audit events go to JetStream at %s", self.nats_url)
                self._replay_wanted.set()
            except Exception as e:  # noqa: BLE001 - keep trying; events spool meanwhile
                log.warning("audit broker at %s unreachable (%s); spooling events", self.nats_url, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_reconnect(self) -> None:
        log.info("audit broker at %s is back", self.nats_url)
        if self._js is not None:
            with contextlib.suppress(Exception):
                await ensure_stream(self._js)
        self._replay_wanted.set()

    async def _on_disconnect(self) -> None:
        if self._stopping:
            return
        log.warning("lost the audit broker at %s; spooling events until it is back", self.nats_url)

    async def _on_error(self, error: Exception) -> None:
        log.debug("audit broker connection: %s", error)

    async def _replay_forever(self) -> None:
        while True:
            await self._replay_wanted.wait()
            self._replay_wanted.clear()
            while self.connected:
                segments = self.spool.sealed_segments()
                if not segments:
                    break
                try:
                    if not await self._replay(segments[0]):
                        await asyncio.sleep(1.0)  # not all acknowledged: try again shortly
                except Exception:
                    log.exception("replaying the audit spool failed")
                    await asyncio.sleep(1.0)
            if self.spool.size and not self.connected:
                await asyncio.sleep(0.5)
                self._replay_wanted.set()

    async def _replay(self, segment: Path) -> bool:
        parsed = [(audit_pb2.CallEventBatch.FromString(data), data) for data in read_segment(segment)]
        grouped = [(batch.batch_id, data) for batch, data in parsed]
        for start in range(0, len(grouped), 100):
            if await self._send(grouped[start:start + 100]):
                return False
        self.spool.remove(segment)
        events = sum(len(batch.events) for batch, _ in parsed)
        self.events_published += events
        self.spool_events = max(0, self.spool_events - events)
        log.info("replayed %d spooled audit batches from %s", len(grouped), segment.name)
        return True
