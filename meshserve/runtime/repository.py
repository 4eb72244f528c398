"""The model repository on disk and the state of every model version in it.

Layout: ``<root>/<model>/<version>/manifest.yaml`` plus the artifact the manifest
names. Versions load and unload independently; the empty version means the latest
loaded one (numeric versions compare as numbers). A runtime sees only the versions whose
manifest names its kind (``runtime:``), so runtimes of several kinds share one folder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from meshserve.errors import FailedPrecondition, InvalidArgument, MeshError, NotFound, Unavailable
from meshserve.names import check_model_name, check_version, version_sort_key

from .backend import BackendLoader
from .entry import ModelEntry, State
from .manifest import MANIFEST, parse_manifest, read_manifest, runtime_of
from .metrics import EVICTED, IDLE, REQUESTED, STOPPING, RuntimeMetrics
from .residency import Residency, folder_bytes
from .signature import Signature

log = logging.getLogger(__name__)


OnChange = Callable[[ModelEntry], Awaitable[None]]


class ModelRepository:
    """Every model version under ``root`` served by runtimes of ``kind``, loaded by ``loader``."""

    def __init__(self, root: Path, kind: str, loader: BackendLoader, on_change: OnChange | None = None, *,
                 residency: Residency | None = None, artifact_roots: Sequence[Path] = (),
                 metrics: RuntimeMetrics | None = None) -> None:
        self.root = root
        self.kind = kind
        self.loader = loader
        self.on_change = on_change
        self.residency = residency or Residency()
        self.metrics = metrics if metrics is not None else RuntimeMetrics()
        # Folders an artifact named by a load request may be in (the repository always is).
        self.artifact_roots = [root.resolve(), *(r.resolve() for r in artifact_roots)]
        self._room = asyncio.Lock()
        self._models: dict[str, dict[str, ModelEntry]] = {}
        # (name, version) and (name, "") -> READY entry; the only lookup on the hot path.
        self._ready: dict[tuple[str, str], ModelEntry] = {}

    def scan(self) -> list[ModelEntry]:
        """Find model versions added to the folder since the last scan; return the new ones."""
        if not self.root.is_dir():
            raise FailedPrecondition(f"model repository {self.root} is not a folder")
        found: list[ModelEntry] = []
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if not (version_dir / MANIFEST).is_file():
                    continue
                name, version = model_dir.name, version_dir.name
                try:
                    check_model_name(name)
                    check_version(version)
                except InvalidArgument as e:
                    log.warning("skipping %s: %s", version_dir, e)
                    continue
                if version in self._models.get(name, {}):
                    continue
                entry = ModelEntry(name, version, version_dir)
                try:
                    data = read_manifest(version_dir / MANIFEST)
                    if runtime_of(data) != self.kind:
                        continue  # another kind of runtime serves it
                    self._prepare(entry, data)
                except MeshError as e:
                    entry.state, entry.reason = State.FAILED, e.message
                self._models.setdefault(name, {})[version] = entry
                found.append(entry)
        return found

    def _prepare(self, entry: ModelEntry, data: dict[str, Any]) -> None:
        """Validate a version's manifest for this runtime and keep what serving it needs."""
        path = entry.path / MANIFEST
        manifest = parse_manifest(data, path, self.kind, self.loader.platforms)
        if manifest.runtime != self.kind:
            raise FailedPrecondition(f"{path} now names runtime {manifest.runtime!r}; this is the {self.kind} runtime")
        if manifest.name is not None and manifest.name != entry.name:
            raise InvalidArgument(f"invalid {path}: name {manifest.name!r} differs from its folder {entry.name!r}")
        try:
            self.loader.check(manifest)
        except InvalidArgument as e:
            raise InvalidArgument(f"invalid {path}: {e.message}") from e
        entry.manifest, entry.platform = manifest, self.loader.platforms[manifest.framework]
        entry.signature = Signature(entry.name, entry.version, manifest)

    def entries(self) -> list[ModelEntry]:
        return [e for name in sorted(self._models) for e in self._sorted(self._models[name])]

    @staticmethod
    def _sorted(versions: dict[str, ModelEntry]) -> list[ModelEntry]:
        return [versions[v] for v in sorted(versions, key=version_sort_key)]

    def versions(self, name: str) -> list[ModelEntry]:
        """Every version of ``name``, oldest first; NotFound lists the models there are."""
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not in this runtime's repository; models: {known}")
        return self._sorted(versions)

    def entry(self, name: str, version: str) -> ModelEntry:
        """One version, or the latest ready one (else the latest) when ``version`` is empty."""
        entries = self.versions(name)
        if not version:
            ready = [e for e in entries if e.state is State.READY]
            return (ready or entries)[-1]
        for e in entries:
            if e.version == version:
                return e
        raise NotFound(
            f"model {name!r} has no version {version!r}; versions: {', '.join(e.version for e in entries)}"
        )

    def knows(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (and ``version``, when given) is in the repository, loaded or not."""
        versions = self._models.get(name)
        return versions is not None and (not version or version in versions)

    def serving(self, name: str, version: str) -> ModelEntry | None:
        """The READY entry a call names (empty version: the latest ready), or None."""
        return self._ready.get((name, version))

    def ready(self, name: str, version: str) -> ModelEntry:
        """The READY entry to serve a call; the error says what to do otherwise."""
        entry = self._ready.get((name, version))
        if entry is not None:
            return entry
        entry = self.entry(name, version)
        what = f"model {name!r} version {entry.version!r}"
        if entry.state is State.LOADING:
            raise Unavailable(f"{what} is loading; retry shortly")
        if entry.state is State.FAILED:
            raise FailedPrecondition(f"{what} failed to load: {entry.reason}; fix it and load it again")
        raise FailedPrecondition(f"{what} is not loaded; load it first (RepositoryModelLoad)")

    def _reindex(self) -> None:
        ready: dict[tuple[str, str], ModelEntry] = {}
        for name, versions in self._models.items():
            latest = None
            for entry in self._sorted(versions):
                if entry.state is State.READY:
                    ready[(name, entry.version)] = entry
                    latest = entry
            if latest is not None:
                ready[(name, "")] = latest
        self._ready = ready

    async def _set(self, entry: ModelEntry, state: State, reason: str = "") -> None:
        entry.state, entry.reason = state, reason
        self._reindex()
        if self.on_change is not None:
            await self.on_change(entry)

    def _select(self, name: str, version: str) -> list[ModelEntry]:
        self.scan()
        return [self.entry(name, version)] if version else self.versions(name)

    def adopt(self, name: str, version: str, artifact: str) -> ModelEntry:
        """The entry of ``name``/``version`` served from ``artifact`` (a catalog's placement).

        ``artifact`` is the version's folder, relative to the repository or absolute; it
        must lie within the artifact roots, so a load request cannot read elsewhere.
        """
        check_model_name(name)
        check_version(version)
        path = Path(artifact) if Path(artifact).is_absolute() else self.root / artifact
        path = path.resolve()
        if not any(path.is_relative_to(root) for root in self.artifact_roots):
            raise InvalidArgument(f"artifact {artifact!r} is outside this runtime's artifact roots "
                                  f"({', '.join(map(str, self.artifact_roots))})")
        if not (path / MANIFEST).is_file():
            raise NotFound(f"artifact {artifact!r} has no {MANIFEST} (looked in {path})")
        existing = self._models.get(name, {}).get(version)
        if existing is not None:
            if existing.path.resolve() != path:
                raise FailedPrecondition(f"model {name!r} version {version!r} is already served from "
                                         f"{existing.path}, not {path}")
            return existing
        entry = ModelEntry(name, version, path)
        self._models.setdefault(name, {})[version] = entry
        return entry

    async def load(self, name: str, version: str = "", *, artifact: str = "", memory_bytes: int = 0,
                   ) -> list[ModelEntry]:
        """Load one version, or every version of ``name``; raise the first failure.

        With ``artifact`` the version is loaded from that folder (see :meth:`adopt`);
        ``memory_bytes`` overrides the estimate of what it takes. A load that cannot be
        made to fit the memory budget raises ResourceExhausted and changes nothing.
        """
        if artifact:
            if not version:
                raise InvalidArgument("loading from an artifact needs the version it is")
            entries = [self.adopt(name, version, artifact)]
        else:
            entries = self._select(name, version)
        errors: list[str] = []
        for entry in entries:
            await self._load(entry, memory_bytes)
            if entry.state is State.FAILED:
                errors.append(f"version {entry.version}: {entry.reason}")
        if errors:
            raise FailedPrecondition(f"model {name!r} failed to load: {'; '.join(errors)}")
        return entries

    async def _load(self, entry: ModelEntry, memory_bytes: int = 0) -> None:
        async with entry.lock:
            if entry.state is State.READY:
                return
            try:
                # Re-read the manifest: a failed version may have been fixed on disk.
                self._prepare(entry, read_manifest(entry.path / MANIFEST))
            except MeshError as e:
                self.metrics.load_failed.inc()
                await self._set(entry, State.FAILED, e.message)
                return
            assert entry.manifest is not None
            entry.memory_bytes = memory_bytes or entry.memory_bytes or folder_bytes(entry.path)
            async with self._room:  # one load at a time chooses what to evict
                for victim in self.residency.victims(self.entries(), entry):
                    await self._unload_entry(victim, f"evicted to make room for {entry.name} version {entry.version}",
                                             EVICTED)
                entry.hits, entry.last_used = 0, time.monotonic()
                await self._set(entry, State.LOADING)
            started = time.monotonic()
            try:
                entry.backend = await self.loader.load(entry.name, entry.version, entry.path, entry.manifest)
            except MeshError as e:
                self.metrics.load_failed.inc()
                await self._set(entry, State.FAILED, e.message)
            except Exception as e:  # a model's own code may raise anything
                self.metrics.load_failed.inc()
                log.warning("loading %s version %s failed", entry.name, entry.version, exc_info=True)
                await self._set(entry, State.FAILED, f"{type(e).__name__}: {e}")
            else:
                self.metrics.load_ok.inc()
                self.metrics.load_seconds.observe(time.monotonic() - started)
                log.info("loaded model %s version %s (%s)", entry.name, entry.version, entry.platform)
                await self._set(entry, State.READY)

    async def unload(self, name: str, version: str = "", cause: str = REQUESTED) -> list[ModelEntry]:
        """Unload one version, or every version of ``name``, freeing what they hold."""
        entries = self._select(name, version)
        for entry in entries:
            await self._unload_entry(entry, "unloaded", cause)
        return entries

    async def _unload_entry(self, entry: ModelEntry, reason: str, cause: str = REQUESTED) -> None:
        async with entry.lock:
            backend, entry.backend = entry.backend, None
            if entry.state is State.READY:
                self.metrics.unloads.labels(cause).inc()
                await self._set(entry, State.AVAILABLE, reason)
                log.info("%s: model %s version %s", reason, entry.name, entry.version)
            if backend is not None:
                try:
                    await backend.close()
                except Exception:  # a model's own code may raise anything
                    log.warning("unloading %s version %s raised", entry.name, entry.version, exc_info=True)

    async def unload_idle(self) -> list[ModelEntry]:
        """Unload the versions idle for the residency's ``idle_unload_s``."""
        idle = self.residency.idle(self.entries())
        for entry in idle:
            await self._unload_entry(entry, f"unloaded after {self.residency.idle_unload_s:g} s without a call", IDLE)
        return idle

    async def close(self) -> None:
        """Unload everything (the runtime is stopping)."""
        for name in list(self._models):
            await self.unload(name, cause=STOPPING)
