"""A runtime's registration survives lost leases and failed writes (real etcd)."""

from __future__ import annotations

import asyncio
from typing import Any

import aetcd

from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.etcd import connect
from meshserve.registry.registration import Registration


async def eventually(check: Any, within_s: float = 6.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not await check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.1)


def fail_next_puts(registration: Registration, count: int) -> None:
    """Make the registration's next ``count`` etcd puts fail, as in a leader election."""
    client = registration._client
    assert client is not None
    real_put = client.put
    left = {"n": count}

    async def flaky_put(*args: Any, **kwargs: Any) -> Any:
        if left["n"]:
            left["n"] -= 1
            raise aetcd.ConnectionTimeoutError("injected etcd timeout")
        return await real_put(*args, **kwargs)

    client.put = flaky_put


async def test_a_lost_lease_whose_renewal_fails_once_is_registered_again(private_etcd: EtcdServer) -> None:
    reg = Registration(private_etcd.endpoint, pb.Runtime(id="rt-1", kind="python", address="127.0.0.1:1"), ttl=2)
    await reg.publish(pb.Placement(model="iris", version="1", state=pb.MODEL_STATE_READY))
    await reg.start(wait=5)
    other = await connect(private_etcd.endpoint)
    try:
        fail_next_puts(reg, 1)
        assert reg._lease is not None
        await other.revoke_lease(reg._lease.id)  # the lease is lost, as after a long etcd outage

        async def back() -> bool:
            return (await other.get(keys.runtime_key("rt-1")) is not None
                    and await other.get(keys.placement_key("iris", "1", "rt-1")) is not None)
        await eventually(back)
    finally:
        await reg.stop()
        await other.close()


async def test_a_failed_withdraw_is_repaired_by_the_keep_alive(private_etcd: EtcdServer) -> None:
    reg = Registration(private_etcd.endpoint, pb.Runtime(id="rt-2", kind="python", address="127.0.0.1:1"), ttl=2)
    await reg.publish(pb.Placement(model="iris", version="1", state=pb.MODEL_STATE_READY))
    await reg.publish(pb.Placement(model="iris", version="2", state=pb.MODEL_STATE_READY))
    await reg.start(wait=5)
    other = await connect(private_etcd.endpoint)
    try:
        client = reg._client
        assert client is not None
        real_delete = client.delete

        async def failing_delete(*args: Any, **kwargs: Any) -> Any:
            client.delete = real_delete
            raise aetcd.ConnectionTimeoutError("injected etcd timeout")

        client.delete = failing_delete
        await reg.withdraw("iris", "1")  # the delete is lost; the record would stay READY

        async def gone() -> bool:
            return await other.get(keys.placement_key("iris", "1", "rt-2")) is None
        await eventually(gone)
        assert await other.get(keys.placement_key("iris", "2", "rt-2")) is not None
    finally:
        await reg.stop()
        await other.close()
