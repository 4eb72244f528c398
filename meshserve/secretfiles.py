"""Files that hold secrets (the mesh credential, etcd passwords): readable by their owner only."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (made with that mode: never readable by others meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def read_or_make(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> str:
    """The secret in ``path``, first made by ``make`` when the file does not exist."""
    if not path.exists():
        write_private(path, (make() + "\n").encode())
    return path.read_text().strip()
