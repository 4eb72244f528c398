"""What every CLI command shares: the console, the mesh's addresses, one-line errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import grpc
import typer
from rich.console import Console
from rich.text import Text

from meshserve.cli import context as mesh_context
from meshserve.cli.text import printable
from meshserve.errors import MeshError, from_rpc_error
from meshserve.grpcutil.server import channel_options
from meshserve.local.process import ProcessFailed
from meshserve.settings import MiB
from meshserve.tls import ENV_PREFIX, MeshTls, from_paths
from meshserve.tls import channel as mesh_channel

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Service:
    """A mesh service a command talks to: how it is named and where its address can be given."""

    name: str  # the context file's field
    flag: str
    env: str
    what: str  # in messages: "the router at 127.0.0.1:8001"


ROUTER = Service("router", "--router", "MESHSERVE_ROUTER", "the router")
ETCD = Service("etcd", "--etcd", "MESHSERVE_ETCD", "etcd")
AUDIT = Service("audit", "--audit", "MESHSERVE_AUDIT", "the audit service")
METRICS = Service("metrics", "--metrics", "MESHSERVE_METRICS", "the routers' metrics")


def _mesh_context(service: Service) -> mesh_context.MeshContext:
    """The running mesh ``meshserve up`` recorded; else the command fails, naming the flag and variable."""
    path = mesh_context.context_path()
    found = mesh_context.read(path)
    give = f"pass {service.flag} (or set {service.env})"
    if found is None:
        fail(f"no address for {service.what}: {give}, or start a mesh with `meshserve up`, which records its "
             f"addresses in {path}")
    if not found.running:
        fail(f"no address for {service.what}: the mesh recorded in {path} is gone (meshserve up, pid {found.pid}, "
             f"is not running); {give}, or start it again with `meshserve up`")
    if found.tls and not any(os.environ.get(ENV_PREFIX + name, "").strip() for name in ("CA", "CERT", "KEY")):
        try:  # its operator certificate, unless the environment names one: this command's identity (from_env)
            from_paths(*(Path(f) for f in found.tls))
        except MeshError as e:
            fail(f"the mesh recorded in {path} uses TLS, and its operator certificate cannot be used: {e}")
        os.environ.update({ENV_PREFIX + name: str(f) for name, f in zip(("CA", "CERT", "KEY"), found.tls, strict=True)})
    if not os.environ.get("MESHSERVE_ETCD_USER"):  # etcd's operator, outside dev mode, unless the environment says
        os.environ.update(found.etcd_env)
    return found


def mesh_address(service: Service, given: str) -> str:
    """The address of ``service``: the flag or variable given, else the one of the mesh ``meshserve up`` runs.

    Without either the command fails, saying which flag and variable give it: it never
    guesses a default port (which on a shared host may be someone else's mesh).
    """
    if given:
        return given
    found = _mesh_context(service)
    address = found.address(service.name)
    if not address:
        fail(f"the mesh recorded in {mesh_context.context_path()} (meshserve up, pid {found.pid}) runs no "
             f"{service.what.removeprefix('the ')}: pass {service.flag} (or set {service.env})")
    return address


def metrics_addresses(given: list[str]) -> list[str]:
    """The routers' metrics addresses: those given, else every router's of the mesh ``meshserve up`` runs."""
    if given:
        return given
    found = _mesh_context(METRICS)
    if not found.metrics:
        fail(f"the mesh recorded in {mesh_context.context_path()} serves no router metrics: pass {METRICS.flag} "
             f"(or set {METRICS.env})")
    return found.metrics


def _router(given: str) -> str:
    return mesh_address(ROUTER, given)


def _etcd(given: str) -> str:
    return mesh_address(ETCD, given)


ROUTER_HELP = "router host:port (default: the router of the mesh `meshserve up` runs)"
RouterOption = Annotated[str, typer.Option("--router", envvar=ROUTER.env, callback=_router, help=ROUTER_HELP)]
EtcdOption = Annotated[str, typer.Option(
    "--etcd", envvar=ETCD.env, callback=_etcd,
    help="etcd host:port of the mesh (default: the etcd of the mesh `meshserve up` runs)")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="seconds to wait for each call", min=0.1)
]


class UserError(Exception):
    """A mistake on the command line; printed as one line, no traceback."""


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` (escaped, never read as markup: it may quote a peer) as one error and exit."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", printable(message, prose=True)), soft_wrap=True)
    raise typer.Exit(code)


def describe_rpc_error(err: grpc.RpcError, target: str, service: Service = ROUTER) -> str:
    """One line for an error a mesh service answered, naming the service and the address it came from."""
    mesh = from_rpc_error(err)
    where = f"{service.what} at {target}" if target else service.what
    if mesh.code == grpc.StatusCode.UNAVAILABLE and "connect" in mesh.message.lower():
        return f"cannot reach {where} (is `meshserve up` running?): {mesh.message}"
    return f"{mesh.code.name}: {mesh.message} (from {where})"


P = ParamSpec("P")
R = TypeVar("R")


def cli_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into one clear line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except grpc.RpcError as e:
            fail(describe_rpc_error(e, str(kwargs.get("router", ""))))  # as resolved by the option
        except (MeshError, UserError, ProcessFailed) as e:
            fail(str(e))
        except OSError as e:
            fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))

    return wrapper


API_KEY_ENV = "MESHSERVE_API_KEY"


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <key>`` to every call."""

    def __init__(self, key: str) -> None:
        self.header = ("authorization", f"Bearer {key}")

    def _with_key(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)


def channel(target: str) -> grpc.Channel:
    """A channel to a mesh service; calls carry the API key in $MESHSERVE_API_KEY, when set.

    TLS with the mesh certificate in $MESHSERVE_TLS_CA/_CERT/_KEY, when set.
    """
    plain = mesh_channel(target, MeshTls.from_env(), options=channel_options(64 * MiB))
    key = os.environ.get(API_KEY_ENV, "").strip()
    return grpc.intercept_channel(plain, _Bearer(key)) if key else plain
