"""Limits the router enforces before forwarding: per-principal call rates, per-model request sizes.

A principal's rate holds across the whole mesh: each of the N live routers keeps a token
bucket per principal holding 1/N of its rate and burst (see :func:`share`). The router
learns N from the router records in etcd (its registry cache's watch) and pushes it in
with :meth:`RateLimiter.share_among` when the set of routers changes; no call waits on
etcd. An even share is exact when callers spread their calls over the routers, and
stricter than the nominal rate for a principal whose calls all land on one router (see
docs/security.md). Sizes are checked on the request's bytes, and element counts and batch
sizes on its tensor shapes, parsed only for models that set those limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from google.protobuf.message import DecodeError

from meshserve.errors import InvalidArgument, ResourceExhausted
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.auth.v1 import auth_pb2

MAX_BUCKETS = 100_000


def share(limit: auth_pb2.RateLimit, routers: int) -> tuple[float, float]:
    """The rate (calls/s) and burst one of ``routers`` routers enforces of ``limit``: an even share.

    The burst share is at least one call, so that every router admits calls however small
    its share (with more routers than the burst, the mesh as a whole admits a burst of up
    to one call per router).
    """
    routers = max(1, routers)
    return limit.calls_per_second / routers, max(limit.burst / routers, 1.0)


class RateLimiter:
    """One token bucket per principal; ``default`` applies to principals without a limit of their own.

    Each bucket holds this router's share of the principal's limit: 1/``routers`` of it.
    """

    def __init__(self, limits: Mapping[str, auth_pb2.RateLimit], default: auth_pb2.RateLimit, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.default = default
        self.clock = clock
        # The live routers sharing every limit, this one included (see share_among).
        self.routers = 1
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, at)

    def share_among(self, routers: int) -> None:
        """From now on enforce 1/``routers`` of every limit; buckets keep their tokens, capped at the new burst."""
        self.routers = max(1, routers)

    def take(self, principal: str) -> None:
        """Spend one call of ``principal``'s budget, or raise ResourceExhausted saying when to retry."""
        limit = self.limits.get(principal, self.default)
        if limit.calls_per_second <= 0:
            return
        routers = self.routers
        rate, burst = share(limit, routers)
        now = self.clock()
        tokens, at = self._buckets.get(principal, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[principal] = (tokens, now)
            wait_ms = (1.0 - tokens) / rate * 1000
            spread = f"; {rate:.3g} calls/s on each of {routers} routers" if routers > 1 else ""
            raise ResourceExhausted(f"principal {principal!r} is over its rate limit of {limit.calls_per_second:g} "
                                    f"calls/s (burst {max(limit.burst, 1)}{spread}); retry in {wait_ms:.0f} ms")
        if len(self._buckets) >= MAX_BUCKETS and principal not in self._buckets:
            self._buckets.clear()  # a flood of names: start over rather than grow without bound
        self._buckets[principal] = (tokens - 1.0, now)


def check_request(limits: auth_pb2.ModelLimits, request: bytes) -> None:
    """Refuse a ModelInfer request over the model's limits (ResourceExhausted or InvalidArgument)."""
    model = limits.model
    if limits.max_request_bytes and len(request) > limits.max_request_bytes:
        raise ResourceExhausted(f"a request to {model!r} may carry at most {limits.max_request_bytes} bytes; "
                                f"this one has {len(request)}")
    if not (limits.max_elements or limits.max_batch):
        return
    try:
        parsed = oip.ModelInferRequest.FromString(request)
    except DecodeError as e:
        raise InvalidArgument("request is not a valid ModelInferRequest protobuf message") from e
    total = 0
    for tensor in parsed.inputs:
        count = 1
        for dim in tensor.shape:
            if dim < 0:
                raise InvalidArgument(f"input {tensor.name!r} has a negative dimension {dim}")
            count *= dim
            if limits.max_elements and count > limits.max_elements:
                break  # no need to multiply further (nor to overflow)
        total += count
        if limits.max_batch and tensor.shape and tensor.shape[0] > limits.max_batch:
            raise InvalidArgument(f"input {tensor.name!r} has a batch of {tensor.shape[0]}; {model!r} takes at "
                                  f"most {limits.max_batch}")
        if limits.max_elements and total > limits.max_elements:
            raise InvalidArgument(f"the inputs of this request hold more than {limits.max_elements} elements, "
                                  f"the most {model!r} takes")
