"""Delivering call events to JetStream without ever making a call wait for the broker.

Events go to JetStream with their event id as ``Nats-Msg-Id``, and count as delivered
once JetStream acknowledges them. What the broker does not acknowledge in time (it is
down, or the connection dropped) goes to the on-disk spool, which a background task
replays once the broker is back; JetStream's duplicate window drops any event that was
in fact stored before its ack was lost. Only a full spool loses events: they are
counted and logged, and strict callers are refused instead (see ``publish_durably``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from meshserve.audit.spool import Spool, SpoolFull, read_segment
from meshserve.audit.stream import SUBJECT, ensure_stream
from meshserve.errors import Unavailable
from meshserve.protos.meshserve.audit.v1 import audit_pb2

log = logging.getLogger(__name__)

Event = tuple[str, bytes]  # (event id, serialized CallEvent)


class EventPublisher:
    def __init__(self, nats_url: str, spool: Spool, *, ack_timeout_s: float = 2.0) -> None:
        self.nats_url = nats_url
        self.spool = spool
        self.ack_timeout_s = ack_timeout_s
        self.published = 0
        self.spooled = 0
        self.dropped = 0
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
        if self.spool.sealed_segments():
            log.info("audit spool holds %d bytes from before: replaying once the broker answers", self.spool.size)
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
        failed = await self._send(events) if self.connected else list(events)
        if failed:
            self._to_spool(failed, sync=False)

    async def publish_durably(self, event: Event) -> None:
        """Deliver one event, or spool it on disk (fsync); Unavailable if neither is possible."""
        if self.connected and not await self._send([event]):
            return
        try:
            self.spool.append([event[1]], sync=True)
        except (SpoolFull, OSError) as e:
            raise Unavailable(f"the audit event could not be durably queued: the broker at {self.nats_url} "
                              f"is unreachable and {e}") from e
        self.spooled += 1
        self._replay_wanted.set()

    async def _send(self, events: Sequence[Event]) -> list[Event]:
        """Publish and wait for acks; return the events that were not acknowledged."""
        assert self._js is not None
        futures: list[asyncio.Future[Any]] = []
        try:
            for event_id, data in events:
                futures.append(await self._js.publish_async(SUBJECT, data, headers={"Nats-Msg-Id": event_id},
                                                            wait_stall=self.ack_timeout_s))
        except Exception as e:  # noqa: BLE001 - any broker trouble means: spool the rest
            log.debug("audit publish failed: %s", e)
        if futures:
            await asyncio.wait(futures, timeout=self.ack_timeout_s)
        failed = []
        for i, event in enumerate(events):
            future = futures[i] if i < len(futures) else None
            if future is None or not future.done() or future.cancelled() or future.exception() is not None:
                if future is not None and not future.done():
                    future.cancel()
                failed.append(event)
        self.published += len(events) - len(failed)
        return failed

    def _to_spool(self, events: Sequence[Event], *, sync: bool) -> None:
        try:
            self.spool.append([data for _, data in events], sync=sync)
            self.spooled += len(events)
        except (SpoolFull, OSError) as e:
            self.dropped += len(events)
            log.error("LOST %d audit events (%d so far): %s", len(events), self.dropped, e)
            return
        self._replay_wanted.set()

    # -- background tasks ----------------------------------------------------------------

    async def _connect_forever(self) -> None:
        delay = 0.2
        while self._nc is None:
            try:
                nc = await nats.connect(self.nats_url, allow_reconnect=True, max_reconnect_attempts=-1,
                                        reconnect_time_wait=0.5, connect_timeout=2,
                                        reconnected_cb=self._on_reconnect, disconnected_cb=self._on_disconnect,
                                        error_cb=self._on_error)
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
        events = [(audit_pb2.CallEvent.FromString(data).event_id, data) for data in read_segment(segment)]
        for start in range(0, len(events), 500):
            if await self._send(events[start:start + 500]):
                return False
        self.spool.remove(segment)
        log.info("replayed %d spooled audit events from %s", len(events), segment.name)
        return True
