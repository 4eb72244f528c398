"""Routers see each other come and go through their records in etcd (real etcd)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.cache import RegistryCache
from meshserve.registry.registration import Presence


def router(endpoint: str, router_id: str, ttl: int = 2) -> Presence:
    record = pb.Router(id=router_id, address=f"127.0.0.1:{len(router_id)}")
    return Presence(endpoint, f"router {router_id}", {keys.router_key(router_id): record.SerializeToString()},
                    ttl=ttl)


async def until(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until ``check()`` holds (fails past ``within_s``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within_s, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_the_cache_follows_the_live_routers_and_says_when_they_change(private_etcd: EtcdServer) -> None:
    heard: list[set[str]] = []
    early = router(private_etcd.endpoint, "r-early")
    await early.start(wait=5)
    cache = RegistryCache(private_etcd.endpoint, on_routers=heard.append)
    await cache.start(wait=5)
    late, dying = router(private_etcd.endpoint, "r-late"), router(private_etcd.endpoint, "r-dying")
    try:
        assert heard == [{"r-early"}]  # from the snapshot
        assert cache.routers["r-early"].address == "127.0.0.1:7"
        await late.start(wait=5)
        await dying.start(wait=5)
        await until(lambda: heard[-1] == {"r-early", "r-late", "r-dying"}, 2)
        # A router that stops revokes its lease: the others hear at once.
        await late.stop()
        assert await until(lambda: heard[-1] == {"r-early", "r-dying"}, 2) < 1
        # One that dies (its keep-alive stops, nothing revoked) leaves with its lease.
        assert dying._keeper is not None
        dying._keeper.cancel()
        assert await until(lambda: heard[-1] == {"r-early"}, 6) < 2 + 2  # ttl, plus etcd's expiry sweep
        assert set(cache.routers) == {"r-early"}
    finally:
        await cache.stop()
        for presence in (early, late, dying):
            with contextlib.suppress(Exception):
                await presence.stop()
