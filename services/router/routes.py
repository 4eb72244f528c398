"""A model's route (aliases, default version, weighted splits, shadows) applied to one call.

Pure functions of the route, the model's registry view and the call's metadata; the
resolver calls :func:`choose` only for models that have a route.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.cache import ModelView

Metadata = Sequence[tuple[str, str | bytes]]


def target(route: pb.Route, view: ModelView, name: str) -> str:
    """The version a version-or-alias ``name`` stands for (a version wins over an alias)."""
    if name in view.versions or name not in route.aliases:
        return name
    return route.aliases[name]


def choose(route: pb.Route, view: ModelView, version: str, metadata: Metadata, principal: str = "") -> str:
    """The concrete version a call asking for ``version`` goes to ("" = the latest ready).

    ``principal`` is the authenticated caller ("" when there is none), for sticky splits.
    """
    if version:
        return target(route, view, version)
    if route.splits:
        return _split(route, view, metadata, principal)
    return target(route, view, route.default_version) if route.default_version else ""


def _split(route: pb.Route, view: ModelView, metadata: Metadata, principal: str) -> str:
    """A weighted draw among the split's ready sides (all sides, if none is ready).

    With a sticky header (or sticky principals), the caller's header value (or principal
    name) picks the same point of the 0..100 range every time, so it stays on one side
    for as long as the split is unchanged.
    """
    sides = [(target(route, view, s.version), s.weight) for s in route.splits]
    ready = [(v, w) for v, w in sides if v in view.ready and w] or sides
    total = sum(w for _, w in ready)
    point = _point(route, metadata, principal) * total
    for version, weight in ready:
        point -= weight
        if point < 0:
            return version
    return ready[-1][0]


def _point(route: pb.Route, metadata: Metadata, principal: str) -> float:
    """Where in [0, 1) this call falls: from the sticky header or principal, else at random."""
    if route.sticky_header:
        for key, value in metadata:
            if key == route.sticky_header:
                return _hash(route, value if isinstance(value, bytes) else value.encode())
    if route.sticky_principal and principal:
        return _hash(route, b"principal\0" + principal.encode())
    return random.random()  # noqa: S311 - a traffic split, not a secret


def _hash(route: pb.Route, value: bytes) -> float:
    return zlib.crc32(route.model.encode() + b"\0" + value) / 2**32


def shadows(route: pb.Route, view: ModelView) -> list[str]:
    """The versions every call is mirrored to."""
    return [target(route, view, s) for s in route.shadows]
