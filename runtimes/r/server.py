"""The R runtime: the common :class:`RuntimeServer` with the R loader."""

from __future__ import annotations

from collections.abc import Sequence

from meshserve import runtime
from meshserve.runtime import RuntimeServer

from .loader import RLoader
from .settings import RRuntimeSettings

KIND = "r"


def create_server(settings: RRuntimeSettings, *, register: bool = True) -> RuntimeServer:
    """An R runtime ready to ``start()``; ``register=False`` keeps it out of etcd."""
    return RuntimeServer(settings, KIND, RLoader(settings), register=register)


def main(argv: Sequence[str] | None = None) -> None:
    runtime.main(RRuntimeSettings, create_server, argv, prog="python -m meshserve.runtimes.r")
