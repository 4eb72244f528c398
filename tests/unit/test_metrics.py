"""The shared metrics helpers: call tallies, values read at scrape time, the /metrics server, label bounds."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshserve.local.mesh import LocalMesh, MeshConfig, port_is_free
from meshserve.metrics import CallSeries, MetricsServer, Sampled
from meshserve.registry.cache import Replica
from meshserve.services.router.audit import Call
from meshserve.services.router.metrics import RouterMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_a_call_series_counts_and_buckets_each_call() -> None:
    registry = CollectorRegistry()
    series = CallSeries(registry, "test", ("model", "code"), "Calls", buckets=(0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 5.0):  # 0.01 belongs to le=0.01, as in Prometheus
        series.observe(("iris", "OK"), seconds)
    series.observe(("iris", "INTERNAL"), 0.2)
    found = samples(registry)
    ok = {"model": "iris", "code": "OK"}
    assert value(found, "test_calls_total", **ok) == 5
    assert value(found, "test_calls_total", model="iris", code="INTERNAL") == 1
    buckets = {le: value(found, "test_call_duration_seconds_bucket", **ok, le=le) for le in ("0.01", "0.1", "1.0",
                                                                                              "+Inf")}
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 4, "+Inf": 5}
    assert value(found, "test_call_duration_seconds_count", **ok) == 5
    assert value(found, "test_call_duration_seconds_sum", **ok) == pytest.approx(5.565)
    assert series.series(("iris", "OK")) is series.series(("iris", "OK"))  # one tally per label set


def test_sampled_values_are_read_at_each_scrape_and_a_failing_one_is_left_out() -> None:
    registry = CollectorRegistry()
    state = {"inflight": 3, "done": 10}
    sampled = Sampled()
    sampled.gauge("test_inflight", "in flight", lambda: state["inflight"])
    sampled.counter("test_done", "done", lambda: state["done"])
    sampled.labelled_gauge("test_by_model", "by model", ("model",), lambda: [(("iris",), 2.0), (("mtcars",), 1.0)])
    sampled.gauge("test_broken", "fails", lambda: 1 / 0)
    sampled.register(registry)
    found = samples(registry)
    assert value(found, "test_inflight") == 3 and value(found, "test_done_total") == 10
    assert value(found, "test_by_model", model="iris") == 2 and value(found, "test_by_model", model="mtcars") == 1
    assert not any(name == "test_broken" for name, _ in found)
    state["inflight"] = 0
    assert value(samples(registry), "test_inflight") == 0
    # Described, so a scrape may ask for some series only (meshserve top does).
    only = generate_latest(registry.restricted_registry(["test_inflight"])).decode()
    assert "test_inflight 0.0" in only and "test_done" not in only


def _get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


async def test_the_metrics_server_serves_binds_and_stops() -> None:
    registry = CollectorRegistry()
    sampled = Sampled()
    sampled.gauge("test_up", "up", lambda: 1)
    sampled.register(registry)
    server = MetricsServer(registry)
    address = server.start("127.0.0.1", 0)
    assert address.startswith("127.0.0.1:") and server.address == address
    assert "test_up 1.0" in _get(address)
    await server.stop()
    with pytest.raises(urllib.error.URLError):
        _get(address)
    assert MetricsServer(registry).start("127.0.0.1", -1) == ""  # disabled


async def test_a_taken_port_fails_unless_it_is_the_default(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            MetricsServer(CollectorRegistry()).start("127.0.0.1", port)
        server = MetricsServer(CollectorRegistry())
        with caplog.at_level(logging.WARNING):
            address = server.start("127.0.0.1", port, fallback=True)
        try:
            assert address != f"127.0.0.1:{port}" and f"metrics port {port} is in use" in caplog.text
            _get(address)
        finally:
            await server.stop()


def _call(model: str, kind: str = "python", version: str = "1") -> Call:
    call = Call("ModelInfer")
    call.model, call.resolved_version = model, version
    call.replica = Replica("runtime-1", kind, "127.0.0.1:1", "")
    return call


def test_router_calls_of_unknown_models_are_counted_under_no_name() -> None:
    metrics = RouterMetrics()
    known = {"iris", "sentiment"}
    metrics._known = known.__contains__
    for name in ("iris", "iris", "made-up-1", "made-up-2"):
        metrics.done("ModelInfer", _call(name), grpc.StatusCode.OK if name == "iris" else grpc.StatusCode.NOT_FOUND)
    metrics.done("ModelInfer", _call("sentiment", kind="pipeline", version=""), grpc.StatusCode.OK)
    metrics.done("pipeline_step", _call("iris"), grpc.StatusCode.OK)
    found = samples(metrics.registry)
    calls = "meshserve_router_calls_total"
    assert value(found, calls, method="ModelInfer", model="iris", version="1", runtime_kind="python", code="OK") == 2
    assert value(found, calls, method="ModelInfer", model="", version="", runtime_kind="python",
                 code="NOT_FOUND") == 2
    assert not any("made-up" in str(labels) for _, labels in found)
    assert value(found, calls, method="pipeline", model="sentiment", version="", runtime_kind="pipeline",
                 code="OK") == 1
    assert value(found, calls, method="pipeline_step", model="iris", version="1", runtime_kind="python",
                 code="OK") == 1
    assert len(metrics._by_key) == 3  # made-up names are not remembered either


def test_router_call_latency_runs_from_the_call_s_arrival() -> None:
    metrics = RouterMetrics()
    call = _call("iris")
    call.start_ns = time.time_ns() - 300_000_000  # arrived 0.3 s ago
    metrics.done("ModelInfer", call, grpc.StatusCode.OK)
    found = samples(metrics.registry)
    labels = {"method": "ModelInfer", "model": "iris", "version": "1", "runtime_kind": "python", "code": "OK"}
    assert value(found, "meshserve_router_call_duration_seconds_bucket", **labels, le="0.25") == 0
    assert value(found, "meshserve_router_call_duration_seconds_bucket", **labels, le="0.5") == 1


def test_the_local_mesh_gives_the_first_router_8002_when_nothing_else_needs_it(tmp_path: Path) -> None:
    def port(index: int = 0, **config: Any) -> int:
        return LocalMesh(MeshConfig(model_repository=tmp_path, **config))._router_metrics_port(index)

    assert port() == (8002 if port_is_free("127.0.0.1", 8002) else 0)
    assert port(routers=2) == 0  # the second router's gRPC port is 8002
    assert port(1) == 0  # the other routers take free ports
    assert port(router_port=0) == 0  # a mesh on free ports (tests)
    assert port(router_metrics_port=9102) == 9102 and port(1, router_metrics_port=9102) == 0
