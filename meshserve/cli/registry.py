"""``meshserve models`` and ``meshserve runtimes``: the registry as the router sees it."""

from __future__ import annotations

from typing import Annotated

import typer

from meshserve import catalog
from meshserve.cli.common import (
    ROUTER,
    ROUTER_HELP,
    EtcdOption,
    RouterOption,
    TimeoutOption,
    channel,
    cli_errors,
    console,
    mesh_address,
)
from meshserve.cli.tables import catalog_table, models_table, runtimes_table
from meshserve.protos.meshserve.registry.v1 import registry_pb2, registry_pb2_grpc
from meshserve.registry.etcd import with_etcd
from meshserve.settings import MiB

models_app = typer.Typer(help="The models of the mesh; register catalog models that load on their first call.",
                         invoke_without_command=True)


@models_app.callback()
@cli_errors
def models(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="only this model")] = "",
    # Read here, not by the option (the subcommands take no router).
    router: Annotated[str, typer.Option("--router", envvar=ROUTER.env, help=ROUTER_HELP)] = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """List every model in the mesh: versions, runtime kind, ready replicas, state."""
    if ctx.invoked_subcommand is not None:
        return
    _list_models(name=name, router=mesh_address(ROUTER, router), timeout=timeout)


@cli_errors
def _list_models(*, name: str, router: str, timeout: float) -> None:
    with channel(router) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        response = stub.ListModels(registry_pb2.ListModelsRequest(name=name), timeout=timeout)
    console.print(models_table(response.placements, response.pipelines, response.catalog))


@models_app.command("register")
@cli_errors
def register(
    name: Annotated[str, typer.Argument(help="model name callers will use")],
    version: Annotated[str, typer.Argument(help="its version")],
    kind: Annotated[str, typer.Option(help="runtime kind that serves it: python, r, ...")],
    artifact: Annotated[str, typer.Option(
        help="the version's folder (with manifest.yaml), relative to the runtimes' model repository or absolute "
             "within their --artifact-roots")],
    memory_mb: Annotated[float, typer.Option(min=0, help="memory it takes loaded (0: the runtime estimates)")] = 0.0,
    etcd: EtcdOption = "",
) -> None:
    """Add NAME VERSION to the catalog: loaded on a runtime with room at its first call, not before."""
    entry = with_etcd(etcd, lambda client: catalog.register(
        client, name, version, kind=kind, artifact=artifact, memory_bytes=int(memory_mb * MiB)))
    console.print(f"registered {name} version {version} ({kind}, {artifact}); it loads on its first call")
    console.print(catalog_table([entry]))


@models_app.command("unregister")
@cli_errors
def unregister(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Argument(help="one version (default: every version)")] = "",
    etcd: EtcdOption = "",
) -> None:
    """Remove NAME (or one VERSION) from the catalog; runtimes holding it keep it until they unload it."""
    with_etcd(etcd, lambda client: catalog.unregister(client, name, version))
    console.print(f"unregistered {name}{' version ' + version if version else ''}")


@cli_errors
def runtimes(router: RouterOption = "", timeout: TimeoutOption = 10.0) -> None:
    """List every live runtime: id, kind, address, ready models."""
    with channel(router) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        response = stub.ListRuntimes(registry_pb2.ListRuntimesRequest(), timeout=timeout)
    console.print(runtimes_table(response.runtimes))
