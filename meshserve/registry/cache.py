"""The router's local, watch-fed copy of the registry.

Lookups never touch etcd: the cache loads a snapshot of ``/meshserve/v1/`` once, then
applies watch events. When etcd goes away the cache keeps serving what it last saw and
re-opens the watch from the last revision it applied (etcd replays what was missed);
if that revision was compacted, or etcd came back with an older history, it reloads a
full snapshot instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aetcd

from meshserve.names import version_sort_key
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.etcd import connect
from meshserve.registry.etcd_token import EtcdCredentials
from meshserve.tls import MeshTls

log = logging.getLogger(__name__)

READY = pb.MODEL_STATE_READY


@dataclass(frozen=True, slots=True)
class Replica:
    """A runtime that holds a model version ready."""

    runtime_id: str
    kind: str
    address: str
    # The runtime's mesh link ("" when it has none: call it over gRPC).
    link_address: str = ""


@dataclass(frozen=True, slots=True)
class ModelView:
    """Everything the router needs to route calls for one model."""

    name: str
    # version -> replicas holding it ready; versions in ascending order
    ready: dict[str, tuple[Replica, ...]]
    # every version known anywhere, whatever its state, ascending
    versions: tuple[str, ...]
    latest_ready: str | None


class RegistryCache:
    """In-memory registry view, kept current by an etcd watch."""

    def __init__(self, endpoint: str, on_change: Callable[[set[str]], None] | None = None,
                 on_routers: Callable[[set[str]], None] | None = None, *, mesh_tls: MeshTls | None = None,
                 credentials: EtcdCredentials | None = None) -> None:
        self.credentials = credentials
        self.endpoint = endpoint
        self._mesh_tls = mesh_tls  # for an https:// etcd
        self.runtimes: dict[str, pb.Runtime] = {}
        # The live routers, by id: ``on_routers`` hears their ids whenever the set changes.
        self.routers: dict[str, pb.Router] = {}
        self.placements: dict[tuple[str, str, str], pb.Placement] = {}
        # The same placements by model, then (version, runtime id): a watch event rebuilds
        # one model's view without scanning the whole registry.
        self._by_model: dict[str, dict[tuple[str, str], pb.Placement]] = {}
        self.models: dict[str, ModelView] = {}
        self.audit_policies: dict[str, audit_pb2.AuditPolicy] = {}
        # How each model's calls choose a version (aliases, default, splits, shadows).
        self.routes: dict[str, pb.Route] = {}
        # Pipelines, which callers call as models.
        self.pipelines: dict[str, pb.Pipeline] = {}
        # API keys (by key id) and access rules (by id); auth_revision counts their changes.
        self.api_keys: dict[str, auth_pb2.ApiKey] = {}
        self.access_rules: dict[str, auth_pb2.AccessRule] = {}
        self.rate_limits: dict[str, auth_pb2.RateLimit] = {}
        self.model_limits: dict[str, auth_pb2.ModelLimits] = {}
        self.auth_revision = 0
        # Models registered without being loaded: placed on a runtime at their first call.
        self.catalog: dict[str, pb.CatalogModel] = {}
        # Records kept one per model: (key parser, where they go, their message type).
        self._model_records: tuple[tuple[Callable[[bytes], str | None], dict[str, Any], Any], ...] = (
            (keys.parse_audit_policy_key, self.audit_policies, audit_pb2.AuditPolicy),
            (keys.parse_route_key, self.routes, pb.Route),
            (keys.parse_pipeline_key, self.pipelines, pb.Pipeline),
            (keys.parse_api_key_key, self.api_keys, auth_pb2.ApiKey),
            (keys.parse_access_rule_key, self.access_rules, auth_pb2.AccessRule),
            (keys.parse_rate_limit_key, self.rate_limits, auth_pb2.RateLimit),
            (keys.parse_model_limits_key, self.model_limits, auth_pb2.ModelLimits),
            (keys.parse_catalog_key, self.catalog, pb.CatalogModel),
        )
        # Models whose last placement left (a runtime died or stopped), with when: callers
        # get UNAVAILABLE (try again) for them rather than NOT_FOUND.
        self.departed: dict[str, float] = {}
        self.revision = 0
        self.connected = False
        self._on_change = on_change
        self._on_routers = on_routers
        self._client: aetcd.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    async def start(self, *, wait: float = 10.0) -> None:
        self._client = await connect(self.endpoint, mesh_tls=self._mesh_tls, wait=wait, credentials=self.credentials)
        await self._load_snapshot()
        self._task = asyncio.create_task(self._watch_forever(), name="registry-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> aetcd.Client:
        """The etcd client the cache reads with, for the router's own writes (route and pipeline changes)."""
        if self._client is None:
            raise RuntimeError("the registry cache is not started")
        return self._client

    # -- lookups -----------------------------------------------------------------------

    def model(self, name: str) -> ModelView | None:
        return self.models.get(name)

    def placements_of(self, model: str) -> list[pb.Placement]:
        """Every placement of ``model`` (any version, runtime and state), without scanning the registry."""
        return list(self._by_model.get(model, {}).values())

    def model_names(self) -> list[str]:
        return sorted(self.models)

    # -- applying changes --------------------------------------------------------------

    async def _load_snapshot(self) -> None:
        assert self._client is not None
        snapshot = await self._client.get_prefix(keys.ROOT.encode())
        self.runtimes.clear()
        self.routers.clear()
        self.placements.clear()
        self._by_model.clear()
        for _, records, _ in self._model_records:
            records.clear()
        for kv in snapshot:
            self._put(kv.key, kv.value)
        self.revision = snapshot.header.revision
        self._rebuild(None)
        self._routers_changed()
        self.connected = True
        self.synced.set()
        log.info("registry snapshot at revision %d: %d runtimes, %d models",
                 self.revision, len(self.runtimes), len(self.models))

    def _put(self, key: bytes, value: bytes) -> str | None:
        placement = keys.parse_placement_key(key)
        if placement is not None:
            try:
                record = self.placements[placement] = pb.Placement.FromString(value)
            except Exception:  # noqa: BLE001 - a bad record must not stop the router
                log.warning("ignoring unreadable placement record at %r", key)
                return None
            self._by_model.setdefault(placement[0], {})[placement[1:]] = record
            return placement[0]
        runtime_id = keys.parse_runtime_key(key)
        if runtime_id is not None:
            with contextlib.suppress(Exception):
                self.runtimes[runtime_id] = pb.Runtime.FromString(value)
        router_id = keys.parse_router_key(key)
        if router_id is not None:
            with contextlib.suppress(Exception):
                self.routers[router_id] = pb.Router.FromString(value)
        for parse, records, message in self._model_records:
            model = parse(key)
            if model is not None:
                self.auth_revision += 1
                try:
                    records[model] = message.FromString(value)
                except Exception:  # noqa: BLE001 - keep the last good record
                    log.warning("ignoring unreadable record at %r", key)
        return None

    def _delete(self, key: bytes) -> str | None:
        placement = keys.parse_placement_key(key)
        if placement is not None:
            self.placements.pop(placement, None)
            held = self._by_model.get(placement[0])
            if held is not None:
                held.pop(placement[1:], None)
                if not held:
                    del self._by_model[placement[0]]
            return placement[0]
        runtime_id = keys.parse_runtime_key(key)
        if runtime_id is not None:
            self.runtimes.pop(runtime_id, None)
        router_id = keys.parse_router_key(key)
        if router_id is not None:
            self.routers.pop(router_id, None)
        for parse, records, _ in self._model_records:
            model = parse(key)
            if model is not None:
                self.auth_revision += 1
                records.pop(model, None)
        return None

    def _rebuild(self, changed: set[str] | None) -> None:
        """Recompute the views of the changed models (of all models when None)."""
        names = changed if changed is not None else set(self._by_model) | set(self.models)
        for name in names:
            placements = list(self._by_model.get(name, {}).values())
            if not placements:
                if self.models.pop(name, None) is not None:
                    self.departed[name] = time.monotonic()
                continue
            self.departed.pop(name, None)
            versions = sorted({p.version for p in placements if p.version}, key=version_sort_key)
            ready: dict[str, tuple[Replica, ...]] = {}
            for version in versions:
                replicas = tuple(
                    Replica(p.runtime_id, p.runtime_kind, p.address, p.link_address)
                    for p in sorted(placements, key=lambda p: p.runtime_id)
                    if p.version == version and p.state == READY
                )
                if replicas:
                    ready[version] = replicas
            latest = max(ready, key=version_sort_key) if ready else None
            self.models[name] = ModelView(name, ready, tuple(versions), latest)
        if self._on_change is not None:
            self._on_change(names)

    def _routers_changed(self) -> None:
        if self._on_routers is not None:
            self._on_routers(set(self.routers))

    async def _watch_forever(self) -> None:
        """Follow the registry for as long as the router lives; nothing may end this loop."""
        assert self._client is not None
        delay = 0.1
        reopening = False
        while True:
            try:
                if reopening:
                    await self._check_history()
                watch = await self._client.watch_prefix(keys.ROOT.encode(), start_revision=self.revision + 1)
                self.connected = True
                delay = 0.1
                async for event in watch:
                    self._apply(event)
            except aetcd.RevisionCompactedError:
                log.warning("registry revision %d was compacted: reloading a snapshot", self.revision)
                await self._resync()
            except aetcd.ClientError as e:
                if self.connected:
                    log.warning("lost the registry watch on etcd %s (%s); serving from cache", self.endpoint, e)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:
                log.exception("registry watch failed; serving from cache and reopening it")
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            reopening = True

    def _apply(self, event: aetcd.rtypes.Event) -> None:
        try:
            changed = self._put(event.kv.key, event.kv.value) if event.kind == "PUT" else self._delete(event.kv.key)
            if changed is not None:
                self._rebuild({changed})
            elif keys.parse_router_key(event.kv.key) is not None:
                self._routers_changed()
        except Exception:
            log.exception("skipping registry event for key %r", event.kv.key)
        self.revision = max(self.revision, event.kv.mod_revision)

    async def _check_history(self) -> None:
        """Before re-opening the watch: reload a snapshot if etcd's history went backwards.

        A watch opened past etcd's current revision would stay silent, so this check
        must succeed (it raises when etcd does not answer) before any watch is opened.
        """
        assert self._client is not None
        probe = await self._client.get_prefix(keys.ROOT.encode() + b"\x00", keys_only=True)
        if probe.header.revision < self.revision:
            log.warning("etcd history went back from %d to %d: reloading a snapshot",
                        self.revision, probe.header.revision)
            await self._load_snapshot()

    async def _resync(self) -> None:
        with contextlib.suppress(aetcd.ClientError):
            await self._load_snapshot()
