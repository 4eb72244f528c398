"""`make bench`, last step: bench/report.md with every benchmark's tables and PNG plots.

Reads what the benchmarks of this `make bench` run wrote to bench/results/ (JSON, plus
latency samples in bench/results/samples/) and writes:

- bench/report.md: one section per benchmark, its figures as tables (a set-up per row
  where the results are per set-up; a figure per row otherwise);
- bench/report/latency-*.png: the latency distribution of each router-vs-direct
  scenario, every set-up of the same run on one plot;
- bench/report/throughput.png: throughput against concurrency, direct and through the
  router, from the same run.

Every compared set-up in a table or a plot was measured in the same run, alternating
rounds (see each benchmark's docstring).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "bench" / "report.md"

# Benchmarks in the order `make bench` runs them: results file -> (title, command).
SECTIONS = {
    "router_vs_direct": ("Router against direct calls", "bench/run.py"),
    "concurrency": ("Throughput against concurrency", "bench/run.py"),
    "journal": ("The call journal's cost per call, in process", "bench/run.py (bench/journal.py)"),
    "r_runtime": ("R runtime", "bench/r_runtime.py"),
    "triton": ("NVIDIA Triton behind the router", "bench/triton.py"),
    "pipeline": ("Pipeline against its steps", "bench/pipeline.py"),
    "auth": ("Access control on against off", "bench/auth.py"),
    "tls": ("TLS on every link against plain text", "bench/tls.py"),
    "tracing": ("Tracing on against off", "bench/tracing.py"),
    "coldstart": ("Lazy loading: cold starts", "bench/coldstart.py"),
    "scale": ("Replicas and failover", "bench/scale.py"),
    "sizing": ("Registry sizing simulation", "bench/sizing.py"),
    "audit_ingest": ("Audit ingest", "python -m services.audit.bench"),
}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float)]
        if numbers and len(numbers) == len(value):
            return f"{len(numbers)} values: median {_fmt(float(statistics.median(numbers)))}, " \
                   f"min {_fmt(float(min(numbers)))}, max {_fmt(float(max(numbers)))}"
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _is_row_table(value: Any) -> bool:
    """A dict of dicts of plain values: one row per outer key."""
    return (isinstance(value, dict) and len(value) > 1
            and all(isinstance(v, dict) and v and all(not isinstance(x, dict) for x in v.values())
                    for v in value.values()))


def _matrix(rows: dict[str, dict[str, Any]], first: str) -> list[str]:
    columns: list[str] = []
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join([first, *columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(_fmt(row.get(c, "")) for c in columns)]) + " |")
    return lines


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key} / " if not isinstance(inner, dict) or inner else prefix)
    else:
        yield prefix.removesuffix(" / "), value


def tables(data: Any) -> list[str]:
    """Markdown tables for one benchmark's JSON, whatever its shape."""
    lines: list[str] = []
    if isinstance(data, dict) and isinstance(data.get("results"), list):  # a list of scenarios
        for scenario in data["results"]:
            name = scenario.get("scenario", "scenario")
            rows = {k: v for k, v in scenario.items() if isinstance(v, dict) and k != "ratios"}
            lines += [f"**{name}**", "", *_matrix(rows, "set-up"), ""]
            if scenario.get("ratios"):
                lines += [*_matrix(scenario["ratios"], "ratio"), ""]
        return lines
    plain: dict[str, Any] = {}
    for key, value in (data.items() if isinstance(data, dict) else [("value", data)]):
        if _is_row_table(value):
            lines += [f"**{key}**", "", *_matrix(value, key), ""]
        else:
            plain[key] = value
    if plain:
        figures = list(_flatten(plain))
        lines = ["| figure | value |", "| --- | --- |",
                 *(f"| {name} | {_fmt(value)} |" for name, value in figures), "", *lines]
    return lines


def latency_plots(results: Path, samples_dir: Path, figures: Path) -> list[tuple[str, str]]:
    """(title, file) of one latency-distribution plot per router-vs-direct scenario."""
    made = []
    index = results / "router_vs_direct.json"
    if not index.exists():
        return made
    for i, scenario in enumerate(json.loads(index.read_text()).get("results", [])):
        path = samples_dir / f"router_vs_direct-{i}.npz"
        if not path.exists():
            continue
        samples = np.load(path)
        fig, ax = plt.subplots(figsize=(7, 4))
        for side in samples.files:
            ms = np.sort(samples[side]) * 1000
            if len(ms):
                ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"{side} (p50 {np.median(ms):.2f} ms)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of calls")
        ax.set_title(scenario.get("scenario", f"scenario {i}"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        name = f"latency-{i}.png"
        fig.tight_layout()
        fig.savefig(figures / name, dpi=110)
        plt.close(fig)
        made.append((scenario.get("scenario", name), name))
    return made


def throughput_plot(results: Path, figures: Path) -> str | None:
    path = results / "concurrency.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    for side, points in data["throughput"].items():
        levels = sorted(points, key=int)
        ax.plot([int(c) for c in levels], [points[c] for c in levels], marker="o", label=side)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent calls")
    ax.set_ylabel("calls per second")
    ax.set_title(f"iris, 1 row: throughput against concurrency ({data.get('client', '')})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(figures / "throughput.png", dpi=110)
    plt.close(fig)
    return "throughput.png"


def write(results: Path = RESULTS, report: Path = REPORT) -> tuple[Path, int]:
    """Write the report (and its plots beside it, in ``report/``) from ``results``; (report, plots made)."""
    figures = report.parent / "report"
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmark report", "",
             f"Written by `make bench` (`bench/report.py`) on {time.strftime('%Y-%m-%d %H:%M %Z')}. "
             "Every compared set-up in a table or plot was measured in the same run; figures are from the machine "
             "that ran it (see each section's command for what it measures).", ""]
    plots = latency_plots(results, results / "samples", figures)
    throughput = throughput_plot(results, figures)
    for stem, (title, command) in SECTIONS.items():
        path = results / f"{stem}.json"
        if not path.exists():
            continue
        lines += [f"## {title}", "", f"`{command}`", "", *tables(json.loads(path.read_text()))]
        if stem == "router_vs_direct":
            for caption, name in plots:
                lines += [f"![latency distribution: {caption}](report/{name})", ""]
        if stem == "concurrency" and throughput:
            lines += [f"![throughput against concurrency](report/{throughput})", ""]
    missing = [title for stem, (title, _) in SECTIONS.items() if not (results / f"{stem}.json").exists()]
    if missing:
        lines += ["## Not in this run", "", *(f"- {title}" for title in missing), ""]
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report, len(plots) + bool(throughput)


def main() -> int:
    report, plots = write()
    print(f"wrote {report.relative_to(ROOT)} and {plots} plots in {report.parent.relative_to(ROOT)}/report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
