"""``meshserve alias`` and ``meshserve route``: which version each model's calls reach (kept in etcd)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from meshserve import routes
from meshserve.cli.common import DEFAULT_ETCD, EtcdOption, cli_errors, console
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry.etcd import with_etcd

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


def _update(etcd: str, model: str, change: Callable[[pb.Route], None], wait: float) -> None:
    route = with_etcd(etcd, lambda client: routes.update_route(client, model, change, wait_s=wait))
    console.print(_table({model: route}))


@alias_app.command("set")
@cli_errors
def set_alias(
    model: Annotated[str, typer.Argument(help="model name")],
    alias: Annotated[str, typer.Argument(help="alias name, e.g. stable or canary")],
    version: Annotated[str, typer.Argument(help="the version it stands for (must be ready)")],
    wait: WaitOption = 0.0,
    etcd: EtcdOption = DEFAULT_ETCD,
) -> None:
    """Point ALIAS of MODEL at VERSION; every router follows within a second."""
    _update(etcd, model, routes.set_alias(alias, version), wait)


@alias_app.command("rm")
@cli_errors
def remove_alias(
    model: Annotated[str, typer.Argument(help="model name")],
    alias: Annotated[str, typer.Argument(help="alias name")],
    etcd: EtcdOption = DEFAULT_ETCD,
) -> None:
    """Remove ALIAS of MODEL; calls naming it get NOT_FOUND."""
    _update(etcd, model, routes.remove_alias(alias), 0.0)


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
    etcd: EtcdOption = DEFAULT_ETCD,
) -> None:
    """Set MODEL's traffic policy (replacing the previous one; aliases stay)."""
    sides = routes.parse_split(split) if split else []
    _update(etcd, model, routes.set_policy(default, sides, sticky_header, shadow or [], sticky_principal), wait)


@route_app.command("clear")
@cli_errors
def clear_route(model: Annotated[str, typer.Argument(help="model name")], etcd: EtcdOption = DEFAULT_ETCD) -> None:
    """Back to the latest ready version, no split, no shadows (aliases stay)."""
    _update(etcd, model, routes.set_policy("", [], "", []), 0.0)


@route_app.command("show")
@cli_errors
def show_routes(
    model: Annotated[str, typer.Argument(help="only this model")] = "",
    etcd: EtcdOption = DEFAULT_ETCD,
) -> None:
    """Show every model's aliases and traffic policy (models without one go to their latest version)."""
    found = with_etcd(etcd, routes.read_routes)
    console.print(_table({m: r for m, r in found.items() if not model or m == model}))
