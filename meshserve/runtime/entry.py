"""One model version of a runtime's repository and its state."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path

from .backend import Backend
from .manifest import Manifest
from .signature import Signature


class State(enum.Enum):
    AVAILABLE = "AVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"


@dataclass(eq=False)
class ModelEntry:
    """One model version of the repository and its current state."""

    name: str
    version: str
    path: Path
    manifest: Manifest | None = None
    platform: str = ""
    state: State = State.AVAILABLE
    reason: str = ""
    backend: Backend | None = None
    signature: Signature | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Residency (see residency.py): memory estimate, calls since loaded, last call, calls now.
    memory_bytes: int = 0
    hits: int = 0
    last_used: float = 0.0
    inflight: int = 0
    # Calls per second lately (see RuntimeServer._report_load) and the hits it was last measured at.
    calls_per_s: float = 0.0
    counted_hits: int = 0
