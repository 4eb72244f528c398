"""Which models stay loaded: a memory budget, eviction that protects the hot set, idle unloading.

Each loaded model version carries a memory estimate (from the catalog, else the size of
its folder on disk). Before a load would take a runtime past its budget, loaded versions
are evicted, chosen in two tiers:

1. *probationary* versions, called fewer than ``HOT_CALLS`` times since they were loaded,
   least recently used first;
2. only then *hot* versions, least recently used first.

So a burst of one-off models evicts other one-off models, not the versions that serve
steady traffic (the segmented-LRU idea). A version with calls in flight is never evicted.
When even that cannot make room, the load is refused with RESOURCE_EXHAUSTED naming what
holds the memory. Versions idle for ``idle_unload_s`` are unloaded in the background.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from meshserve.errors import ResourceExhausted

from .entry import ModelEntry, State

HOT_CALLS = 2
MiB = 1024 * 1024
_HOLDING = (State.READY, State.LOADING)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path``: the estimate of a model that states none."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rank(entry: ModelEntry) -> tuple[bool, float]:
    return entry.hits >= HOT_CALLS, entry.last_used


class Residency:
    """The budget of one runtime (0: no limit) and the eviction order within it."""

    def __init__(self, budget_bytes: int = 0, idle_unload_s: float = 0.0) -> None:
        self.budget_bytes = budget_bytes
        self.idle_unload_s = idle_unload_s

    @staticmethod
    def used(entries: Iterable[ModelEntry]) -> int:
        return sum(e.memory_bytes for e in entries if e.state in _HOLDING)

    def victims(self, entries: list[ModelEntry], incoming: ModelEntry) -> list[ModelEntry]:
        """Loaded versions to evict so that ``incoming`` fits; ResourceExhausted when it cannot."""
        if not self.budget_bytes:
            return []
        holding = [e for e in entries if e is not incoming and e.state in _HOLDING]
        need = sum(e.memory_bytes for e in holding) + incoming.memory_bytes - self.budget_bytes
        if need <= 0:
            return []
        chosen: list[ModelEntry] = []
        for entry in sorted((e for e in holding if e.state is State.READY and not e.inflight), key=_rank):
            if need <= 0:
                break
            chosen.append(entry)
            need -= entry.memory_bytes
        if need > 0:
            held = ", ".join(f"{e.name}/{e.version} {e.memory_bytes / MiB:.0f} MiB"
                             + (" (busy)" if e.inflight else "") for e in holding) or "nothing"
            raise ResourceExhausted(
                f"model {incoming.name!r} version {incoming.version!r} needs {incoming.memory_bytes / MiB:.0f} MiB "
                f"but this runtime's budget is {self.budget_bytes / MiB:.0f} MiB and cannot be freed enough "
                f"(holding {held}); place it on a runtime with room or raise --memory-budget-mb")
        return chosen

    def idle(self, entries: Iterable[ModelEntry], now: float | None = None) -> list[ModelEntry]:
        """READY versions without a call for ``idle_unload_s`` (none when that is 0)."""
        if not self.idle_unload_s:
            return []
        now = time.monotonic() if now is None else now
        return [e for e in entries
                if e.state is State.READY and not e.inflight and now - e.last_used >= self.idle_unload_s]
