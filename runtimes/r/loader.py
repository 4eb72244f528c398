"""The R runtime's backend loader: R models served by a pool of Rscript workers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from meshserve.errors import InvalidArgument
from meshserve.runtime import Arrays, Backend, BackendLoader, Manifest
from meshserve.tracing import OFF, Tracing

from .pool import RWorkerPool
from .protocol import RModelSpec
from .settings import RRuntimeSettings


class RBackend(Backend):
    """One R model version: predict() runs in whichever worker is free (each loads it once)."""

    platform = "r"
    is_async = True

    def __init__(self, pool: RWorkerPool, key: str, spec: RModelSpec, outputs: list[tuple[str, str]],
                 tracing: Tracing = OFF) -> None:
        self.pool = pool
        self.tracing = tracing
        self.key = key
        self.spec = spec
        self.outputs = outputs

    async def apredict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        if self.tracing.active:  # a span for the R bridge: the wait for a worker, the pipes, R's predict()
            with self.tracing.span("R worker predict", {"meshserve.r.model": self.key}) as current:
                result = await self.pool.predict(self.key, self.spec, inputs, self.outputs)
                current.set_attribute("meshserve.r.worker_pid", result.worker_pid)
                current.set_attribute("meshserve.r.predict_ns", result.r_nanos)
                return result.outputs
        result = await self.pool.predict(self.key, self.spec, inputs, self.outputs)
        return result.outputs


def model_spec(path: Path, manifest: Manifest) -> RModelSpec:
    r = manifest.r
    target = path / (r.script or manifest.artifact or "")
    return RModelSpec(path=str(target), frame=r.as_, columns=dict(r.columns), outputs=dict(r.outputs),
                      predict_type=r.type, packages=tuple(r.packages))


class RLoader(BackendLoader):
    """Starts the worker pool with the runtime; R models load lazily in each worker."""

    platforms: ClassVar[dict[str, str]] = {"r": "r"}

    def __init__(self, settings: RRuntimeSettings) -> None:
        log = settings.worker_log
        self.pool = RWorkerPool(settings.pool_size, rscript=settings.rscript, queue_max=settings.queue_max,
                                timeout_s=settings.timeout_s, log_path=log)

    def check(self, manifest: Manifest) -> None:
        if not manifest.artifact and not manifest.r.script:
            raise InvalidArgument("an R model needs an 'artifact' (.rds) or r.script (an R file with load/predict)")

    async def start(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    async def load(self, name: str, version: str, path: Path, manifest: Manifest) -> Backend:
        spec = model_spec(path, manifest)
        if not Path(spec.path).is_file():  # noqa: ASYNC240 - one stat when a model loads
            raise InvalidArgument(f"R model {name!r} version {version}: {spec.path} does not exist")
        outputs = [(o.name, o.datatype) for o in manifest.outputs]
        return RBackend(self.pool, f"{name}/{version}", spec, outputs, self.tracing)
