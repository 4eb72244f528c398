"""``meshserve models`` and ``meshserve runtimes``: the registry as the router sees it."""

from __future__ import annotations

from typing import Annotated

import typer

from meshserve.cli.common import DEFAULT_ROUTER, RouterOption, TimeoutOption, channel, cli_errors, console
from meshserve.cli.tables import models_table, runtimes_table
from meshserve.protos.meshserve.registry.v1 import registry_pb2, registry_pb2_grpc


@cli_errors
def models(
    name: Annotated[str, typer.Argument(help="only this model")] = "",
    router: RouterOption = DEFAULT_ROUTER,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List every model in the mesh: versions, runtime kind, ready replicas, state."""
    with channel(router) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        response = stub.ListModels(registry_pb2.ListModelsRequest(name=name), timeout=timeout)
    console.print(models_table(response.placements, response.pipelines))


@cli_errors
def runtimes(router: RouterOption = DEFAULT_ROUTER, timeout: TimeoutOption = 10.0) -> None:
    """List every live runtime: id, kind, address, ready models."""
    with channel(router) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        response = stub.ListRuntimes(registry_pb2.ListRuntimesRequest(), timeout=timeout)
    console.print(runtimes_table(response.runtimes))
