"""The router's registry cache keeps following etcd whatever it is sent (real etcd)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from typing import Any

import aetcd

from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.cache import RegistryCache
from meshserve.registry.etcd import connect


def placement(model: str, runtime_id: str, version: str = "1") -> bytes:
    return pb.Placement(model=model, version=version, runtime_id=runtime_id, address=f"{runtime_id}:1",
                        state=pb.MODEL_STATE_READY).SerializeToString()


async def eventually(check: Callable[[], bool], within_s: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_unreadable_records_do_not_stop_the_watch(private_etcd: EtcdServer) -> None:
    other = await connect(private_etcd.endpoint)
    cache = RegistryCache(private_etcd.endpoint)
    await cache.start(wait=5)
    try:
        await other.put(keys.PLACEMENTS.encode() + b"\xff\xfe/1/x", b"junk")  # not UTF-8, not protobuf
        await other.put(keys.placement_key("odd", "\u00b2", "rt-odd"), placement("odd", "rt-odd", "\u00b2"))
        await other.put(keys.placement_key("iris", "1", "rt-1"), placement("iris", "rt-1"))
        await eventually(lambda: "iris" in cache.models)
        assert cache._task is not None and not cache._task.done()
    finally:
        await cache.stop()
        await other.close()


async def test_a_reset_etcd_history_is_noticed_even_if_a_probe_fails(private_etcd: EtcdServer) -> None:
    other = await connect(private_etcd.endpoint)
    for i in range(50):
        await other.put(f"/unrelated/{i}".encode(), b"x")  # push the revision well past a fresh store's
    await other.put(keys.placement_key("old", "1", "rt-old"), placement("old", "rt-old"))
    await other.close()
    cache = RegistryCache(private_etcd.endpoint)
    await cache.start(wait=5)
    assert cache._client is not None
    real_get_prefix = cache._client.get_prefix
    fail_probe = asyncio.Event()

    async def get_prefix(prefix: bytes, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("keys_only") and fail_probe.is_set():
            fail_probe.clear()
            raise aetcd.ConnectionFailedError("injected: etcd not answering this call yet")
        return await real_get_prefix(prefix, *args, **kwargs)

    cache._client.get_prefix = get_prefix
    try:
        private_etcd.stop()
        shutil.rmtree(private_etcd.data_dir / "etcd")  # etcd comes back empty (restored, or a new member)
        await asyncio.to_thread(private_etcd.start)
        fail_probe.set()
        other = await connect(private_etcd.endpoint)
        await other.put(keys.placement_key("new", "1", "rt-new"), placement("new", "rt-new"))
        await eventually(lambda: "new" in cache.models and "old" not in cache.models)
        await other.close()
    finally:
        await cache.stop()
