"""``meshserve alias`` and ``meshserve route``: which version each model's calls reach.

Changes go through the router (``UpdateRoute``), which needs the ``admin`` action on the
model (send a key in $MESHSERVE_API_KEY), checks the change and writes it to etcd.
"""

from __future__ import annotations

from typing import Annotated

import typer

from meshserve import routes
from meshserve.cli.common import RouterOption, TimeoutOption, channel, cli_errors, console
from meshserve.cli.text import Table
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1.registry_pb2_grpc import RegistryServiceStub

alias_app = typer.Typer(help="Named versions (stable, canary, ...) of a model.", no_args_is_help=True)
route_app = typer.Typer(help="Traffic policy of a model: default version, weighted split, shadows.",
                        no_args_is_help=True)

WaitOption = Annotated[float, typer.Option(min=0, help="seconds to wait for the target to become ready")]


def _table(found: dict[str, pb.Route]) -> Table:
    table = Table("model", "aliases", "calls with no version go to", "sticky by", "shadows", title="routes")
    for model, r in sorted(found.items()):
        if r.splits:
            target = ", ".join(f"{s.version}: {s.weight}%" for s in r.splits)
        else:
            target = r.default_version or "latest ready version"
        table.add_row(model, ", ".join(f"{a} -> {v}" for a, v in sorted(r.aliases.items())) or "-", target,
                      ", ".join([f"header {r.sticky_header}"] * bool(r.sticky_header)
                                + ["principal"] * r.sticky_principal) or "-",
                      ", ".join(r.shadows) or "-")
    return table


def _update(router: str, request: pb.UpdateRouteRequest, wait: float, timeout: float) -> None:
    """Send one change to the router; it waits up to ``wait`` seconds for the target to become ready."""
    request.wait_ms = round(wait * 1000)
    with channel(router) as ch:
        response = RegistryServiceStub(ch).UpdateRoute(request, timeout=wait + timeout)
    console.print(_table({request.model: response.route}))


def _policy(default: str, split: str, sticky_header: str, sticky_principal: bool,
            shadows: list[str]) -> pb.UpdateRouteRequest.SetPolicy:
    sides = routes.parse_split(split) if split else []
    routes.set_policy(default, sides, sticky_header, shadows, sticky_principal)  # refuse a bad one before sending
    return pb.UpdateRouteRequest.SetPolicy(
        default_version=default, splits=[pb.Split(version=v, weight=w) for v, w in sides],
        sticky_header=sticky_header, sticky_principal=sticky_principal, shadows=shadows)


@alias_app.command("set")
@cli_errors
def set_alias(
    model: Annotated[str, typer.Argument(help="model name")],
    alias: Annotated[str, typer.Argument(help="alias name, e.g. stable or canary")],
    version: Annotated[str, typer.Argument(help="the version it stands for (must be ready)")],
    wait: WaitOption = 0.0,
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Point ALIAS of MODEL at VERSION; every router follows within a second. Needs admin on MODEL."""
    change = pb.UpdateRouteRequest.SetAlias(alias=alias, version=version)
    _update(router, pb.UpdateRouteRequest(model=model, set_alias=change), wait, timeout)


@alias_app.command("rm")
@cli_errors
def remove_alias(
    model: Annotated[str, typer.Argument(help="model name")],
    alias: Annotated[str, typer.Argument(help="alias name")],
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Remove ALIAS of MODEL; calls naming it get NOT_FOUND. Needs admin on MODEL."""
    change = pb.UpdateRouteRequest.RemoveAlias(alias=alias)
    _update(router, pb.UpdateRouteRequest(model=model, remove_alias=change), 0.0, timeout)


@route_app.command("set")
@cli_errors
def set_route(
    model: Annotated[str, typer.Argument(help="model name")],
    default: Annotated[str, typer.Option(help="pin calls with no version to this version or alias")] = "",
    split: Annotated[str, typer.Option(help="weighted split of calls with no version, e.g. 1=90,2=10")] = "",
    sticky_header: Annotated[str, typer.Option(help="request header that keeps a caller on one side")] = "",
    sticky_principal: Annotated[bool, typer.Option(
        help="keep each authenticated principal on one side")] = False,
    shadow: Annotated[list[str] | None, typer.Option(help="mirror every call to this version (repeatable)")] = None,
    wait: WaitOption = 0.0,
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Set MODEL's traffic policy (replacing the previous one; aliases stay). Needs admin on MODEL."""
    policy = _policy(default, split, sticky_header, sticky_principal, shadow or [])
    _update(router, pb.UpdateRouteRequest(model=model, set_policy=policy), wait, timeout)


@route_app.command("clear")
@cli_errors
def clear_route(
    model: Annotated[str, typer.Argument(help="model name")],
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Back to the latest ready version, no split, no shadows (aliases stay). Needs admin on MODEL."""
    _update(router, pb.UpdateRouteRequest(model=model, set_policy=pb.UpdateRouteRequest.SetPolicy()), 0.0, timeout)


@route_app.command("show")
@cli_errors
def show_routes(
    model: Annotated[str, typer.Argument(help="only this model")] = "",
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Show the aliases and traffic policy of every model you may read (models without one go to their latest
    version)."""
    with channel(router) as ch:
        response = RegistryServiceStub(ch).ListRoutes(pb.ListRoutesRequest(model=model), timeout=timeout)
    console.print(_table({r.model: r for r in response.routes}))
