"""What every CLI command shares: the console, the router address, one-line errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import grpc
import typer
from rich.console import Console

from meshserve.errors import MeshError, from_rpc_error
from meshserve.grpcutil.server import channel_options
from meshserve.local.process import ProcessFailed
from meshserve.settings import MiB
from meshserve.tls import MeshTls
from meshserve.tls import channel as mesh_channel

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DEFAULT_ROUTER = "127.0.0.1:8001"

RouterOption = Annotated[
    str,
    typer.Option("--router", envvar="MESHSERVE_ROUTER", help="router host:port", show_default=True),
]
DEFAULT_ETCD = "127.0.0.1:2379"
EtcdOption = Annotated[str, typer.Option("--etcd", envvar="MESHSERVE_ETCD", help="etcd host:port of the mesh")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="seconds to wait for each call", min=0.1)
]


class UserError(Exception):
    """A mistake on the command line; printed as one line, no traceback."""


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def describe_rpc_error(err: grpc.RpcError, target: str) -> str:
    mesh = from_rpc_error(err)
    if mesh.code == grpc.StatusCode.UNAVAILABLE and "connect" in mesh.message.lower():
        return f"cannot reach the router at {target} (is `meshserve up` running?): {mesh.message}"
    return f"{mesh.code.name}: {mesh.message}"


P = ParamSpec("P")
R = TypeVar("R")


def cli_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into one clear line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except grpc.RpcError as e:
            target = str(kwargs.get("router", "the router"))
            fail(describe_rpc_error(e, target))
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
