"""``meshserve router`` and ``meshserve runtime python``: one service in the foreground.

Every argument after the command goes to the service unchanged (``--help`` included), so
these accept exactly the flags and ``MESHSERVE_<SERVICE>_`` variables of the service.
"""

from __future__ import annotations

import os
import sys

import typer

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _exec_module(module: str, args: list[str]) -> None:
    # exec, not a child: signals and the exit status belong to the service itself.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])  # noqa: S606


def router(ctx: typer.Context) -> None:
    """Run the router (flags: meshserve router --help)."""
    _exec_module("meshserve.services.router", list(ctx.args))


runtime_app = typer.Typer(help="Run a runtime in the foreground.", no_args_is_help=True)


@runtime_app.command("python", context_settings=PASS_THROUGH, add_help_option=False)
def python_runtime(ctx: typer.Context) -> None:
    """Run the Python runtime (flags: meshserve runtime python --help)."""
    _exec_module("meshserve.runtimes.python", list(ctx.args))


@runtime_app.command("r", context_settings=PASS_THROUGH, add_help_option=False)
def r_runtime(ctx: typer.Context) -> None:
    """Run the R runtime (flags: meshserve runtime r --help)."""
    _exec_module("meshserve.runtimes.r", list(ctx.args))


@runtime_app.command("triton", context_settings=PASS_THROUGH, add_help_option=False)
def triton_registrar(ctx: typer.Context) -> None:
    """Register a running Triton server and mirror its models (flags: meshserve runtime triton --help)."""
    _exec_module("meshserve.runtimes.triton", list(ctx.args))
