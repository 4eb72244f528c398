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
from meshserve.registry.etcd_token import EtcdCredentials

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Registration:
    """Keeps one runtime and its placements in etcd for as long as the runtime lives."""

    def __init__(self, endpoint: str, runtime: pb.Runtime, *, ttl: int = 5,
                 credentials: EtcdCredentials | None = None) -> None:
        self.credentials = credentials
        self.endpoint = endpoint
        self.runtime = runtime
        self.ttl = ttl
        self._client: aetcd.Client | None = None
        self._lease: aetcd.Lease | None = None
        self._placements: dict[tuple[str, str], pb.Placement] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # A write failed: the keep-alive task puts everything back once etcd answers.
        self._dirty = False

    async def start(self, *, wait: float = 10.0) -> None:
        self._client = await connect(self.endpoint, wait=wait, credentials=self.credentials)
        async with self._lock:
            await self._register_all()
        self._keeper = asyncio.create_task(self._keep_alive(), name="registry-keepalive")
        log.info("registered runtime %s (%s) at %s in etcd %s with a %d s lease",
                 self.runtime.id, self.runtime.kind, self.runtime.address, self.endpoint, self.ttl)

    async def publish(self, placement: pb.Placement) -> None:
        """Write (or overwrite) one placement of this runtime.

        If etcd does not take it now, the keep-alive task writes it once etcd answers.
        """
        placement.runtime_id = self.runtime.id
        placement.runtime_kind = self.runtime.kind
        placement.address = self.runtime.address
        placement.link_address = self.runtime.link_address
        placement.updated_at_unix_ms = now_ms()
        async with self._lock:
            self._placements[(placement.model, placement.version)] = placement
            if self._client is not None and self._lease is not None:
                try:
                    await self._put_placement(self._lease, placement)
                except (aetcd.ClientError, TimeoutError):
                    self._dirty = True

    async def withdraw(self, model: str, version: str) -> None:
        async with self._lock:
            self._placements.pop((model, version), None)
            if self._client is not None:
                try:
                    await self._client.delete(keys.placement_key(model, version, self.runtime.id))
                except (aetcd.ClientError, TimeoutError):
                    self._dirty = True

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

    def _expected(self) -> dict[bytes, bytes]:
        """Every key this runtime should have in etcd, with its value."""
        records = {keys.runtime_key(self.runtime.id): self.runtime.SerializeToString()}
        for (model, version), placement in self._placements.items():
            records[keys.placement_key(model, version, self.runtime.id)] = placement.SerializeToString()
        return records

    async def _put_placement(self, lease: aetcd.Lease, placement: pb.Placement) -> None:
        assert self._client is not None
        key = keys.placement_key(placement.model, placement.version, self.runtime.id)
        await self._client.put(key, placement.SerializeToString(), lease=lease)

    async def _register_all(self) -> None:
        """Write every record under a new lease; the lease is ours only once all are written."""
        assert self._client is not None
        lease = await self._client.lease(self.ttl)
        try:
            for key, value in self._expected().items():
                await self._client.put(key, value, lease=lease)
        except BaseException:
            with contextlib.suppress(Exception):
                await lease.revoke()
            raise
        self._lease = lease
        self._dirty = False

    async def _reconcile(self) -> None:
        """After a failed write: put every record again and delete what should be gone."""
        assert self._client is not None and self._lease is not None
        expected = self._expected()
        info = await self._client.get_lease_info(self._lease.id, keys=True)
        for key in info.keys:
            if key not in expected:
                await self._client.delete(key)
        for key, value in expected.items():
            await self._client.put(key, value, lease=self._lease)
        self._dirty = False

    async def _keep_alive(self) -> None:
        interval = max(self.ttl / 3, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._lock:
                    await self._refresh(interval * 2)
            except (aetcd.ClientError, TimeoutError) as e:
                log.warning("etcd at %s unreachable, keeping the last registration: %s", self.endpoint, e)
            except Exception:
                log.exception("registry keep-alive of runtime %s failed; retrying", self.runtime.id)

    async def _refresh(self, timeout_s: float) -> None:
        if self._lease is None:
            await self._register_all()
            return
        reply = await asyncio.wait_for(self._lease.refresh(), timeout_s)
        if reply is None or reply.TTL <= 0:
            log.warning("lease of runtime %s expired: registering again", self.runtime.id)
            self._lease = None
            await self._register_all()
        elif self._dirty:
            await self._reconcile()
