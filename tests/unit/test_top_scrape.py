"""`meshserve top`'s arithmetic: percentiles from bucket gains, rates between scrapes, counter resets."""

from __future__ import annotations

import math

import pytest

from meshserve.cli.scrape import Window, parse, quantile

BOUNDS = ("0.001", "0.01", "0.1", "+Inf")


def exposition(calls: dict[tuple[str, str], float], buckets: dict[str, float], inflight: float = 0.0) -> str:
    """A router's /metrics text with iris version 1's calls by code and its latency buckets."""
    lines = ["# TYPE meshserve_router_calls_total counter"]
    for (method, code), count in calls.items():
        lines.append(f'meshserve_router_calls_total{{code="{code}",method="{method}",model="iris",'
                     f'runtime_kind="python",version="1"}} {count}')
    lines.append("# TYPE meshserve_router_call_duration_seconds histogram")
    for le in BOUNDS:
        lines.append(f'meshserve_router_call_duration_seconds_bucket{{code="OK",le="{le}",method="ModelInfer",'
                     f'model="iris",runtime_kind="python",version="1"}} {buckets.get(le, 0.0)}')
    lines += ["# TYPE meshserve_router_model_inflight_requests gauge",
              f'meshserve_router_model_inflight_requests{{model="iris",version="1"}} {inflight}',
              "# TYPE meshserve_router_inflight_requests gauge", f"meshserve_router_inflight_requests {inflight}"]
    return "\n".join(lines) + "\n"


def test_quantiles_interpolate_within_the_bucket_holding_the_rank() -> None:
    cumulative = {0.001: 0.0, 0.01: 50.0, 0.1: 100.0, math.inf: 100.0}
    assert quantile(0.5, cumulative) == pytest.approx(0.01)
    assert quantile(0.25, cumulative) == pytest.approx(0.001 + 0.009 * 0.5)
    assert quantile(0.99, cumulative) == pytest.approx(0.01 + 0.09 * 0.98)
    assert quantile(0.5, {0.001: 10.0, math.inf: 10.0}) == pytest.approx(0.0005)  # the first bucket starts at 0
    assert quantile(0.99, {0.001: 0.0, 0.01: 0.0, math.inf: 10.0}) == math.inf  # past the largest bound
    assert quantile(0.5, {0.001: 0.0, math.inf: 0.0}) is None  # no call
    assert quantile(0.5, {}) is None


def test_rates_and_percentiles_come_from_what_two_scrapes_gained() -> None:
    before = parse(exposition({("ModelInfer", "OK"): 100, ("ModelInfer", "INTERNAL"): 5},
                              {"0.001": 10, "0.01": 100, "0.1": 100, "+Inf": 100}))
    # Two seconds later: 40 more answered (all between 10 and 100 ms), 4 more failed, 2 streamed.
    after = parse(exposition({("ModelInfer", "OK"): 140, ("ModelInfer", "INTERNAL"): 9, ("ModelStreamInfer", "OK"): 2},
                             {"0.001": 10, "0.01": 100, "0.1": 140, "+Inf": 140}, inflight=3))
    window = Window(2.0)
    window.add(before, after)
    [row] = window.rows()
    assert (row.model, row.version) == ("iris", "1")
    assert row.calls_per_s == pytest.approx((40 + 4 + 2) / 2)
    assert row.errors_per_s == pytest.approx(2.0)
    assert 0.01 < row.p50_s < row.p99_s <= 0.1  # type: ignore[operator]
    assert row.inflight == 3 and window.total_inflight == 3


def test_a_router_restart_counts_from_zero_and_a_first_scrape_gives_no_rate() -> None:
    running = parse(exposition({("ModelInfer", "OK"): 1000}, {"+Inf": 1000}))
    restarted = parse(exposition({("ModelInfer", "OK"): 6}, {"0.001": 6, "+Inf": 6}))
    window = Window(1.0)
    window.add(running, restarted)
    assert window.rows()[0].calls_per_s == 6
    first = Window(0.0)
    first.add(None, running)
    [row] = first.rows()
    assert row.calls_per_s == 0 and row.p50_s is None


def test_routers_add_up() -> None:
    a0 = parse(exposition({("ModelInfer", "OK"): 0}, {}))
    a1 = parse(exposition({("ModelInfer", "OK"): 10}, {"0.001": 10, "+Inf": 10}, inflight=1))
    b1 = parse(exposition({("ModelInfer", "OK"): 30}, {"0.01": 30, "+Inf": 30}, inflight=2))
    window = Window(1.0)
    window.add(a0, a1)
    window.add(a0, b1)
    [row] = window.rows()
    assert row.calls_per_s == 40 and row.inflight == 3
    assert row.p50_s is not None and 0.001 < row.p50_s <= 0.01  # most calls came through the slower router
