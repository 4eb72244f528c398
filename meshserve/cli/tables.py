"""Rich tables for the registry and inference results (pure: data in, table out)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from meshserve.cli.text import Table
from meshserve.names import version_sort_key
from meshserve.protos.meshserve.registry.v1 import registry_pb2

_STATE_NAMES: dict[int, str] = {
    int(value): name.removeprefix("MODEL_STATE_").lower()
    for name, value in registry_pb2.ModelState.items()
}


def state_name(state: int) -> str:
    return _STATE_NAMES.get(int(state), str(state))


def _age(unix_ms: int, now_s: float) -> str:
    if unix_ms <= 0:
        return "-"
    seconds = max(0, int(now_s - unix_ms / 1000))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def models_table(placements: Iterable[registry_pb2.Placement],
                 pipelines: Iterable[registry_pb2.Pipeline] = (),
                 catalog: Iterable[registry_pb2.CatalogModel] = ()) -> Table:
    """One row per model (its versions, runtime kinds, ready replicas and states), then per pipeline.

    A catalog model no runtime holds shows as registered: its first call loads it.
    """
    by_model: dict[str, list[registry_pb2.Placement]] = defaultdict(list)
    for p in placements:
        by_model[p.model].append(p)
    table = Table("model", "versions", "runtime kind", "replicas", "state", "reason", title="models")
    for entry in catalog:
        if entry.model not in by_model:
            versions = sorted(entry.versions, key=version_sort_key)
            kinds = sorted({v.runtime_kind for v in entry.versions.values()})
            table.add_row(entry.model, ", ".join(versions), ", ".join(kinds), "0", "registered",
                          "loads on its first call")
    for model in sorted(by_model):
        entries = by_model[model]
        versions = sorted({p.version for p in entries}, key=version_sort_key)
        kinds = sorted({p.runtime_kind for p in entries if p.runtime_kind})
        ready = {p.runtime_id for p in entries if p.state == registry_pb2.MODEL_STATE_READY}
        states: dict[str, int] = defaultdict(int)
        for p in entries:
            states[state_name(p.state)] += 1
        state = ", ".join(s if n == 1 else f"{s} x{n}" for s, n in sorted(states.items()))
        reasons = sorted({_first_line(p.reason) for p in entries if p.reason})
        table.add_row(model, ", ".join(versions), ", ".join(kinds) or "-", str(len(ready)), state,
                      "; ".join(reasons) or "-")
    for pipeline in sorted(pipelines, key=lambda x: x.name):
        table.add_row(pipeline.name, "-", "pipeline", "-", "pipeline",
                      "steps: " + ", ".join(f"{s.name}={s.model}" for s in pipeline.steps))
    return table


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def runtimes_table(
    entries: Iterable[registry_pb2.ListRuntimesResponse.Entry], now_s: float | None = None
) -> Table:
    """One row per live runtime."""
    now = time.time() if now_s is None else now_s
    table = Table("id", "kind", "address", "ready models", "version", "up", title="runtimes")
    for e in sorted(entries, key=lambda e: (e.runtime.kind, e.runtime.id)):
        r = e.runtime
        table.add_row(r.id, r.kind, r.address, str(e.ready_models), r.version or "-",
                      _age(r.started_at_unix_ms, now))
    return table


def _cell(array: np.ndarray) -> str:
    if array.dtype == object:
        array = np.vectorize(lambda v: v.decode(errors="replace") if isinstance(v, bytes) else v)(array)
    return np.array2string(array, separator=", ", threshold=50, max_line_width=100)


def outputs_table(outputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> Table:
    """One row per output tensor: name, datatype, shape and values."""
    table = Table("output", "datatype", "shape", "values")
    for name, array in outputs.items():
        table.add_row(name, datatypes.get(name, str(array.dtype)), str(list(array.shape)), _cell(array))
    return table


def endpoints_table(rows: Sequence[tuple[str, str, str]]) -> Table:
    """Service, address, PID rows for ``meshserve up``."""
    table = Table("service", "address", "pid", title="local mesh")
    for row in rows:
        table.add_row(*row)
    return table


def catalog_table(entries: Iterable[registry_pb2.CatalogModel]) -> Table:
    """One row per catalog model version: runtime kind, artifact, memory estimate."""
    table = Table("model", "version", "runtime kind", "artifact", "memory", title="catalog")
    for entry in sorted(entries, key=lambda e: e.model):
        for version in sorted(entry.versions, key=version_sort_key):
            v = entry.versions[version]
            memory = f"{v.memory_bytes / 2**20:.0f} MiB" if v.memory_bytes else "estimated by the runtime"
            table.add_row(entry.model, version, v.runtime_kind, v.artifact, memory)
    return table
