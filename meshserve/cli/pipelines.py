"""``meshserve pipeline``: apply, show and remove pipelines (kept in etcd, run by routers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import aetcd
import typer
from rich.table import Table

from meshserve import pipelines
from meshserve.cli.common import DEFAULT_ETCD, DEFAULT_ROUTER, EtcdOption, RouterOption, cli_errors, console
from meshserve.errors import NotFound
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.registry import keys
from meshserve.registry.etcd import read_records, with_etcd

pipeline_app = typer.Typer(help="Pipelines: named DAGs of model calls, called like a model.", no_args_is_help=True)


def _table(found: list[pb.Pipeline]) -> Table:
    table = Table("pipeline", "step", "model", "version", "inputs from", title="pipelines")
    for p in sorted(found, key=lambda p: p.name):
        for i, step in enumerate(p.steps):
            table.add_row(p.name if i == 0 else "", step.name, step.model, step.version or "-",
                          ", ".join(f"{k} <- {v}" for k, v in sorted(step.inputs.items())))
        table.add_row("", "(outputs)", "", "", ", ".join(f"{o.name} <- {o.source}" for o in p.outputs))
    return table


async def _read(client: aetcd.Client) -> list[pb.Pipeline]:
    return list((await read_records(client, keys.PIPELINES, keys.parse_pipeline_key, pb.Pipeline)).values())


def _remove(etcd: str, name: str) -> None:
    async def remove(client: aetcd.Client) -> None:
        if not await client.delete(keys.pipeline_key(name)):
            raise NotFound(f"no pipeline named {name!r}")
    with_etcd(etcd, remove)


@pipeline_app.command("apply")
@cli_errors
def apply(
    file: Annotated[Path, typer.Argument(help="pipeline YAML file", exists=True, dir_okay=False)],
    router: RouterOption = DEFAULT_ROUTER,
    etcd: EtcdOption = DEFAULT_ETCD,
) -> None:
    """Validate FILE against the running mesh and store it; every router serves it within a second."""
    applied = asyncio.run(pipelines.apply(pipelines.load(file), router=router, etcd=etcd))
    console.print(_table([applied]))


@pipeline_app.command("show")
@cli_errors
def show(name: Annotated[str, typer.Argument(help="only this pipeline")] = "", etcd: EtcdOption = DEFAULT_ETCD) -> None:
    """Show the stored pipelines and their steps."""
    console.print(_table([p for p in with_etcd(etcd, _read) if not name or p.name == name]))


@pipeline_app.command("rm")
@cli_errors
def remove(name: Annotated[str, typer.Argument(help="pipeline name")], etcd: EtcdOption = DEFAULT_ETCD) -> None:
    """Remove a pipeline; calls to it get NOT_FOUND."""
    _remove(etcd, name)
    console.print(f"pipeline {name!r} removed")
