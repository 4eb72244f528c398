"""Retries and breaker openings show in the router's metrics (in-process replicas, as in test_retries)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from meshserve.auth.access import Access
from meshserve.auth.limits import RateLimiter
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry.cache import ModelView, RegistryCache
from meshserve.services.router.audit import Call, CallAudit
from meshserve.services.router.forward import Forwarder
from meshserve.services.router.metrics import RouterMetrics
from meshserve.services.router.replicas import ConnectionPool
from meshserve.services.router.resolve import Resolver

from .test_retries import MODEL, REQUEST, FakeReplica


@pytest.fixture
async def bad_and_good() -> AsyncIterator[tuple[FakeReplica, FakeReplica]]:
    bad, good = await FakeReplica("bad", grpc.StatusCode.UNAVAILABLE).start(), await FakeReplica("good").start()
    yield bad, good
    await bad.stop()
    await good.stop()


async def test_retries_and_breaker_openings_are_counted(bad_and_good: tuple[FakeReplica, FakeReplica]) -> None:
    bad, good = bad_and_good
    cache = RegistryCache("127.0.0.1:1")  # never started: the test fills it
    cache.models[MODEL] = ModelView(MODEL, {"1": (bad.replica, good.replica)}, ("1",), "1")
    pool = ConnectionPool(1 << 20, use_link=False, eject_s=30.0, breaker_failures=3)
    metrics = RouterMetrics()
    forwarder = Forwarder(Resolver(cache), pool, CallAudit(None, {}, "test", 1024),
                          Access({}, {}, lambda: 0, dev_mode=True), RateLimiter({}, auth_pb2.RateLimit()),
                          metrics=metrics)
    forward = forwarder._forwarding("ModelInfer", 1, 2, 0, "infer")
    try:
        for _ in range(30):
            call = Call("ModelInfer")
            call.trusted = True
            assert await forward(call, REQUEST, lambda: 5.0, ()) == b"good"
            assert metrics.model_inflight[(MODEL, "1")] == 0
    finally:
        await pool.close()
    assert bad.calls == 3
    assert metrics.retries == 3  # each of the bad replica's failures was tried again on the good one
    assert pool.ejections == 1  # its breaker opened once, at the third failure
