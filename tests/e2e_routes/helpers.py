"""Calling ``echo`` and changing its route, for the routes tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aetcd
import grpc
import numpy as np

from meshserve import routes
from meshserve.auth import apikeys
from meshserve.errors import from_rpc_error
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1.registry_pb2_grpc import RegistryServiceStub
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


def set_alias(alias: str, version: str) -> pb.UpdateRouteRequest:
    return pb.UpdateRouteRequest(model="echo", set_alias=pb.UpdateRouteRequest.SetAlias(alias=alias, version=version))


def set_policy(default: str = "", splits: Sequence[tuple[str, int]] = (), sticky_header: str = "",
               shadows: Sequence[str] = (), sticky_principal: bool = False) -> pb.UpdateRouteRequest:
    return pb.UpdateRouteRequest(model="echo", set_policy=pb.UpdateRouteRequest.SetPolicy(
        default_version=default, splits=[pb.Split(version=v, weight=w) for v, w in splits],
        sticky_header=sticky_header, shadows=shadows, sticky_principal=sticky_principal))


def update(router: str, request: pb.UpdateRouteRequest, wait_s: float = 0.0) -> pb.Route:
    """Change echo's route through the router, as `meshserve alias` / `meshserve route` do; MeshError if refused."""
    request.wait_ms = round(wait_s * 1000)
    with grpc.insecure_channel(router) as channel:
        try:
            return RegistryServiceStub(channel).UpdateRoute(request, timeout=wait_s + 10).route
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e


def forget_route(etcd: str) -> None:
    """Delete echo's route (aliases and policy) from etcd, as an operator with etcd access can."""
    async def delete(client: aetcd.Client) -> None:
        await client.delete(keys.route_key("echo"))
    with_etcd(etcd, delete)


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
