"""Placing a model on first use: the catalog's models are loaded where there is room when first called.

A call to a model version that no runtime holds ready, but that the catalog lists, waits
here while the version is placed:

- concurrent first calls in one router share one placement (one task per version);
- routers side by side agree through a claim key in etcd, held under a short lease by the
  router that places; the others wait for the registry to show the version ready;
- the runtime is one of the version's kind, with the most free memory by the registry
  (its budget minus the estimates of what it holds); the runtime itself evicts to make
  room (see meshserve/runtime/residency.py);
- a placement that fails is remembered for ``retry_after_s``: calls meanwhile get the
  failure at once instead of each starting another load.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aetcd
import grpc

from meshserve.errors import DeadlineExceeded, FailedPrecondition, MeshError, NotFound, Unavailable, error_for
from meshserve.oip.repository import load_parameters
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.cache import RegistryCache, Replica

from .metrics import RouterMetrics
from .replicas import ConnectionPool

log = logging.getLogger(__name__)

CLAIM_TTL_S = 30
_HOLDING = (pb.MODEL_STATE_READY, pb.MODEL_STATE_LOADING)


class Placer:
    """Places catalog models on runtimes at their first call; see the module docstring."""

    def __init__(self, cache: RegistryCache, pool: ConnectionPool, *, load_timeout_s: float = 60.0,
                 retry_after_s: float = 30.0, metrics: RouterMetrics | None = None) -> None:
        self.cache = cache
        self.pool = pool
        self.metrics = metrics if metrics is not None else RouterMetrics()
        self.load_timeout_s = load_timeout_s
        self.retry_after_s = retry_after_s
        self._placing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._failed: dict[tuple[str, str], tuple[float, MeshError]] = {}

    async def ensure(self, model: str, version: str, remaining_s: float | None) -> None:
        """Return once ``model`` ``version`` is ready in this router's registry view, placing it if need be."""
        key = (model, version)
        failed = self._failed.get(key)
        if failed is not None:
            until, error = failed
            if time.monotonic() < until:
                raise error_for(error.code, f"{error.message} (placing it again in {until - time.monotonic():.0f} s)")
            del self._failed[key]
        task = self._placing.get(key)
        if task is None:
            task = asyncio.create_task(self._place(model, version), name=f"place-{model}-{version}")
            self._placing[key] = task
            task.add_done_callback(lambda _: self._placing.pop(key, None))
        try:
            await asyncio.wait_for(asyncio.shield(task), remaining_s)
        except TimeoutError:
            raise DeadlineExceeded(f"model {model!r} version {version!r} is being placed on a runtime and was not "
                                   "ready within the call's deadline; try again shortly") from None

    @property
    def in_progress(self) -> int:
        """Versions being placed now."""
        return len(self._placing)

    def ready(self, model: str, version: str) -> bool:
        view = self.cache.models.get(model)
        return view is not None and version in view.ready

    async def _place(self, model: str, version: str) -> None:
        try:
            if self.ready(model, version):
                return
            started = time.monotonic()
            since_ms = int(time.time() * 1000)
            lease = await self._claim(model, version)
            try:
                if lease is not None:
                    await self._load(model, version)
                await self._wait_ready(model, version, since_ms)
            finally:
                if lease is not None:
                    await _release(lease)
            self.metrics.placed.inc()
            self.metrics.placement_seconds.observe(time.monotonic() - started)
        except MeshError as e:
            self.metrics.placement_failed.inc()
            log.warning("placing %s version %s failed: %s", model, version, e.message)
            self._failed[(model, version)] = (time.monotonic() + self.retry_after_s, e)
            raise

    async def _claim(self, model: str, version: str) -> aetcd.Lease | None:
        """A lease holding the placing claim of this version, or None when another router holds it."""
        client = self.cache.client
        lease = await client.lease(CLAIM_TTL_S)
        key = keys.placing_key(model, version)
        tx = client.transactions
        won, _ = await client.transaction(compare=[tx.version(key) == 0],
                                          success=[tx.put(key, b"", lease=lease)], failure=[])
        if won:
            return lease
        await _release(lease)
        log.info("another router is placing %s version %s: waiting for it", model, version)
        return None

    def _load_target(self, model: str, version: str, exclude: frozenset[str] = frozenset(),
                     ) -> tuple[Replica, str, int]:
        """(runtime to load on, artifact, memory estimate): the catalog's kind with the most free memory."""
        entry = self.cache.catalog.get(model)
        listed = entry.versions.get(version) if entry is not None else None
        if listed is None:
            raise NotFound(f"model {model!r} version {version!r} left the catalog")
        kind, artifact, memory = listed.runtime_kind, listed.artifact, listed.memory_bytes
        candidates = [r for r in self.cache.runtimes.values() if r.kind == kind and r.id not in exclude]
        if not candidates:
            raise FailedPrecondition(f"model {model!r} version {version!r} needs a {kind} runtime and none is in "
                                     "the mesh; start one")
        # One pass over the registry: memory held (estimates) and versions held per candidate.
        used = {r.id: 0 for r in candidates}
        count = dict(used)
        for (_, _, rid), p in self.cache.placements.items():
            if rid in used and p.state in _HOLDING:
                used[rid] += p.memory_bytes
                count[rid] += 1

        def room(r: pb.Runtime) -> tuple[float, int]:
            free = float(r.memory_budget_bytes - used[r.id]) if r.memory_budget_bytes else float("inf")
            return free, -count[r.id]
        best = max(candidates, key=room)
        return Replica(best.id, best.kind, best.address, best.link_address), artifact, memory

    def holders(self, model: str, version: str) -> dict[str, pb.Placement]:
        """Runtime id -> placement of every copy of this version that is loaded or loading."""
        return {p.runtime_id: p for p in self.cache.placements_of(model)
                if p.version == version and p.state in _HOLDING}

    def can_add_copy(self, model: str, version: str) -> bool:
        entry = self.cache.catalog.get(model)
        listed = entry.versions.get(version) if entry is not None else None
        if listed is None:
            return False
        held = self.holders(model, version)
        return any(r.kind == listed.runtime_kind and r.id not in held for r in self.cache.runtimes.values())

    async def add_copy(self, model: str, version: str) -> None:
        """Load one more copy of a catalog version, on a runtime of its kind that holds none."""
        await self._load(model, version, exclude=frozenset(self.holders(model, version)))

    async def remove_copy(self, model: str, version: str, runtime_id: str) -> None:
        """Unload the copy of this version on ``runtime_id``."""
        runtime = self.cache.runtimes.get(runtime_id)
        if runtime is None:
            return
        target = Replica(runtime.id, runtime.kind, runtime.address, runtime.link_address)
        request = oip.RepositoryModelUnloadRequest(model_name=model, parameters=load_parameters(version))
        log.info("unloading a copy of %s version %s from %s", model, version, runtime_id)
        await self._repository_call(target, "RepositoryModelUnload", request.SerializeToString(),
                                    f"unloading model {model!r} version {version!r} from {runtime_id}")

    async def _repository_call(self, target: Replica, method: str, request: bytes, what: str) -> None:
        """A load or unload on ``target``; its gRPC error as a MeshError saying ``what`` failed."""
        try:
            await self.pool.get(target).unary(method)(request, timeout=self.load_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise error_for(e.code(), f"{what}: {e.details() or e.code().name}") from e

    async def _load(self, model: str, version: str, exclude: frozenset[str] = frozenset()) -> None:
        target, artifact, memory = self._load_target(model, version, exclude)
        request = oip.RepositoryModelLoadRequest(model_name=model,
                                                 parameters=load_parameters(version, artifact, memory))
        log.info("placing %s version %s on %s", model, version, target.runtime_id)
        started = time.monotonic()
        await self._repository_call(target, "RepositoryModelLoad", request.SerializeToString(),
                                    f"placing model {model!r} version {version!r} on {target.runtime_id}")
        log.info("placed %s version %s on %s in %.0f ms", model, version, target.runtime_id,
                 (time.monotonic() - started) * 1000)

    async def _wait_ready(self, model: str, version: str, since_ms: int) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        while not self.ready(model, version):
            failed = [p for p in self.cache.placements_of(model)
                      if p.version == version and p.state == pb.MODEL_STATE_FAILED and p.updated_at_unix_ms >= since_ms]
            if failed:
                raise FailedPrecondition(f"model {model!r} version {version!r} failed to load on "
                                         f"{failed[0].runtime_id}: {failed[0].reason}")
            if time.monotonic() > deadline:
                raise Unavailable(f"model {model!r} version {version!r} was not ready within "
                                  f"{self.load_timeout_s:.0f} s of being placed")
            await asyncio.sleep(0.01)


async def _release(lease: aetcd.Lease) -> None:
    try:
        await lease.revoke()
    except (aetcd.ClientError, TimeoutError):  # the lease runs out by itself
        log.debug("could not revoke a placing claim", exc_info=True)
