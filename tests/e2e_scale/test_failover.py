"""Replicas share the load of routers side by side; a replica killed under load costs no call.

The loads are bounded: 4 client threads, a few seconds each, every call with a 5 s deadline.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import IRIS_ROWS

from .conftest import LEASE_TTL_S, Replica
from .helpers import Load, listed_runtimes, whoami

pytestmark = pytest.mark.slow


def test_load_through_both_routers_is_shared_by_every_replica(
        routers: list[grpc.Channel], replicas: dict[str, Replica], iris_labels: np.ndarray) -> None:
    live = {r.pid: name for name, r in replicas.items() if r.process is None or r.process.alive()}
    assert len(live) == 3, "a replica is down: run this test before the failover test"
    both = routers[:2]  # the mesh's routers (`meshserve up --routers 2`)
    with Load(both, IRIS_ROWS, iris_labels, threads=4) as load:
        time.sleep(3.0)
    assert not load.failures, load.failures[:5]
    served = load.served()
    total = sum(served.values())
    assert total > 60, f"only {total} calls in 3 s"
    assert set(served) == set(live), served
    for pid, calls in served.items():
        assert calls > total * 0.15, f"replica {live[pid]} served {calls} of {total} calls: {served}"
    for router in range(len(both)):  # each router on its own spreads its calls over every replica
        assert set(load.served(router=router)) == set(live)


def park_slow_call(channel: grpc.Channel, markers: Path, pool: concurrent.futures.Executor,
                   tags: Iterator[int]) -> concurrent.futures.Future[int]:
    """A ``slow`` call through ``channel`` that replica B is working on (calls that reach C return at once)."""
    for _ in range(40):
        tag = next(tags)
        future = pool.submit(whoami, channel, "slow", tag, 20.0)
        marker = markers / f"started-{tag}"
        deadline = time.monotonic() + 10
        while not marker.exists() and not future.done():
            assert time.monotonic() < deadline, "a slow call neither started on B nor ended"
            time.sleep(0.01)
        if marker.exists():
            return future
        future.result()  # C answered: try again
    raise AssertionError("40 slow calls in a row went to C")


def test_replica_killed_under_load_costs_no_call(
        routers: list[grpc.Channel], replicas: dict[str, Replica], iris_labels: np.ndarray, markers: Path) -> None:
    victim, a, c = replicas["B"], replicas["A"], replicas["C"]
    assert victim.process is not None
    tags = itertools.count(1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # Calls B is working on when it dies, through a mesh-link router and the gRPC-only one.
        parked = [park_slow_call(channel, markers, pool, tags) for channel in (routers[0], routers[2])]
        with Load(routers, IRIS_ROWS, iris_labels, threads=4) as load:
            time.sleep(1.5)
            victim.process.kill(signal.SIGKILL)
            assert victim.process.proc is not None
            victim.process.proc.wait(5)
            killed_at = time.monotonic()

            # The calls it was running are answered by C (the only other holder of `slow`).
            for future in parked:
                assert future.result(timeout=10) == c.pid
            # It leaves every router's registry within its lease TTL (plus etcd's expiry
            # granularity and a margin for this busy machine).
            while any(victim.runtime_id in listed_runtimes(channel) for channel in routers):
                assert time.monotonic() - killed_at < LEASE_TTL_S + 3.0, "still listed after the lease TTL"
                time.sleep(0.05)
            left_at = time.monotonic()
            time.sleep(1.5)

    assert not load.failures, f"{len(load.failures)} failed calls, e.g. {load.failures[:5]}"
    assert victim.pid in load.served(until=killed_at), "the load never reached the victim before the kill"
    after = load.served(since=left_at)
    assert set(after) == {a.pid, c.pid}, after
    assert sum(after.values()) > 20, after
    print(f"killed B; it left the routers after {left_at - killed_at:.2f} s; "
          f"{len(load.outcomes)} calls, none failed; served since: {after}")
