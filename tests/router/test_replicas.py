"""The router's replica choice (power of two choices) and per-replica circuit breaker: pure, no servers.

Connections are created (their channels never connect: nothing is called), and the
pool's clock is a variable the tests move.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import pytest

from meshserve.registry.cache import Replica
from meshserve.services.router.replicas import Connection, ConnectionPool

EJECT_S = 2.0
THRESHOLD = 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def pool(clock: Clock) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(1 << 20, use_link=False, eject_s=EJECT_S, breaker_failures=THRESHOLD, clock=clock)
    yield pool
    await pool.close()


def replicas(n: int) -> tuple[Replica, ...]:
    return tuple(Replica(f"rt-{i}", "python", f"127.0.0.1:{20000 + i}") for i in range(n))


def conns(pool: ConnectionPool, reps: tuple[Replica, ...]) -> list[Connection]:
    return [pool.get(r) for r in reps]


def tally(pool: ConnectionPool, reps: tuple[Replica, ...], n: int = 600,
          exclude: tuple[Connection, ...] = ()) -> collections.Counter[str]:
    return collections.Counter(pool.choose(reps, exclude).replica.runtime_id for _ in range(n))


async def test_two_replicas_the_one_with_fewer_calls_in_flight_wins(pool: ConnectionPool) -> None:
    reps = replicas(2)
    a, b = conns(pool, reps)
    a.inflight, b.inflight = 5, 2
    assert tally(pool, reps) == {"rt-1": 600}
    a.inflight = 1
    assert tally(pool, reps) == {"rt-0": 600}


async def test_equal_load_spreads_over_every_replica(pool: ConnectionPool) -> None:
    reps = replicas(3)
    counts = tally(pool, reps, 3000)
    assert set(counts) == {"rt-0", "rt-1", "rt-2"}
    assert all(700 < c < 1300 for c in counts.values()), counts


async def test_power_of_two_never_picks_the_busiest_and_favours_the_idlest(pool: ConnectionPool) -> None:
    reps = replicas(3)
    for conn, load in zip(conns(pool, reps), (0, 4, 9), strict=True):
        conn.inflight = load
    counts = tally(pool, reps, 3000)
    assert "rt-2" not in counts  # it loses to whichever replica it is drawn with
    assert counts["rt-0"] > 1700  # wins both pairs it is in: 2/3 of draws


async def test_excluded_replicas_are_skipped_unless_nothing_else_is_left(pool: ConnectionPool) -> None:
    reps = replicas(3)
    c0, c1, c2 = conns(pool, reps)
    assert tally(pool, reps, 200, exclude=(c0,)).keys() == {"rt-1", "rt-2"}
    assert tally(pool, reps, 200, exclude=(c0, c2)) == {"rt-1": 200}
    assert set(tally(pool, reps, 200, exclude=(c0, c1, c2))) == {"rt-0", "rt-1", "rt-2"}


async def test_breaker_opens_after_consecutive_failures_only(pool: ConnectionPool) -> None:
    reps = replicas(2)
    bad, _ = conns(pool, reps)
    for _ in range(THRESHOLD - 1):
        pool.failed(bad, "connection refused")
    assert pool.breaker(bad) == "closed"
    assert tally(pool, reps)["rt-0"] > 200  # still chosen (it has nothing in flight)
    pool.succeeded(bad)  # an answer resets the count: failures must be consecutive
    for _ in range(THRESHOLD - 1):
        pool.failed(bad, "connection refused")
    assert pool.breaker(bad) == "closed"
    pool.failed(bad, "connection refused")
    assert pool.breaker(bad) == "open"
    assert tally(pool, reps) == {"rt-1": 600}


async def test_half_open_lets_one_probe_through_and_its_success_closes(pool: ConnectionPool, clock: Clock) -> None:
    reps = replicas(2)
    bad, good = conns(pool, reps)
    for _ in range(THRESHOLD):
        pool.failed(bad, "connection refused")
    clock.now += EJECT_S - 0.01
    assert pool.breaker(bad) == "open" and tally(pool, reps) == {"rt-1": 600}
    clock.now += 0.02
    assert pool.breaker(bad) == "half-open"
    good.inflight = 1  # so the two-way draw picks the idle, half-open replica
    probe = pool.choose(reps)
    assert probe is bad
    # While the probe is out, every other call keeps away from it.
    assert pool.breaker(bad) == "open" and tally(pool, reps) == {"rt-1": 600}
    pool.succeeded(bad)
    assert pool.breaker(bad) == "closed" and bad.failures == 0
    assert pool.choose(reps) is bad


async def test_a_failed_probe_opens_the_breaker_again(pool: ConnectionPool, clock: Clock) -> None:
    reps = replicas(2)
    bad, good = conns(pool, reps)
    for _ in range(THRESHOLD):
        pool.failed(bad, "connection refused")
    clock.now += EJECT_S
    good.inflight = 1
    assert pool.choose(reps) is bad
    pool.failed(bad, "connection refused")
    assert pool.breaker(bad) == "open"
    clock.now += EJECT_S - 0.01
    assert tally(pool, reps) == {"rt-1": 600}
    clock.now += 0.02
    assert pool.breaker(bad) == "half-open"


async def test_a_probe_that_never_answers_is_followed_by_another(pool: ConnectionPool, clock: Clock) -> None:
    # A probe cancelled by its caller neither closes nor re-opens the breaker: the next
    # cool-off ends with a new probe, never with the replica avoided for good.
    reps = replicas(2)
    bad, good = conns(pool, reps)
    for _ in range(THRESHOLD):
        pool.failed(bad, "connection refused")
    clock.now += EJECT_S
    good.inflight = 1
    assert pool.choose(reps) is bad
    clock.now += EJECT_S
    assert pool.breaker(bad) == "half-open" and pool.choose(reps) is bad


async def test_the_only_replica_is_chosen_whatever_its_breaker(pool: ConnectionPool) -> None:
    reps = replicas(1)
    (only,) = conns(pool, reps)
    for _ in range(THRESHOLD + 2):
        pool.failed(only, "connection refused")
    assert pool.breaker(only) == "open"
    assert pool.choose(reps) is only


async def test_when_every_breaker_is_open_calls_still_go_somewhere(pool: ConnectionPool) -> None:
    reps = replicas(3)
    for conn in conns(pool, reps):
        for _ in range(THRESHOLD):
            pool.failed(conn, "connection refused")
    assert set(tally(pool, reps, 300)) == {"rt-0", "rt-1", "rt-2"}


async def test_a_replica_that_left_the_registry_is_dropped_with_its_breaker(pool: ConnectionPool) -> None:
    reps = replicas(2)
    bad, _ = conns(pool, reps)
    for _ in range(THRESHOLD):
        pool.failed(bad, "connection refused")
    pool.retain({reps[1].address})
    # A runtime registering again at that address starts with a closed breaker.
    again = pool.get(Replica("rt-0b", "python", reps[0].address))
    assert again is not bad and pool.breaker(again) == "closed"
