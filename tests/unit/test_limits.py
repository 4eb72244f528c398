"""Rate limits and per-model request limits, without a router."""

from __future__ import annotations

import time

import numpy as np
import pytest

from meshserve.auth.limits import RateLimiter, check_request
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
