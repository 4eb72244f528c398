"""Which loaded versions a runtime evicts to stay within its memory budget, and which it unloads when idle."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshserve.errors import ResourceExhausted
from meshserve.runtime.entry import ModelEntry, State
from meshserve.runtime.residency import HOT_CALLS, MiB, Residency, folder_bytes


def entry(name: str, mib: int, *, hits: int = 0, last_used: float = 0.0, state: State = State.READY,
          inflight: int = 0) -> ModelEntry:
    e = ModelEntry(name, "1", Path("/nowhere"), state=state)
    e.memory_bytes, e.hits, e.last_used, e.inflight = mib * MiB, hits, last_used, inflight
    return e


def names(entries: list[ModelEntry]) -> list[str]:
    return [e.name for e in entries]


def test_no_budget_never_evicts() -> None:
    loaded = [entry("a", 100), entry("b", 100)]
    assert Residency().victims(loaded, entry("c", 100, state=State.AVAILABLE)) == []


def test_what_fits_evicts_nothing() -> None:
    loaded = [entry("a", 1), entry("b", 1)]
    assert Residency(4 * MiB).victims(loaded, entry("c", 2, state=State.AVAILABLE)) == []


def test_one_off_models_go_before_hot_ones_least_recently_used_first() -> None:
    hot_old = entry("hot-old", 1, hits=HOT_CALLS + 5, last_used=1.0)
    once_new = entry("once-new", 1, hits=1, last_used=9.0)
    once_old = entry("once-old", 1, hits=1, last_used=5.0)
    residency = Residency(3 * MiB)
    incoming = entry("new", 1, state=State.AVAILABLE)
    assert names(residency.victims([hot_old, once_new, once_old], incoming)) == ["once-old"]
    big = entry("big", 3, state=State.AVAILABLE)
    assert names(residency.victims([hot_old, once_new, once_old], big)) == ["once-old", "once-new", "hot-old"]


def test_busy_and_loading_versions_are_never_evicted() -> None:
    busy = entry("busy", 2, hits=0, inflight=1)
    loading = entry("loading", 1, state=State.LOADING)
    with pytest.raises(ResourceExhausted, match=r"budget is 3 MiB.*busy/1 2 MiB \(busy\)"):
        Residency(3 * MiB).victims([busy, loading], entry("new", 1, state=State.AVAILABLE))


def test_a_model_bigger_than_the_budget_is_refused() -> None:
    with pytest.raises(ResourceExhausted, match="needs 5 MiB"):
        Residency(4 * MiB).victims([], entry("huge", 5, state=State.AVAILABLE))


def test_idle_versions_are_those_without_a_call_for_the_idle_time() -> None:
    recent, stale = entry("recent", 1, last_used=95.0), entry("stale", 1, last_used=80.0)
    busy = entry("busy", 1, last_used=10.0, inflight=1)
    assert names(Residency(idle_unload_s=10).idle([recent, stale, busy], now=100.0)) == ["stale"]
    assert Residency().idle([stale], now=100.0) == []


def test_folder_bytes_counts_the_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert folder_bytes(tmp_path) == 15
