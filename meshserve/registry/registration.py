"""A process's presence in the registry: its records under one lease, for as long as it lives.

A :class:`Presence` grants a lease, writes its records under it, and refreshes the lease
from its own keep-alive task (aetcd's refresh is one-shot). If the lease is lost (etcd
was unreachable for longer than the TTL, or was wiped), it grants a new one and writes
everything again, so the process reappears on its own once etcd is back. Stopping
revokes the lease: the records leave at once; a process that dies leaves with its lease.
A router's presence is one record (see ``keys.router_key``); a runtime's
:class:`Registration` is its runtime record and every placement.
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
from meshserve.tls import MeshTls

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Presence:
    """Keeps ``records`` (key to value) in etcd under one lease for as long as their owner lives.

    ``name`` says whose they are in log lines ("router r-1 at 127.0.0.1:8001").
    """

    def __init__(self, endpoint: str, name: str, records: dict[bytes, bytes] | None = None, *,
                 ttl: int = 5, mesh_tls: MeshTls | None = None, credentials: EtcdCredentials | None = None) -> None:
        self.credentials = credentials
        self.endpoint = endpoint
        self._mesh_tls = mesh_tls  # for an https:// etcd
        self.name = name
        self.records = dict(records or {})
        self.ttl = ttl
        self._client: aetcd.Client | None = None
        self._lease: aetcd.Lease | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # A write failed: the keep-alive task puts everything back once etcd answers.
        self._dirty = False

    async def start(self, *, wait: float = 10.0) -> None:
        self._client = await connect(self.endpoint, mesh_tls=self._mesh_tls, wait=wait, credentials=self.credentials)
        async with self._lock:
            await self._register_all()
        self._keeper = asyncio.create_task(self._keep_alive(), name="registry-keepalive")
        log.info("registered %s in etcd %s with a %d s lease", self.name, self.endpoint, self.ttl)

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
        """Every key this presence should have in etcd, with its value."""
        return dict(self.records)

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
                log.exception("registry keep-alive of %s failed; retrying", self.name)

    async def _refresh(self, timeout_s: float) -> None:
        if self._lease is None:
            await self._register_all()
            return
        reply = await asyncio.wait_for(self._lease.refresh(), timeout_s)
        if reply is None or reply.TTL <= 0:
            log.warning("lease of %s expired: registering again", self.name)
            self._lease = None
            await self._register_all()
        elif self._dirty:
            await self._reconcile()


class Registration(Presence):
    """Keeps one runtime and its placements in etcd for as long as the runtime lives."""

    def __init__(self, endpoint: str, runtime: pb.Runtime, *, ttl: int = 5, mesh_tls: MeshTls | None = None,
                 credentials: EtcdCredentials | None = None) -> None:
        super().__init__(endpoint, f"runtime {runtime.id} ({runtime.kind}) at {runtime.address}", ttl=ttl,
                         mesh_tls=mesh_tls, credentials=credentials)
        self.runtime = runtime
        self._placements: dict[tuple[str, str], pb.Placement] = {}

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

    def _expected(self) -> dict[bytes, bytes]:
        records = {keys.runtime_key(self.runtime.id): self.runtime.SerializeToString()}
        for (model, version), placement in self._placements.items():
            records[keys.placement_key(model, version, self.runtime.id)] = placement.SerializeToString()
        return records

    async def _put_placement(self, lease: aetcd.Lease, placement: pb.Placement) -> None:
        assert self._client is not None
        key = keys.placement_key(placement.model, placement.version, self.runtime.id)
        await self._client.put(key, placement.SerializeToString(), lease=lease)
