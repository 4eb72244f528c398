"""A principal's rate limit holds across the routers: three routers, then two, outside dev mode (real mesh).

The client offers a paced load well over the limit, spread evenly over the routers, and
counts the calls answered OK over a window. Before each window every router has refused
calls (its bucket is drained, the initial burst spent) and says how many routers share
the limit, so the window counts the sustained rate only. What can move the count, in
calls, per router and window: up to about one token more or less in its bucket at each
end of the window (a saturated bucket holds between 0 and 1 token plus what trickles in
between two calls), and a call admitted just inside an edge but answered just outside it.
Over a 6 s window at 10 calls/s that is at most about 4 of 60 calls (7 %), so the
10 % tolerance holds on a loaded 2-core machine. The bursts are sized so a router that
stalls for up to a second loses no tokens (each router's share holds 1.2 s of its rate).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc
import pytest
from e2e.helpers import IRIS_ROWS, assert_eventually
from e2e_metrics.helpers import scrape, value

from e2e_auth.helpers import keyed_mesh, meshserve, new_key
from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

RATE = 10.0  # calls/s for the principal, mesh-wide
BURST = 12  # mesh-wide: 4 a router of three, 6 a router of two
OFFERED_PER_THREAD = 15.0  # calls/s; three threads: 45 calls/s, 4.5 times the rate
WINDOW_S = 6.0
TOLERANCE = 0.10
SHARED_BY = "meshserve_router_rate_limit_routers"

IRIS = build_request("iris", {"features": IRIS_ROWS[:1]})


@dataclass(frozen=True)
class Outcome:
    at: float  # when the answer came (monotonic)
    router: int  # index into the channels
    code: grpc.StatusCode
    details: str


class PacedLoad:
    """``threads`` callers, each at ``per_thread`` calls/s, every one cycling over the routers in use."""

    def __init__(self, channels: Sequence[grpc.Channel], metadata: tuple[tuple[str, str], ...], *,
                 threads: int = 3, per_thread: float = OFFERED_PER_THREAD, max_s: float = 120.0) -> None:
        self.stubs = [oip_grpc.GRPCInferenceServiceStub(c) for c in channels]
        self.metadata = metadata
        self.in_use = list(range(len(channels)))
        self.interval = 1.0 / per_thread
        self.max_s = max_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller, args=(i,), daemon=True) for i in range(threads)]

    def use(self, routers: Sequence[int]) -> None:
        """From now on call only ``routers`` (indexes into the channels)."""
        self.in_use = list(routers)

    def _caller(self, index: int) -> None:
        start = time.monotonic()
        due = start + index * self.interval / len(self._threads)
        for n in itertools.count(index):
            if self._stop.is_set() or time.monotonic() - start > self.max_s:
                return
            time.sleep(max(0.0, due - time.monotonic()))
            due = max(due + self.interval, time.monotonic() - self.interval)  # late: no catching up in a burst
            routers = self.in_use
            router = routers[n % len(routers)]
            try:
                self.stubs[router].ModelInfer(IRIS, timeout=5, metadata=self.metadata)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
            self.outcomes.append(Outcome(time.monotonic(), router, code, details))

    def ok(self, since: float, until: float) -> dict[int, int]:
        """Calls answered OK between ``since`` and ``until``, by router."""
        counts: dict[int, int] = {}
        for o in list(self.outcomes):
            if o.code == grpc.StatusCode.OK and since <= o.at < until:
                counts[o.router] = counts.get(o.router, 0) + 1
        return counts

    def refused_by(self, since: float) -> set[int]:
        """Routers that refused a call for the rate limit since ``since``."""
        return {o.router for o in list(self.outcomes)
                if o.at >= since and o.code == grpc.StatusCode.RESOURCE_EXHAUSTED}

    def unexpected(self, since: float, until: float) -> list[Outcome]:
        """Calls answered between ``since`` and ``until`` with neither OK nor the rate limit's refusal."""
        return [o for o in list(self.outcomes) if since <= o.at < until
                and o.code not in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)]

    def __enter__(self) -> PacedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with keyed_mesh(tmp_path_factory.mktemp("rate-mesh"), routers=3, audit=False) as running:
        yield running


def shared_by(mesh: LocalMesh, name: str) -> float:
    return value(scrape(mesh.metrics_addresses[name]), SHARED_BY)


def steady(load: PacedLoad, mesh: LocalMesh, names: list[str], routers: list[int]) -> None:
    """Wait until every router in ``routers`` shares the limit among ``len(names)`` and has refused calls since."""
    def shared() -> None:
        assert [shared_by(mesh, name) for name in names] == [len(names)] * len(names)
    assert_eventually(shared, timeout=10)
    since = time.monotonic()

    def refused() -> None:
        assert load.refused_by(since) >= set(routers)
    assert_eventually(refused, timeout=10)
    time.sleep(0.5)


def window(load: PacedLoad) -> tuple[float, dict[int, int]]:
    """Calls per second answered OK over the next WINDOW_S, and the count by router (every other call refused)."""
    start = time.monotonic()
    time.sleep(WINDOW_S + 0.5)  # the last calls of the window are answered
    counts = load.ok(start, start + WINDOW_S)
    assert not load.unexpected(start, start + WINDOW_S), load.unexpected(start, start + WINDOW_S)[:5]
    return sum(counts.values()) / WINDOW_S, counts


@pytest.mark.timeout(180)
def test_routers_hold_a_principal_to_its_rate_together_and_after_one_stops(mesh: LocalMesh) -> None:
    names = mesh.router_names()
    assert len(mesh.router_addresses) == 3
    token = new_key(mesh, "paced")
    for args in (("allow", "--principal", "paced", "--models", "iris", "--actions", "infer"),
                 ("rate", "--principal", "paced", "--calls-per-second", f"{RATE:g}", "--burst", str(BURST))):
        done = meshserve(mesh, "policy", *args)
        assert done.returncode == 0, done.stderr
    channels = [grpc.insecure_channel(address) for address in mesh.router_addresses]
    try:
        with PacedLoad(channels, (("authorization", f"Bearer {token}"),)) as load:
            steady(load, mesh, names, [0, 1, 2])
            rate, counts = window(load)
            assert abs(rate - RATE) <= TOLERANCE * RATE, (rate, counts)
            for router in range(3):
                assert abs(counts.get(router, 0) - RATE * WINDOW_S / 3) <= 0.25 * RATE * WINDOW_S / 3, counts
            refusal = next(o for o in reversed(load.outcomes) if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert f"over its rate limit of {RATE:g} calls/s" in refusal.details
            assert "on each of 3 routers" in refusal.details, refusal.details

            # The third router stops; the other two each take half of the principal's rate.
            load.use([0, 1])
            os.kill(mesh.pids()[names[2]], signal.SIGTERM)

            def stopped() -> None:
                assert not mesh.alive()[names[2]]
            assert_eventually(stopped, timeout=15)
            steady(load, mesh, names[:2], [0, 1])
            rate, counts = window(load)
            assert abs(rate - RATE) <= TOLERANCE * RATE, (rate, counts)
            for router in range(2):
                assert abs(counts.get(router, 0) - RATE * WINDOW_S / 2) <= 0.25 * RATE * WINDOW_S / 2, counts
    finally:
        for channel in channels:
            channel.close()
