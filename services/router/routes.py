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


def choose(route: pb.Route, view: ModelView, version: str, metadata: Metadata) -> str:
    """The concrete version a call asking for ``version`` goes to ("" = the latest ready)."""
    if version:
        return target(route, view, version)
    if route.splits:
        return _split(route, view, metadata)
    return target(route, view, route.default_version) if route.default_version else ""


def _split(route: pb.Route, view: ModelView, metadata: Metadata) -> str:
    """A weighted draw among the split's ready sides (all sides, if none is ready).

    With a sticky header, the caller's header value picks the same point of the 0..100
    range every time, so it stays on one side for as long as the split is unchanged.
    """
    sides = [(target(route, view, s.version), s.weight) for s in route.splits]
    ready = [(v, w) for v, w in sides if v in view.ready and w] or sides
    total = sum(w for _, w in ready)
    point = _point(route, metadata) * total
    for version, weight in ready:
        point -= weight
        if point < 0:
            return version
    return ready[-1][0]


def _point(route: pb.Route, metadata: Metadata) -> float:
    """Where in [0, 1) this call falls: from the sticky header's value, else at random."""
    if route.sticky_header:
        for key, value in metadata:
            if key == route.sticky_header:
                raw = value if isinstance(value, bytes) else value.encode()
                return zlib.crc32(route.model.encode() + b"\0" + raw) / 2**32
    return random.random()  # noqa: S311 - a traffic split, not a secret


def shadows(route: pb.Route, view: ModelView) -> list[str]:
    """The versions every call is mirrored to."""
    return [target(route, view, s) for s in route.shadows]
