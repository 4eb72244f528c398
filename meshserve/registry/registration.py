"""A runtime's presence in the registry: its record and placements under one lease.

A :class:`Registration` grants a lease, writes the runtime record and every placement
under it, and refreshes the lease from its own keep-alive task (aetcd's refresh is
one-shot). If the lease is lost (etcd was unreachable for longer than the TTL, or was
wiped), it grants a new one and writes everything again, so a runtime reappears on its
own once etcd is back. Stopping revokes the lease: the runtime leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aetcd

from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.etcd import connect

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Registration:
    """Keeps one runtime and its placements in etcd for as long as the runtime lives."""

    def __init__(self, endpoint: str, runtime: pb.Runtime, *, ttl: int = 5) -> None:
        self.endpoint = endpoint
        self.runtime = runtime
        self.ttl = ttl
        self._client: aetcd.Client | None = None
        self._lease: aetcd.Lease | None = None
        self._placements: dict[tuple[str, str], pb.Placement] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self, *, wait: float = 10.0) -> None:
        self._client = await connect(self.endpoint, wait=wait)
        async with self._lock:
            await self._register_all()
        self._keeper = asyncio.create_task(self._keep_alive(), name="registry-keepalive")
        log.info("registered runtime %s (%s) at %s in etcd %s with a %d s lease",
                 self.runtime.id, self.runtime.kind, self.runtime.address, self.endpoint, self.ttl)

    async def publish(self, placement: pb.Placement) -> None:
        """Write (or overwrite) one placement of this runtime."""
        placement.runtime_id = self.runtime.id
        placement.runtime_kind = self.runtime.kind
        placement.address = self.runtime.address
        placement.link_address = self.runtime.link_address
        placement.updated_at_unix_ms = now_ms()
        async with self._lock:
            self._placements[(placement.model, placement.version)] = placement
            if self._client is not None and self._lease is not None:
                with contextlib.suppress(aetcd.ClientError):
                    await self._put_placement(placement)

    async def withdraw(self, model: str, version: str) -> None:
        async with self._lock:
            self._placements.pop((model, version), None)
            if self._client is not None:
                with contextlib.suppress(aetcd.ClientError):
                    await self._client.delete(keys.placement_key(model, version, self.runtime.id))

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._client is not None:
            if self._lease is not None:
                with contextlib.suppress(aetcd.ClientError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._lease.revoke(), 2.0)
            await self._client.close()
            self._client = None

    async def _put_placement(self, placement: pb.Placement) -> None:
        assert self._client is not None and self._lease is not None
        key = keys.placement_key(placement.model, placement.version, self.runtime.id)
        await self._client.put(key, placement.SerializeToString(), lease=self._lease)

    async def _register_all(self) -> None:
        assert self._client is not None
        self._lease = await self._client.lease(self.ttl)
        await self._client.put(
            keys.runtime_key(self.runtime.id), self.runtime.SerializeToString(), lease=self._lease
        )
        for placement in self._placements.values():
            await self._put_placement(placement)

    async def _keep_alive(self) -> None:
        assert self._client is not None
        interval = max(self.ttl / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._lock:
                    assert self._lease is not None
                    reply = await asyncio.wait_for(self._lease.refresh(), interval * 2)
                    if reply is None or reply.TTL <= 0:
                        log.warning("lease of runtime %s expired: registering again", self.runtime.id)
                        await self._register_all()
            except (TimeoutError, aetcd.ClientError) as e:
                log.warning("etcd at %s unreachable, keeping the last registration: %s", self.endpoint, e)
