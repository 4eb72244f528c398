"""What a runtime does for each call, with no transport code.

The servicer hands over numpy arrays and gets numpy arrays back; errors are
:class:`meshserve.errors.MeshError` subclasses carrying their status code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc

from meshserve import tracing
from meshserve.errors import MeshError
from meshserve.ratelog import RateLimitedLog
from meshserve.tracing import OFF, Tracing

from .backend import Arrays
from .entry import ModelEntry, State
from .manifest import TensorSpec
from .metrics import RuntimeMetrics
from .repository import ModelRepository

_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_INTERNAL = grpc.StatusCode.INTERNAL
# Refusals of what a caller sent: one bounded log line each (rate-limited), never a traceback.
_LOGGED = frozenset((grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED))

log = logging.getLogger(__name__)
T = TypeVar("T")

# RepositoryIndex states, as Triton reports them.
INDEX_STATES = {
    State.AVAILABLE: "UNAVAILABLE",
    State.LOADING: "LOADING",
    State.READY: "READY",
    State.FAILED: "UNAVAILABLE",
}


@dataclass(frozen=True, slots=True)
class InferResult:
    model: str
    version: str
    outputs: Arrays
    datatypes: dict[str, str]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


def _as_is(result: InferResult) -> InferResult:
    return result


def _predict_span(traced: Tracing, entry: ModelEntry) -> tracing.Scope:
    return traced.span(*_predict_span_args(entry.name, entry.version, entry.platform))


@functools.lru_cache(maxsize=1024)
def _predict_span_args(model: str, version: str, platform: str) -> tuple[str, dict[str, str]]:
    return f"predict {model}", {"meshserve.model": model, "meshserve.model_version": version,
                                "meshserve.platform": platform}


class DataPlane:
    """Inference, metadata and repository operations over a :class:`ModelRepository`.

    With ``tracing`` on, each predict gets a span.
    """

    def __init__(self, repository: ModelRepository, predict_threads: int, metrics: RuntimeMetrics | None = None,
                 *, tracing: Tracing = OFF) -> None:
        self.repository = repository
        self.tracing = tracing
        self.pool = ThreadPoolExecutor(predict_threads, thread_name_prefix="predict")
        self.ready = False
        self.metrics = metrics if metrics is not None else repository.metrics
        self.refusals = RateLimitedLog(log)

    async def infer(self, model: str, version: str, inputs: Arrays, requested: Sequence[str]) -> InferResult:
        """One inference call, counted and timed in the runtime's metrics."""
        return await self.answer(model, version, inputs, requested, _as_is)

    async def answer(self, model: str, version: str, inputs: Arrays, requested: Sequence[str],
                     encode: Callable[[InferResult], T]) -> T:
        """One inference call and ``encode`` of its result (the answer to send), counted and timed together.

        A refusal of what the caller sent (INVALID_ARGUMENT, RESOURCE_EXHAUSTED: an answer
        too large to send, say) gets one bounded log line, rate-limited.
        """
        started = time.monotonic()
        try:
            result = await self._infer(model, version, inputs, requested)
            answer = encode(result)
        except MeshError as e:
            self._failed(model, version, e.code, started)
            if e.code in _LOGGED:
                self.refused(model, version, e)
            raise
        except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
            self._failed(model, version, _CANCELLED, started)
            raise
        except Exception:
            self._failed(model, version, _INTERNAL, started)
            raise
        self.metrics.done(result.model, result.version, _OK, time.monotonic() - started)
        return answer

    def refused(self, model: str, version: str, error: MeshError) -> None:
        """Log a call refused for what the caller sent: one bounded line, rate-limited."""
        entry = self.repository.serving(model, version)
        if entry is not None:
            model, version = entry.name, entry.version
        self.refusals("refused a call to model %r version %r (%s): %s", model, version or "(latest)",
                      error.code.name, error.message)

    def _failed(self, model: str, version: str, code: grpc.StatusCode, started: float) -> None:
        """Count a failed call under the version it reached, else the names this runtime knows ("" otherwise)."""
        entry = self.repository.serving(model, version)
        if entry is not None:
            model, version = entry.name, entry.version
        elif not self.repository.knows(model, version):
            model, version = (model if self.repository.knows(model) else ""), ""
        self.metrics.done(model, version, code, time.monotonic() - started)

    async def _infer(self, model: str, version: str, inputs: Arrays, requested: Sequence[str]) -> InferResult:
        entry = self.repository.ready(model, version)
        signature, backend = entry.signature, entry.backend
        assert signature is not None and backend is not None
        signature.check_inputs(inputs)
        if signature.valued:
            signature.check_values(inputs, backend.allow_nan, backend.allow_inf)
        wanted = signature.check_requested(requested)
        entry.hits += 1
        entry.last_used = time.monotonic()
        entry.inflight += 1  # a version with calls in flight is never evicted
        try:
            with _predict_span(self.tracing, entry) if self.tracing.active else tracing.NO_SPAN:
                if backend.is_async:
                    raw = await backend.apredict(inputs, wanted)
                else:
                    raw = await asyncio.get_running_loop().run_in_executor(self.pool, backend.predict, inputs, wanted)
        finally:
            entry.inflight -= 1
        return InferResult(entry.name, entry.version, signature.cast_outputs(raw, wanted), signature.datatypes)

    def model_ready(self, model: str, version: str) -> bool:
        try:
            self.repository.ready(model, version)
        except Exception:  # noqa: BLE001 - any reason means "not ready"
            return False
        return True

    def model_metadata(self, model: str, version: str) -> ModelMetadata:
        entry = self.repository.entry(model, version)
        versions = [e.version for e in self.repository.versions(model)]
        manifest = entry.manifest
        return ModelMetadata(
            name=model,
            versions=[entry.version] if version else versions,
            platform=entry.platform,
            inputs=list(manifest.inputs) if manifest else [],
            outputs=list(manifest.outputs) if manifest else [],
        )

    def index(self, ready_only: bool) -> list[IndexEntry]:
        self.repository.scan()
        return [
            IndexEntry(e.name, e.version, INDEX_STATES[e.state], e.reason)
            for e in self.repository.entries()
            if not ready_only or e.state is State.READY
        ]

    async def load(self, model: str, version: str = "", *, artifact: str = "", memory_bytes: int = 0,
                   ) -> list[ModelEntry]:
        return await self.repository.load(model, version, artifact=artifact, memory_bytes=memory_bytes)

    async def unload(self, model: str, version: str = "") -> list[ModelEntry]:
        return await self.repository.unload(model, version)

    async def close(self) -> None:
        self.ready = False
        await self.repository.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
