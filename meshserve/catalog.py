"""The catalog: models registered in etcd without being loaded anywhere.

One record per model (``/meshserve/v1/catalog/<model>``) maps each version to the kind of
runtime that serves it, its artifact folder and a memory estimate. Routers place a
version on a runtime at its first call (see services/router/placement.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import aetcd

from meshserve.errors import FailedPrecondition, InvalidArgument, NotFound
from meshserve.names import check_model_name, check_version
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys

KINDS = ("python", "r", "triton")
CAS_ATTEMPTS = 5


async def _update(client: aetcd.Client, name: str, change: Callable[[pb.CatalogModel], None]) -> pb.CatalogModel:
    """Apply ``change`` to the model's record in one compare-and-swap (retried if someone wrote meanwhile)."""
    key = keys.catalog_key(name)
    for _ in range(CAS_ATTEMPTS):
        found = await client.get(key)
        entry = pb.CatalogModel.FromString(found.value) if found is not None else pb.CatalogModel(model=name)
        revision = found.mod_revision if found is not None else 0
        change(entry)
        tx = client.transactions
        write = tx.put(key, entry.SerializeToString()) if entry.versions else tx.delete(key)
        ok, _ = await client.transaction(compare=[tx.mod(key) == revision], success=[write], failure=[])
        if ok:
            return entry
    raise FailedPrecondition(f"the catalog record of {name!r} kept changing under this update; try again")


async def register(client: aetcd.Client, name: str, version: str, *, kind: str, artifact: str,
                   memory_bytes: int = 0) -> pb.CatalogModel:
    """Add (or replace) ``name`` ``version`` in the catalog."""
    check_model_name(name)
    check_version(version)
    if not version:
        raise InvalidArgument("a catalog entry needs a version")
    if kind not in KINDS:
        raise InvalidArgument(f"runtime kind {kind!r} is not one of {', '.join(KINDS)}")
    if not artifact or "\0" in artifact or ".." in artifact.split("/"):
        raise InvalidArgument(f"artifact {artifact!r}: give the version's folder, without '..'")
    if memory_bytes < 0:
        raise InvalidArgument("the memory estimate cannot be negative")

    def add(entry: pb.CatalogModel) -> None:
        entry.versions[version].CopyFrom(pb.CatalogVersion(
            runtime_kind=kind, artifact=artifact, memory_bytes=memory_bytes,
            registered_at_unix_ms=int(time.time() * 1000)))
    return await _update(client, name, add)


async def unregister(client: aetcd.Client, name: str, version: str = "") -> None:
    """Remove one version of ``name`` (every version when ``version`` is empty)."""
    check_model_name(name)

    def remove(entry: pb.CatalogModel) -> None:
        if not entry.versions:
            raise NotFound(f"model {name!r} is not in the catalog")
        if version and version not in entry.versions:
            raise NotFound(f"model {name!r} has no version {version!r} in the catalog; "
                           f"versions: {', '.join(sorted(entry.versions))}")
        for v in [version] if version else list(entry.versions):
            del entry.versions[v]
    await _update(client, name, remove)
