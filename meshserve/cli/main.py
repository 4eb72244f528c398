"""Entry point of the ``meshserve`` command.

    meshserve up                      # etcd, router and Python runtime; Ctrl-C stops them
    meshserve models                  # models in the mesh
    meshserve runtimes                # live runtimes
    meshserve infer iris --json '{"features": [[5.1, 3.5, 1.4, 0.2]]}'
    meshserve router --port 8001 ...  # one service in the foreground
    meshserve runtime python --model-repository examples/models ...
    meshserve audit query --model iris  # the audit trail (also: tail, verify, export)
"""

from __future__ import annotations

import typer

from meshserve.cli.audit import audit_app
from meshserve.cli.infer import infer
from meshserve.cli.registry import models, runtimes
from meshserve.cli.services import PASS_THROUGH, router, runtime_app
from meshserve.cli.up import up

app = typer.Typer(
    name="meshserve",
    help="One gRPC door to many models: run a local mesh, list what it serves, call a model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(up)
app.command()(models)
app.command()(runtimes)
app.command()(infer)
app.command(context_settings=PASS_THROUGH, add_help_option=False)(router)
app.add_typer(runtime_app, name="runtime")
app.add_typer(audit_app, name="audit")


if __name__ == "__main__":
    app()
