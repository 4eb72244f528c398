"""``meshserve pipeline``: apply, show and remove pipelines (run by routers).

Changes go through the router (``ApplyPipeline``, ``DeletePipeline``), which needs the
``admin`` action on the pipeline's name (send a key in $MESHSERVE_API_KEY), checks the
pipeline against the mesh and writes it to etcd.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshserve import pipelines
from meshserve.cli.common import RouterOption, TimeoutOption, channel, cli_errors, console
from meshserve.cli.text import Table
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1.registry_pb2_grpc import RegistryServiceStub

pipeline_app = typer.Typer(help="Pipelines: named DAGs of model calls, called like a model.", no_args_is_help=True)


def _table(found: list[pb.Pipeline]) -> Table:
    table = Table("pipeline", "step", "model", "version", "inputs from", title="pipelines")
    for p in sorted(found, key=lambda p: p.name):
        for i, step in enumerate(p.steps):
            table.add_row(p.name if i == 0 else "", step.name, step.model, step.version or "-",
                          ", ".join(f"{k} <- {v}" for k, v in sorted(step.inputs.items())))
        table.add_row("", "(outputs)", "", "", ", ".join(f"{o.name} <- {o.source}" for o in p.outputs))
    return table


@pipeline_app.command("apply")
@cli_errors
def apply(
    file: Annotated[Path, typer.Argument(help="pipeline YAML file", exists=True, dir_okay=False)],
    router: RouterOption = "",
    timeout: TimeoutOption = 30.0,
) -> None:
    """Check FILE against the running mesh and store it; every router serves it within a second.

    Needs admin on the pipeline's name and infer on every step's model.
    """
    pipeline = pipelines.load(file)  # a malformed file is refused here, before anything is sent
    with channel(router) as ch:
        response = RegistryServiceStub(ch).ApplyPipeline(pb.ApplyPipelineRequest(pipeline=pipeline),
                                                         timeout=timeout)
    console.print(_table([response.pipeline]))


@pipeline_app.command("show")
@cli_errors
def show(
    name: Annotated[str, typer.Argument(help="only this pipeline")] = "",
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Show the pipelines you may read and their steps."""
    with channel(router) as ch:
        response = RegistryServiceStub(ch).ListModels(pb.ListModelsRequest(name=name), timeout=timeout)
    console.print(_table(list(response.pipelines)))


@pipeline_app.command("rm")
@cli_errors
def remove(
    name: Annotated[str, typer.Argument(help="pipeline name")],
    router: RouterOption = "",
    timeout: TimeoutOption = 10.0,
) -> None:
    """Remove a pipeline; calls to it get NOT_FOUND. Needs admin on NAME."""
    with channel(router) as ch:
        RegistryServiceStub(ch).DeletePipeline(pb.DeletePipelineRequest(name=name), timeout=timeout)
    console.print(f"pipeline {name!r} removed")
