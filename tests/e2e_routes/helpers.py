"""Calling ``echo`` and changing its route, for the routes tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import aetcd
import grpc
import numpy as np

from meshserve import routes
from meshserve.auth import apikeys
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.etcd import connect, with_etcd

X = np.zeros(1, dtype=np.float32)


def echo(stub: oip_grpc.GRPCInferenceServiceStub, version: str = "",
         metadata: Sequence[tuple[str, str]] = ()) -> int:
    """The version that answered a call of echo naming ``version``."""
    reply = stub.ModelInfer(build_request("echo", {"x": X}, model_version=version), timeout=10,
                            metadata=tuple(metadata))
    return int(decode_response(reply)["y"][0])


def ready_versions(router: str) -> set[str]:
    with grpc.insecure_channel(router) as channel:
        index = oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5)
    return {m.version for m in index.models if m.name == "echo" and m.state == "READY"}


def update(etcd: str, change: Callable[[pb.Route], None], wait_s: float = 0.0) -> pb.Route:
    """Change echo's route as `meshserve alias` / `meshserve route` do."""
    async def run() -> pb.Route:
        client = await connect(etcd, wait=3)
        try:
            return await routes.update_route(client, "echo", change, wait_s=wait_s)
        finally:
            await client.close()
    return asyncio.run(run())


def current(etcd: str) -> pb.Route:
    async def run() -> pb.Route:
        client = await connect(etcd, wait=3)
        try:
            return (await routes.read_route(client, "echo"))[0]
        finally:
            await client.close()
    return asyncio.run(run())


def grant(etcd: str, principal: str, *roles: str) -> tuple[str, str]:
    """A new API key for ``principal`` stored in etcd: (token, key id)."""
    token, record = apikeys.create(principal, list(roles))

    async def put(client: aetcd.Client) -> None:
        await client.put(keys.api_key_key(record.key_id), record.SerializeToString())
    with_etcd(etcd, put)
    return token, record.key_id


def allow_role(etcd: str, role: str, model: str, *actions: str) -> None:
    rule = auth_pb2.AccessRule(id=f"{role}-{model}", role=role, models=[model], actions=list(actions))

    async def put(client: aetcd.Client) -> None:
        await client.put(keys.access_rule_key(rule.id), rule.SerializeToString())
    with_etcd(etcd, put)
