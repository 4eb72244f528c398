"""A runtime's own series: calls by the version they reached, loads, and unloads by their cause."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshserve.errors import MeshError
from meshserve.runtime.dataplane import DataPlane
from meshserve.runtime.metrics import RuntimeMetrics
from meshserve.runtime.repository import ModelRepository
from meshserve.runtime.residency import MiB, Residency
from meshserve.runtimes.python.frameworks import PythonLoader

ECHO = '''
import asyncio
from meshserve.runtimes.python import Model


class Echo(Model):
    async def predict(self, inputs):
        if float(inputs["x"][0]) < 0:
            await asyncio.sleep(10)  # a slow call, for the in-flight gauge
        return {"y": inputs["x"]}
'''


def _model(repository: Path, name: str, version: str, memory_mb: int = 1) -> None:
    folder = repository / name / version
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(ECHO)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "framework": "python", "entrypoint": "model.py:Echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    }))
    (folder / "weights.bin").write_bytes(b"\0" * (memory_mb * MiB))  # the size estimate


def _samples(metrics: RuntimeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(metrics: RuntimeMetrics, name: str, **labels: str) -> float | None:
    return _samples(metrics).get((name, frozenset(labels.items())))


@pytest.fixture
def plane(tmp_path: Path) -> DataPlane:
    for name, version in (("echo", "1"), ("echo", "2"), ("other", "1"), ("third", "1")):
        _model(tmp_path, name, version)
    metrics = RuntimeMetrics()
    repository = ModelRepository(tmp_path, "python", PythonLoader(), residency=Residency(2 * MiB + MiB // 2, 0.2),
                                 metrics=metrics)
    plane = DataPlane(repository, 2, metrics)
    metrics.watch(repository, plane.pool, repository.loader)
    return plane


X = {"x": np.array([1.0, 2.0], dtype=np.float32)}


async def test_calls_are_counted_under_the_version_they_reached(plane: DataPlane) -> None:
    await plane.load("echo", "1")
    await plane.infer("echo", "", X, [])
    await plane.infer("echo", "1", X, [])
    for model, version, inputs in (("echo", "1", {"z": X["x"]}), ("echo", "2", X), ("echo", "9", X),
                                   ("made-up", "1", X)):
        with pytest.raises(MeshError):
            await plane.infer(model, version, inputs, [])
    metrics = plane.metrics
    calls = "meshserve_runtime_calls_total"
    assert _value(metrics, calls, model="echo", version="1", code="OK") == 2
    assert _value(metrics, calls, model="echo", version="1", code="INVALID_ARGUMENT") == 1
    assert _value(metrics, calls, model="echo", version="2", code="FAILED_PRECONDITION") == 1  # known, not loaded
    assert _value(metrics, calls, model="echo", version="", code="NOT_FOUND") == 1  # no version 9
    assert _value(metrics, calls, model="", version="", code="NOT_FOUND") == 1  # no such model
    assert _value(metrics, "meshserve_runtime_call_duration_seconds_count", model="echo", version="1",
                  code="OK") == 2


async def test_calls_in_flight_are_read_at_scrape_time(plane: DataPlane) -> None:
    await plane.load("echo", "1")
    slow = asyncio.create_task(plane.infer("echo", "1", {"x": np.array([-1.0], dtype=np.float32)}, []))
    await asyncio.sleep(0.05)
    assert _value(plane.metrics, "meshserve_runtime_inflight_requests") == 1
    assert _value(plane.metrics, "meshserve_runtime_model_inflight_requests", model="echo", version="1") == 1
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert _value(plane.metrics, "meshserve_runtime_inflight_requests") == 0
    assert _value(plane.metrics, "meshserve_runtime_calls_total", model="echo", version="1", code="CANCELLED") == 1


async def test_loads_evictions_and_idle_unloads_are_counted(plane: DataPlane) -> None:
    repository, metrics = plane.repository, plane.metrics
    await plane.load("echo", "1")
    await plane.load("other", "1")  # 2 MiB of a 2.5 MiB budget
    assert _value(metrics, "meshserve_runtime_memory_used_bytes") == pytest.approx(2 * MiB, rel=0.01)
    assert _value(metrics, "meshserve_runtime_memory_budget_bytes") == 2 * MiB + MiB // 2
    await plane.load("third", "1")  # evicts one
    assert _value(metrics, "meshserve_runtime_model_unloads_total", cause="evicted") == 1
    await plane.unload("third", "1")
    assert _value(metrics, "meshserve_runtime_model_unloads_total", cause="requested") == 1
    await asyncio.sleep(0.25)  # past idle_unload_s
    assert len(await repository.unload_idle()) == 1
    assert _value(metrics, "meshserve_runtime_model_unloads_total", cause="idle") == 1
    assert _value(metrics, "meshserve_runtime_loaded_models") == 0
    assert _value(metrics, "meshserve_runtime_model_loads_total", result="ok") == 3
    assert _value(metrics, "meshserve_runtime_model_load_duration_seconds_count") == 3
    (repository.root / "echo" / "2" / "manifest.yaml").write_text("framework: [broken")
    with pytest.raises(MeshError):
        await plane.load("echo", "2")
    assert _value(metrics, "meshserve_runtime_model_loads_total", result="failed") == 1  # its manifest
    assert _value(metrics, "meshserve_runtime_predict_queue_depth") == 0
    await plane.close()
    assert _value(metrics, "meshserve_runtime_model_unloads_total", cause="stopping") == 0  # nothing was loaded


def test_the_r_worker_pool_feeds_the_queue_and_restart_series() -> None:
    from meshserve.runtimes.r.pool import RWorkerPool

    class RLoaderLike:
        pool = RWorkerPool(2)

    metrics = RuntimeMetrics()
    repository = ModelRepository(Path("/nowhere"), "r", PythonLoader(), metrics=metrics)
    metrics.watch(repository, DataPlane(repository, 1, metrics).pool, RLoaderLike())
    RLoaderLike.pool.replaced = 3
    assert _value(metrics, "meshserve_runtime_worker_restarts_total") == 3
    assert _value(metrics, "meshserve_runtime_predict_queue_depth") == 0
