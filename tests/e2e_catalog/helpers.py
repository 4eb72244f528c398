"""What the catalog tests share: registering catalog models and reading placements from etcd."""

from __future__ import annotations

from meshserve import catalog
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.etcd import read_records, with_etcd

MiB = 1024 * 1024


def register(etcd: str, name: str, artifact: str = "iris/1", memory_mb: int = 1) -> None:
    with_etcd(etcd, lambda client: catalog.register(client, name, "1", kind="python", artifact=artifact,
                                                    memory_bytes=memory_mb * MiB))


def placements(etcd: str) -> dict[tuple[str, str, str], pb.Placement]:
    found = with_etcd(etcd, lambda client: read_records(
        client, keys.PLACEMENTS, lambda key: "/".join(keys.parse_placement_key(key) or ()), pb.Placement))
    return {tuple(k.split("/")): v for k, v in found.items()}  # type: ignore[misc]


def ready_models(etcd: str) -> set[str]:
    return {m for (m, _, _), p in placements(etcd).items() if p.state == pb.MODEL_STATE_READY}
