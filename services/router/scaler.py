"""More copies of a hot catalog model as its load rises, fewer as it falls.

Runtimes publish each copy's calls per second in its placement (see
``RuntimeServer._report_load``), so every router sees a model's whole load, whichever
routers carry it. One router at a time scales: the one holding the leader key in etcd
(``/meshserve/v1/leader/scaler``, under a short lease it keeps alive; another router
takes over when it dies). Every ``interval_s`` the leader compares, for each catalog
version, its total calls per second with ``target_calls_per_s`` per copy:

- wanting more copies than it has (and none loading), it loads one more, on a runtime of
  the version's kind that holds none, with the most free memory;
- wanting fewer for ``down_after_s`` in a row, it unloads the least busy copy, never the
  last one (idle unloading takes the last copy away, see the runtime's ``idle_unload_s``).

One copy is added or removed per version per round, so a burst adds copies step by step
and a lull removes them slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Coroutine
from typing import Any

import aetcd

from meshserve.errors import MeshError
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.cache import RegistryCache

from .metrics import RouterMetrics
from .placement import Placer

log = logging.getLogger(__name__)

LEADER_KEY = b"/meshserve/v1/leader/scaler"
LEADER_TTL_S = 10


class Scaler:
    """Runs in every router; acts only while its router holds the leader key."""

    def __init__(self, cache: RegistryCache, placer: Placer, *, target_calls_per_s: float, down_after_s: float,
                 interval_s: float, metrics: RouterMetrics | None = None) -> None:
        self.cache = cache
        self.placer = placer
        self.metrics = metrics if metrics is not None else placer.metrics
        self.target = target_calls_per_s
        self.down_after_s = down_after_s
        self.interval_s = interval_s
        self.name = f"{socket.gethostname()}-{id(self):x}"
        self._lease: aetcd.Lease | None = None
        self._below_since: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        """Whether this router holds the scaler's leader key (as of its last round)."""
        return self._lease is not None

    def start(self) -> None:
        if self.target > 0:
            self._task = asyncio.create_task(self._run(), name="scaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.revoke()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if await self._lead():
                    await self.round()
            except (aetcd.ClientError, TimeoutError) as e:
                log.warning("scaler: etcd unreachable (%s); trying again", e)
                self._lease = None
            except Exception:  # keep scaling in later rounds
                log.exception("scaler round failed")

    async def _lead(self) -> bool:
        """Whether this router leads now: keep its lease alive, or try to take the key."""
        if self._lease is not None:
            reply = await self._lease.refresh()
            if reply is not None and reply.TTL > 0:
                return True
            self._lease = None
        client = self.cache.client
        lease = await client.lease(LEADER_TTL_S)
        tx = client.transactions
        won, _ = await client.transaction(compare=[tx.version(LEADER_KEY) == 0],
                                          success=[tx.put(LEADER_KEY, self.name.encode(), lease=lease)], failure=[])
        if won:
            log.info("this router now scales catalog models (%g calls/s per copy)", self.target)
            self._lease = lease
            return True
        await lease.revoke()
        return False

    async def round(self) -> None:
        """One look at every catalog version: add or remove at most one copy of each."""
        now = time.monotonic()
        for model, entry in list(self.cache.catalog.items()):
            for version in list(entry.versions):
                held = self.placer.holders(model, version)
                if not held:
                    continue  # not placed: its first call places it
                key = (model, version)
                rate = sum(p.calls_per_s for p in held.values())
                want = max(1, math.ceil(rate / self.target))
                loading = any(p.state != pb.MODEL_STATE_READY for p in held.values())
                if want > len(held) and not loading and self.placer.can_add_copy(model, version):
                    self._below_since.pop(key, None)
                    log.info("%s version %s: %.0f calls/s on %d copies; adding one", model, version, rate, len(held))
                    if await self._act(self.placer.add_copy(model, version)):
                        self.metrics.copies_added.inc()
                elif want < len(held):
                    since = self._below_since.setdefault(key, now)
                    if now - since >= self.down_after_s:
                        quietest = min(held, key=lambda rid: held[rid].calls_per_s)
                        log.info("%s version %s: %.0f calls/s on %d copies; removing the copy on %s",
                                 model, version, rate, len(held), quietest)
                        self._below_since.pop(key, None)
                        if await self._act(self.placer.remove_copy(model, version, quietest)):
                            self.metrics.copies_removed.inc()
                else:
                    self._below_since.pop(key, None)

    @staticmethod
    async def _act(work: Coroutine[Any, Any, None]) -> bool:
        """Whether ``work`` was done (its failure is logged)."""
        try:
            await work
        except MeshError as e:
            log.warning("scaler: %s", e.message)
            return False
        return True
