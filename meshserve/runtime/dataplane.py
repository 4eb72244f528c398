"""What a runtime does for each call, with no transport code.

The servicer hands over numpy arrays and gets numpy arrays back; errors are
:class:`meshserve.errors.MeshError` subclasses carrying their status code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .backend import Arrays
from .entry import ModelEntry, State
from .manifest import TensorSpec
from .repository import ModelRepository

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


class DataPlane:
    """Inference, metadata and repository operations over a :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository, predict_threads: int) -> None:
        self.repository = repository
        self.pool = ThreadPoolExecutor(predict_threads, thread_name_prefix="predict")
        self.ready = False

    async def infer(self, model: str, version: str, inputs: Arrays, requested: Sequence[str]) -> InferResult:
        entry = self.repository.ready(model, version)
        signature, backend = entry.signature, entry.backend
        assert signature is not None and backend is not None
        signature.check_inputs(inputs)
        wanted = signature.check_requested(requested)
        entry.hits += 1
        entry.last_used = time.monotonic()
        entry.inflight += 1  # a version with calls in flight is never evicted
        try:
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
