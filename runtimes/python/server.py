"""The Python runtime: the common :class:`RuntimeServer` with the Python loaders."""

from __future__ import annotations

from collections.abc import Sequence

from meshserve import runtime
from meshserve.runtime import RuntimeServer

from .frameworks import PythonLoader
from .settings import PythonRuntimeSettings

KIND = "python"
PythonRuntime = RuntimeServer  # the name callers and tests know


def create_server(settings: PythonRuntimeSettings, *, register: bool = True) -> RuntimeServer:
    """A Python runtime ready to ``start()``; ``register=False`` keeps it out of etcd."""
    return RuntimeServer(settings, KIND, PythonLoader(), register=register)


async def serve(settings: PythonRuntimeSettings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    await runtime.serve(create_server(settings))


def main(argv: Sequence[str] | None = None) -> None:
    runtime.main(PythonRuntimeSettings, create_server, argv, prog="python -m meshserve.runtimes.python")
