"""Benchmark plumbing: a meshserve service as a process for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from meshserve.local.process import start_service


@contextlib.contextmanager
def service(folder: Path, name: str, module: str, *args: str) -> Iterator[str]:
    process, info = start_service(name, module, ["--port", "0", "--log-level", "WARNING", *args], folder)
    try:
        yield str(info["address"])
    finally:
        process.stop()
