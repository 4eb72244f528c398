"""Rate limits and per-model request limits, without a router."""

from __future__ import annotations

import time

import numpy as np
import pytest

from meshserve.auth.limits import RateLimiter, check_request, share
from meshserve.errors import InvalidArgument, ResourceExhausted
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.auth.v1 import auth_pb2


def test_token_bucket_allows_the_burst_then_refuses_then_refills() -> None:
    limits = {"alice": auth_pb2.RateLimit(principal="alice", calls_per_second=50, burst=5)}
    limiter = RateLimiter(limits, auth_pb2.RateLimit())
    for _ in range(5):
        limiter.take("alice")
    with pytest.raises(ResourceExhausted, match="over its rate limit of 50 calls/s"):
        limiter.take("alice")
    for _ in range(100):
        limiter.take("bob")  # no limit of its own, no default
    time.sleep(0.05)
    limiter.take("alice")  # 2.5 tokens back


def test_the_default_applies_to_everyone_else() -> None:
    limiter = RateLimiter({}, auth_pb2.RateLimit(calls_per_second=1, burst=2))
    limiter.take("x")
    limiter.take("x")
    with pytest.raises(ResourceExhausted):
        limiter.take("x")
    limiter.take("y")


def request(shape: list[int]) -> bytes:
    message = oip.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=shape)
    return message.SerializeToString()


def test_model_limits() -> None:
    limits = auth_pb2.ModelLimits(model="m", max_request_bytes=200, max_elements=100, max_batch=8)
    check_request(limits, build_request("m", {"x": np.zeros((8, 4), dtype=np.float32)}).SerializeToString())
    with pytest.raises(ResourceExhausted, match="at most 200 bytes"):
        check_request(limits, build_request("m", {"x": np.zeros((8, 10), dtype=np.float32)}).SerializeToString())
    with pytest.raises(InvalidArgument, match="batch of 9"):
        check_request(limits, request([9, 1]))
    with pytest.raises(InvalidArgument, match="more than 100 elements"):
        check_request(limits, request([4, 2**62, 2**62]))  # no overflow, refused at once
    with pytest.raises(InvalidArgument, match="negative dimension"):
        check_request(limits, request([-1, 4]))
    with pytest.raises(InvalidArgument, match="not a valid ModelInferRequest"):
        check_request(limits, b"\xff\xff\xff")


@pytest.mark.parametrize(("rate", "burst", "routers", "expected"), [
    (10, 12, 1, (10, 12)),
    (10, 12, 2, (5, 6)),
    (10, 12, 3, (10 / 3, 4)),
    (10, 0, 1, (10, 1)),  # no burst: one call at a time, as ever
    (1, 2, 10, (0.1, 1)),  # a burst share under one call is one call, or the router would admit none
    (10, 12, 0, (10, 12)),  # never fewer than this router
])
def test_each_router_enforces_an_even_share_with_a_burst_of_at_least_one(
        rate: float, burst: int, routers: int, expected: tuple[float, float]) -> None:
    assert share(auth_pb2.RateLimit(calls_per_second=rate, burst=burst), routers) == pytest.approx(expected)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(limiter: RateLimiter, principal: str = "p") -> bool:
    try:
        limiter.take(principal)
    except ResourceExhausted:
        return False
    return True


def test_routers_that_share_a_limit_hold_the_principal_to_its_rate_together() -> None:
    clock = Clock()
    limits = {"p": auth_pb2.RateLimit(principal="p", calls_per_second=10, burst=12)}
    routers = [RateLimiter(limits, auth_pb2.RateLimit(), clock=clock) for _ in range(3)]
    for limiter in routers:
        limiter.share_among(3)
    # 60 calls/s spread over the routers for 10 s: 10 calls/s in all, after the burst of 12.
    counts = [0, 0, 0]
    for n in range(600):
        clock.now += 1 / 60
        counts[n % 3] += admitted(routers[n % 3])
    assert sum(counts) == pytest.approx(10 * 10 + 12, abs=2), counts
    assert max(counts) - min(counts) <= 1
    # One router leaves: the other two each take half, and the principal keeps its 10 calls/s.
    for limiter in routers[:2]:
        limiter.share_among(2)
    total = 0
    for n in range(600):
        clock.now += 1 / 60
        total += admitted(routers[n % 2])
    assert total == pytest.approx(10 * 10, abs=3)


def test_a_smaller_share_caps_the_tokens_a_bucket_holds_and_the_refusal_says_so() -> None:
    clock = Clock()
    limiter = RateLimiter({}, auth_pb2.RateLimit(calls_per_second=6, burst=6), clock=clock)
    assert admitted(limiter)  # the bucket holds 6, 5 left
    limiter.share_among(3)  # its share: 2 calls/s, burst 2
    assert admitted(limiter) and admitted(limiter)
    with pytest.raises(ResourceExhausted, match=r"rate limit of 6 calls/s \(burst 6; 2 calls/s on each of 3 "
                                                r"routers\); retry in 500 ms"):
        limiter.take("p")
    clock.now += 60  # a long pause refills it to its share's burst, no further
    assert [admitted(limiter) for _ in range(3)] == [True, True, False]
