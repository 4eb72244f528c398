"""Turning a model name and requested version into the replicas that can serve it."""

from __future__ import annotations

import time

from meshserve.errors import InvalidArgument, NotFound, Unavailable
from meshserve.names import check_model_name, check_version, version_sort_key
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.cache import ModelView, RegistryCache, Replica

from . import routes
from .placement import Placer

_LISTED = 20
# How long a model whose runtimes all left is answered UNAVAILABLE rather than NOT_FOUND.
DEPARTED_S = 600.0


class NotPlaced(Unavailable):
    """The catalog lists this version but no runtime holds it ready: place it (see placement.py), then resolve again."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"model {model!r} version {version!r} is not loaded on any runtime yet")
        self.model = model
        self.version = version


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "") if items else "none"


class Resolver:
    """Version resolution over the router's registry cache (no etcd round trip)."""

    def __init__(self, cache: RegistryCache, placer: Placer | None = None) -> None:
        self.cache = cache
        self.placer = placer

    async def place(self, missing: NotPlaced, remaining_s: float | None) -> None:
        """Place the catalog model ``missing`` names (its first call), or re-raise when this router cannot."""
        if self.placer is None:
            raise missing
        await self.placer.ensure(missing.model, missing.version, remaining_s)

    def view(self, name: str) -> ModelView:
        view = self.cache.models.get(name)
        if view is None:
            check_model_name(name)
            departed = self.cache.departed.get(name)
            if departed is not None and time.monotonic() - departed < DEPARTED_S:
                raise Unavailable(f"model {name!r} is unavailable: every runtime that served it left the registry "
                                  f"{time.monotonic() - departed:.0f} s ago (stopped or unreachable); try again")
            raise NotFound(f"model {name!r} is not in the mesh; models: {_listing(self.cache.model_names())}")
        return view

    def resolve(self, name: str, version: str, metadata: routes.Metadata = (),
                principal: str = "") -> tuple[str, tuple[Replica, ...]]:
        """(resolved version, replicas holding it ready), or the error to give the caller.

        ``version`` may be a version, an alias or empty (the model's route decides, else
        the latest ready version); ``metadata`` carries a split's sticky header and
        ``principal`` names an authenticated caller, for sticky splits.
        """
        requested = version
        view = self.cache.models.get(name)
        if view is not None:
            route = self.cache.routes.get(name)
            if route is not None:
                version = routes.choose(route, view, version, metadata, principal)
            if not version:
                if view.latest_ready is not None:
                    return view.latest_ready, view.ready[view.latest_ready]
            else:
                replicas = view.ready.get(version)
                if replicas:
                    return version, replicas
        listed = self.cache.catalog.get(name)
        if listed is not None:
            target = version or max(listed.versions, key=version_sort_key, default="")
            if target in listed.versions:
                raise NotPlaced(name, target)
        raise self._why_not(name, requested or version)

    def shadows(self, name: str) -> list[str]:
        """Versions each call of ``name`` is mirrored to (none without a route)."""
        route = self.cache.routes.get(name)
        view = self.cache.models.get(name)
        return routes.shadows(route, view) if route is not None and view is not None else []

    def decoupled(self, name: str, version: str, runtime_id: str) -> bool:
        """Whether this replica's placement of the model may answer a request zero or many times."""
        placement = self.cache.placements.get((name, version, runtime_id))
        return placement is not None and placement.decoupled

    def _why_not(self, name: str, version: str) -> Exception:
        try:
            view = self.view(name)
            check_version(version)
        except (InvalidArgument, NotFound) as e:
            return e
        route = self.cache.routes.get(name)
        aliases = dict(route.aliases) if route is not None else {}
        what = f"version {version!r} of model {name!r}" if version else f"model {name!r}"
        if version in aliases and version not in view.versions:
            what = f"alias {version!r} of model {name!r} (version {aliases[version]!r})"
            version = aliases[version]
        if version and version not in view.versions:
            known = _listing(list(view.versions)) + (f"; aliases: {_listing(sorted(aliases))}" if aliases else "")
            return NotFound(f"model {name!r} has no version {version!r}; versions: {known}")
        states = self.describe_states(name, version)
        return Unavailable(f"{what} is not ready on any runtime ({states})")

    def describe_states(self, name: str, version: str) -> str:
        parts = []
        for (model, ver, runtime_id), p in sorted(self.cache.placements.items()):
            if model == name and (not version or ver == version):
                state = pb.ModelState.Name(p.state).removeprefix("MODEL_STATE_").lower()
                parts.append(f"version {ver} on {runtime_id}: {state}" + (f": {p.reason}" if p.reason else ""))
        return "; ".join(parts) or "no runtime holds it"
