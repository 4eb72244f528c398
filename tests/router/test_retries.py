"""The router's retries: UNAVAILABLE calls go to another replica, bounded; other answers never do.

The replicas are in-process gRPC servers on port 0 that answer, fail with a given code,
or are stopped (connection refused); the router's forwarding runs in the test's loop
over a registry cache filled by hand (no etcd, no processes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from meshserve.auth.access import Access
from meshserve.auth.limits import RateLimiter
from meshserve.errors import MeshError
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry.cache import ModelView, RegistryCache, Replica
from meshserve.services.router.audit import Call, CallAudit
from meshserve.services.router.forward import Forwarder
from meshserve.services.router.replicas import ConnectionPool
from meshserve.services.router.resolve import Resolver

MODEL = "m"
REQUEST = oip.ModelInferRequest(model_name=MODEL).SerializeToString()
Forward = Callable[[float], Awaitable[bytes]]


class FakeReplica:
    """A runtime stand-in: ModelInfer answers its name, or fails with ``code`` the first ``failures`` times."""

    def __init__(self, name: str, code: grpc.StatusCode | None = None, failures: int = 1 << 30) -> None:
        self.name = name
        self.code = code
        self.failures = failures
        self.calls = 0
        self.answered = 0
        self.server = grpc.aio.server()
        self.address = ""

    async def start(self) -> FakeReplica:
        async def model_infer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.calls += 1
            if self.code is not None and self.calls <= self.failures:
                await context.abort(self.code, f"{self.name} says {self.code.name}")
            self.answered += 1
            return self.name.encode()

        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)})
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(None)

    @property
    def replica(self) -> Replica:
        return Replica(self.name, "python", self.address)


@pytest.fixture
async def started() -> AsyncIterator[list[FakeReplica]]:
    fakes: list[FakeReplica] = []
    yield fakes
    await asyncio.gather(*(f.stop() for f in fakes))


async def replicas(started: list[FakeReplica], *fakes: FakeReplica) -> tuple[Replica, ...]:
    for fake in fakes:
        started.append(await fake.start())
    return tuple(f.replica for f in fakes)


@pytest.fixture
async def make_forward() -> AsyncIterator[Callable[..., Forward]]:
    pools: list[ConnectionPool] = []

    def make(reps: tuple[Replica, ...], *, max_attempts: int = 3, retry_min_s: float = 0.01,
             eject_s: float = 30.0, breaker_failures: int = 3) -> Forward:
        cache = RegistryCache("127.0.0.1:1")  # never started: the test fills it
        cache.models[MODEL] = ModelView(MODEL, {"1": reps}, ("1",), "1")
        pool = ConnectionPool(1 << 20, use_link=False, eject_s=eject_s, breaker_failures=breaker_failures)
        pools.append(pool)
        forwarder = Forwarder(Resolver(cache), pool, CallAudit(None, {}, "test", 1024),
                              Access({}, {}, lambda: 0, dev_mode=True),
                              RateLimiter({}, auth_pb2.RateLimit()), max_attempts=max_attempts,
                              retry_min_s=retry_min_s)
        forward = forwarder._forwarding("ModelInfer", 1, 2, 0, "infer")

        async def call(timeout_s: float = 5.0) -> bytes:
            deadline = time.monotonic() + timeout_s
            call = Call("ModelInfer")
            call.trusted = True
            return await forward(call, REQUEST, lambda: deadline - time.monotonic(), ())

        return call

    yield make
    await asyncio.gather(*(p.close() for p in pools))


async def failure(forward: Forward, timeout_s: float = 5.0) -> MeshError:
    try:
        await forward(timeout_s)
    except MeshError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


async def test_unavailable_replica_is_retried_elsewhere_until_its_breaker_opens(
        started: list[FakeReplica], make_forward: Callable[..., Forward]) -> None:
    bad, good = FakeReplica("bad", grpc.StatusCode.UNAVAILABLE), FakeReplica("good")
    forward = make_forward(await replicas(started, bad, good))
    answers = [await forward() for _ in range(40)]
    assert answers == [b"good"] * 40
    assert bad.calls == 3  # the breaker opened at the third failure: no more calls for eject_s


async def test_a_stopped_replica_connection_refused_is_retried(
        started: list[FakeReplica], make_forward: Callable[..., Forward]) -> None:
    gone, good = FakeReplica("gone"), FakeReplica("good")
    forward = make_forward(await replicas(started, gone, good))
    await gone.stop()
    assert [await forward() for _ in range(20)] == [b"good"] * 20


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED])
async def test_other_errors_are_answers_and_never_retried(
        started: list[FakeReplica], make_forward: Callable[..., Forward], code: grpc.StatusCode) -> None:
    a, b = FakeReplica("a", code), FakeReplica("b", code)
    forward = make_forward(await replicas(started, a, b))
    for n in range(1, 11):
        assert (await failure(forward)).code == code
        assert a.calls + b.calls == n


async def test_attempts_are_bounded(started: list[FakeReplica], make_forward: Callable[..., Forward]) -> None:
    fakes = [FakeReplica(f"down-{i}", grpc.StatusCode.UNAVAILABLE) for i in range(4)]
    forward = make_forward(await replicas(started, *fakes), max_attempts=3, breaker_failures=100)
    error = await failure(forward)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "after 2 other replica(s) failed too" in error.message and MODEL in error.message
    assert sum(f.calls for f in fakes) == 3
    assert sorted(f.calls for f in fakes) == [0, 1, 1, 1]  # never the same replica twice


async def test_one_attempt_per_replica_when_there_are_fewer_than_max_attempts(
        started: list[FakeReplica], make_forward: Callable[..., Forward]) -> None:
    a, b = FakeReplica("a", grpc.StatusCode.UNAVAILABLE), FakeReplica("b", grpc.StatusCode.UNAVAILABLE)
    forward = make_forward(await replicas(started, a, b), max_attempts=5, breaker_failures=100)
    assert (await failure(forward)).code == grpc.StatusCode.UNAVAILABLE
    assert (a.calls, b.calls) == (1, 1)


async def test_no_retry_when_too_little_of_the_deadline_is_left(
        started: list[FakeReplica], make_forward: Callable[..., Forward]) -> None:
    a, b = FakeReplica("a", grpc.StatusCode.UNAVAILABLE), FakeReplica("b", grpc.StatusCode.UNAVAILABLE)
    forward = make_forward(await replicas(started, a, b), retry_min_s=1.0, breaker_failures=100)
    assert (await failure(forward, timeout_s=0.9)).code == grpc.StatusCode.UNAVAILABLE
    assert a.calls + b.calls == 1
    assert (await failure(forward, timeout_s=5.0)).code == grpc.StatusCode.UNAVAILABLE
    assert a.calls + b.calls == 3  # with time to spare, the second replica is tried too


async def test_a_replica_that_recovers_is_probed_and_called_again(
        started: list[FakeReplica], make_forward: Callable[..., Forward]) -> None:
    flaky, good = FakeReplica("flaky", grpc.StatusCode.UNAVAILABLE, failures=3), FakeReplica("good")
    forward = make_forward(await replicas(started, flaky, good), eject_s=0.3)
    while flaky.calls < 3:
        assert await forward() == b"good"
    for _ in range(20):  # the breaker is open: no call reaches it
        assert await forward() == b"good"
    assert flaky.calls == 3
    await asyncio.sleep(0.35)
    answers = [await forward() for _ in range(40)]
    assert answers.count(b"flaky") > 5  # the probe succeeded: it takes its share again
