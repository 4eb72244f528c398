"""Entry point of the ``meshserve`` command.

    meshserve up                      # etcd, router and Python runtime; Ctrl-C stops them
    meshserve models                  # models in the mesh
    meshserve runtimes                # live runtimes
    meshserve infer iris --json '{"features": [[5.1, 3.5, 1.4, 0.2]]}'
    meshserve top                     # live calls/s, errors, p50/p99 per model (routers' metrics)
    meshserve router --port 8001 ...  # one service in the foreground
    meshserve runtime python --model-repository examples/models ...
    meshserve audit query --model iris  # the audit trail (also: tail, verify, export)
    meshserve alias set iris stable 2   # named versions
    meshserve route set iris --split 1=90,2=10 --shadow 3  # traffic policy
    meshserve pipeline apply examples/pipelines/sentiment.yaml
    meshserve keys create --principal alice   # an API key (printed once)
    meshserve policy allow --principal alice --models 'iris*' --actions infer,metadata
    meshserve certs init tls/ && meshserve certs issue tls/ router   # the mesh CA, certificates
"""

from __future__ import annotations

import typer

from meshserve.cli.access import keys_app, policy_app
from meshserve.cli.audit import audit_app
from meshserve.cli.certs import certs_app
from meshserve.cli.common import cli_errors
from meshserve.cli.infer import infer
from meshserve.cli.pipelines import pipeline_app
from meshserve.cli.registry import models_app, runtimes
from meshserve.cli.routes import alias_app, route_app
from meshserve.cli.secrets import secrets_app
from meshserve.cli.services import PASS_THROUGH, router, runtime_app
from meshserve.cli.top import top
from meshserve.cli.up import up
from meshserve.tls import MeshTls

app = typer.Typer(
    name="meshserve",
    help="One gRPC door to many models: run a local mesh, list what it serves, call a model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
@cli_errors
def _identity() -> None:
    """Commands speak TLS when $MESHSERVE_TLS_CA, _CERT and _KEY name a mesh certificate."""
    MeshTls.from_env()  # unusable files fail here, before the command does anything


app.command()(up)
app.add_typer(models_app, name="models")
app.command()(runtimes)
app.command()(infer)
app.command()(top)
app.command(context_settings=PASS_THROUGH, add_help_option=False)(router)
app.add_typer(runtime_app, name="runtime")
app.add_typer(audit_app, name="audit")
app.add_typer(alias_app, name="alias")
app.add_typer(route_app, name="route")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(certs_app, name="certs")
app.add_typer(secrets_app, name="secrets")


if __name__ == "__main__":
    app()
