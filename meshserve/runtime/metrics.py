"""A runtime's Prometheus series, shared by every runtime built on :class:`RuntimeServer`.

Calls are counted and timed by the data plane (model, version, gRPC status code); loads
and unloads by the repository; the rest (calls in flight, the predict queue, memory) is
read from the repository and the pools when Prometheus scrapes. docs/operating.md
describes each series.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from meshserve.metrics import CODE_NAMES, SLOW_BUCKETS, CallSeries, Sampled, Samples, Tally

from .entry import ModelEntry, State

if TYPE_CHECKING:
    from .repository import ModelRepository

PREFIX = "meshserve_runtime"
# Why a loaded version was unloaded (the unloads counter's label).
REQUESTED, EVICTED, IDLE, STOPPING = "requested", "evicted", "idle", "stopping"


@runtime_checkable
class WorkerPool(Protocol):
    """What a runtime's worker pool tells the metrics (the R runtime's pool of Rscript workers)."""

    @property
    def waiting(self) -> int: ...

    @property
    def replaced(self) -> int: ...


class RuntimeMetrics:
    """Every series of one runtime, in a registry of its own; :meth:`watch` adds those read at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.calls = CallSeries(self.registry, PREFIX, ("model", "version", "code"),
                                "Inference calls the runtime answered (gRPC, mesh link and streams)")
        loads = Counter(f"{PREFIX}_model_loads", "Model version loads, by result: ok or failed", ["result"],
                        registry=self.registry)
        self.load_ok = loads.labels("ok")
        self.load_failed = loads.labels("failed")
        self.load_seconds = Histogram(f"{PREFIX}_model_load_duration_seconds", "Seconds loading a model version "
                                      "took (successful loads)", registry=self.registry, buckets=SLOW_BUCKETS)
        self.unloads = Counter(f"{PREFIX}_model_unloads", "Loaded versions unloaded, by cause: requested, "
                               "evicted (to make room within the memory budget), idle or stopping", ["cause"],
                               registry=self.registry)
        for cause in (REQUESTED, EVICTED, IDLE, STOPPING):
            self.unloads.labels(cause)
        self._by_key: dict[tuple[str, str, grpc.StatusCode], Tally] = {}

    def done(self, model: str, version: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one call to a version this runtime holds (model "" for a name it does not know)."""
        key = (model, version, code)
        tally = self._by_key.get(key)
        if tally is None:
            tally = self._by_key[key] = self.calls.series((model, version, CODE_NAMES[code]))
        tally.observe(seconds)

    def watch(self, repository: ModelRepository, threads: ThreadPoolExecutor, loader: object) -> None:
        """Add the series read when Prometheus scrapes, and register them."""
        entries: Callable[[], list[ModelEntry]] = repository.entries
        s = Sampled()
        s.gauge(f"{PREFIX}_inflight_requests", "Inference calls being computed now",
                lambda: sum(e.inflight for e in entries()))
        s.labelled_gauge(f"{PREFIX}_model_inflight_requests", "Inference calls being computed now, by model and "
                         "version", ("model", "version"), lambda: _inflight(entries()))
        pool = getattr(loader, "pool", None)
        if isinstance(pool, WorkerPool):  # predict() runs in the loader's workers
            s.gauge(f"{PREFIX}_predict_queue_depth", "Calls waiting for a free worker", lambda: pool.waiting)
            s.counter(f"{PREFIX}_worker_restarts", "Workers replaced after a crash or a timeout",
                      lambda: pool.replaced)
        else:  # predict() runs in the runtime's thread pool; the backlog is its queue
            s.gauge(f"{PREFIX}_predict_queue_depth", "Calls waiting for a free predict thread",
                    lambda: threads._work_queue.qsize())
        s.gauge(f"{PREFIX}_loaded_models", "Model versions loaded and ready",
                lambda: sum(e.state is State.READY for e in entries()))
        s.gauge(f"{PREFIX}_memory_budget_bytes", "Memory loaded versions may take (estimates); 0: no limit",
                lambda: repository.residency.budget_bytes)
        s.gauge(f"{PREFIX}_memory_used_bytes", "Memory the loaded and loading versions take, by their estimates",
                lambda: repository.residency.used(entries()))
        s.register(self.registry)


def _inflight(entries: list[ModelEntry]) -> Samples:
    return [((e.name, e.version), e.inflight) for e in entries if e.state is State.READY or e.inflight]
