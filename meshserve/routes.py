"""Changing a model's route: aliases, default version, splits, sticky header, shadows.

The router makes every change (``UpdateRoute``, after checking the caller's ``admin``
action); the CLI only describes it. A route is one etcd key per model, so a change is
one atomic write; it is a compare-and-swap on the key's revision, retried when someone
else wrote in between. Before writing, every version the new route points at is checked
against the registry: it must exist, and an alias target, a split side, a pinned default
and a shadow must be ready somewhere (``wait_s`` waits for that), so a switch only ever
points at a version that can answer. Routers pick the change up from their watch within
milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aetcd

from meshserve.errors import FailedPrecondition, InvalidArgument, NotFound
from meshserve.names import check_model_name, check_version, version_sort_key
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys

CAS_ATTEMPTS = 5


def parse_split(text: str) -> list[tuple[str, int]]:
    """``"1=90,2=10"`` as [("1", 90), ("2", 10)]; the weights must sum to 100."""
    sides = []
    for part in text.split(","):
        version, sep, weight = part.strip().partition("=")
        if not sep or not version.strip() or not weight.strip().isdigit():
            raise InvalidArgument(f"split {text!r}: write VERSION=WEIGHT pairs separated by commas, e.g. 1=90,2=10")
        sides.append((version.strip(), int(weight)))
    return check_split(sides)


def check_split(sides: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``sides``, once each names a valid version once and the weights sum to 100."""
    text = ",".join(f"{v}={w}" for v, w in sides)
    for version, _ in sides:
        check_version(version)
        if not version:
            raise InvalidArgument(f"split {text!r}: every side needs a version or an alias")
    if len({v for v, _ in sides}) != len(sides):
        raise InvalidArgument(f"split {text!r} names a version twice")
    total = sum(w for _, w in sides)
    if total != 100:
        raise InvalidArgument(f"split {text!r}: the weights sum to {total}, not 100")
    return sides


def _states(placements: list[pb.Placement]) -> tuple[set[str], set[str]]:
    """(every version any runtime lists, the versions ready somewhere)."""
    return {p.version for p in placements if p.version}, {
        p.version for p in placements if p.state == pb.MODEL_STATE_READY
    }


def check_route(route: pb.Route, placements: list[pb.Placement], before: pb.Route | None = None) -> list[str]:
    """Problems that forbid writing ``route``, given the model's placements; [] when none.

    Only what differs from ``before`` is checked: a version that went away under an
    older alias does not block an unrelated change.
    """
    before = before or pb.Route()
    known, ready = _states(placements)
    listing = ", ".join(sorted(known, key=version_sort_key)) or "none"
    problems = []
    for alias in route.aliases:
        if alias in known and alias not in before.aliases:
            problems.append(f"alias {alias!r} is also a version of {route.model!r}: callers would reach the version")

    def needs_ready(what: str, name: str) -> None:
        version = route.aliases.get(name, name) if name not in known else name
        if version not in known:
            problems.append(f"{what} {name!r}: {route.model!r} has no such version or alias (versions: {listing})")
        elif version not in ready:
            problems.append(f"{what} {name!r}: version {version} is not ready on any runtime")

    for alias, version in sorted(route.aliases.items()):
        if before.aliases.get(alias) != version:
            needs_ready(f"alias {alias!r} ->", version)
    if route.default_version and route.default_version != before.default_version:
        needs_ready("default version", route.default_version)
    if list(route.splits) != list(before.splits):
        for side in route.splits:
            needs_ready("split version", side.version)
    for shadow in route.shadows:
        if shadow not in before.shadows:
            needs_ready("shadow", shadow)
    return problems


async def read_route(client: aetcd.Client, model: str) -> tuple[pb.Route, int]:
    """The model's route (an empty one if it has none) and its key's mod revision (0: absent)."""
    found = await client.get(keys.route_key(model))
    if found is None:
        return pb.Route(model=model), 0
    return pb.Route.FromString(found.value), found.mod_revision


async def update_route(client: aetcd.Client, model: str, change: Callable[[pb.Route], None],
                       placements: Callable[[], list[pb.Placement]], *, wait_s: float = 0.0) -> pb.Route:
    """Apply ``change`` to the model's route and write it, or raise saying why not.

    ``placements`` gives the model's placements as the registry shows them now (the
    router's cache). NotFound: no runtime lists the model. FailedPrecondition: the new
    route points at a version that is unknown or (after ``wait_s``) not ready. Nothing
    is written then.
    """
    check_model_name(model)
    deadline = time.monotonic() + wait_s
    for _ in range(CAS_ATTEMPTS):
        route, revision = await read_route(client, model)
        before = pb.Route()
        before.CopyFrom(route)
        change(route)
        route.model = model
        while True:
            found = placements()
            if not found:
                raise NotFound(f"model {model!r} is not in the mesh: no runtime lists it")
            problems = check_route(route, found, before)
            if not problems or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        if problems:
            raise FailedPrecondition("route not changed: " + "; ".join(problems))
        route.updated_at_unix_ms = int(time.time() * 1000)
        key = keys.route_key(model)
        empty = not (route.aliases or route.default_version or route.splits or route.shadows)
        tx = client.transactions
        ok, _ = await client.transaction(
            compare=[tx.mod(key) == revision],
            success=[tx.delete(key) if empty else tx.put(key, route.SerializeToString())],
            failure=[],
        )
        if ok:
            return route
    raise FailedPrecondition(f"the route of {model!r} kept changing under this update; try again")


def set_alias(alias: str, version: str) -> Callable[[pb.Route], None]:
    check_version(alias)
    check_version(version)
    if not alias or not version:
        raise InvalidArgument("an alias needs a name and a version")

    def change(route: pb.Route) -> None:
        route.aliases[alias] = version
    return change


def remove_alias(alias: str) -> Callable[[pb.Route], None]:
    def change(route: pb.Route) -> None:
        if alias not in route.aliases:
            raise NotFound(f"model {route.model!r} has no alias {alias!r}; aliases: "
                           f"{', '.join(sorted(route.aliases)) or 'none'}")
        del route.aliases[alias]
    return change


def set_policy(default_version: str, splits: list[tuple[str, int]], sticky_header: str,
               shadows: list[str], sticky_principal: bool = False) -> Callable[[pb.Route], None]:
    """Replace the traffic policy (default, splits, sticky header, shadows); aliases stay."""
    check_version(default_version)
    for shadow in shadows:
        check_version(shadow)
        if not shadow:
            raise InvalidArgument("a shadow needs a version or an alias")
    if splits:
        check_split(splits)
    if (sticky_header or sticky_principal) and not splits:
        raise InvalidArgument("sticky assignment only makes sense with a split")
    if sticky_header != sticky_header.lower() or " " in sticky_header:
        raise InvalidArgument(f"sticky header {sticky_header!r}: gRPC metadata keys are lower case, without spaces")
    if default_version and splits:
        raise InvalidArgument("give either a default version or a split, not both")

    def change(route: pb.Route) -> None:
        route.default_version = default_version
        del route.splits[:]
        route.splits.extend(pb.Split(version=v, weight=w) for v, w in splits)
        route.sticky_header = sticky_header
        route.sticky_principal = sticky_principal
        del route.shadows[:]
        route.shadows.extend(shadows)
    return change
