"""bench/report.py turns benchmark results into markdown tables and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import report


def test_report_has_tables_plots_and_lists_what_did_not_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "samples").mkdir(parents=True)
    (results / "router_vs_direct.json").write_text(json.dumps({"results": [{
        "scenario": "iris, 1 row, concurrency 1",
        "direct": {"p50_ms": 0.8, "throughput": 1200.0}, "router": {"p50_ms": 1.0, "throughput": 1000.0},
        "ratios": {"router / direct": {"p50": 1.25, "throughput": 0.83}}}]}))
    rng = np.random.default_rng(0)
    np.savez_compressed(results / "samples" / "router_vs_direct-0.npz", direct=rng.random(100) / 1000,
                        router=rng.random(100) / 800)
    (results / "concurrency.json").write_text(json.dumps({
        "client": "h2load",
        "throughput": {"direct": {"1": 900.0, "16": 3000.0}, "router": {"1": 700.0, "16": 2500.0}}}))
    (results / "auth.json").write_text(json.dumps({"p50_ms": {"on c1": 1.0, "off c1": 0.99}, "latency_ratio_c1": 1.01,
                                                   "errors": 0}))
    written, plots = report.write(results, tmp_path / "report.md")
    text = written.read_text()
    assert plots == 2
    assert (tmp_path / "report" / "latency-0.png").stat().st_size > 1000
    assert (tmp_path / "report" / "throughput.png").stat().st_size > 1000
    assert "| router | 1.000 | 1,000 |" in text
    assert "| router / direct | 1.250 | 0.830 |" in text
    assert "| latency_ratio_c1 | 1.010 |" in text
    assert "![throughput against concurrency](report/throughput.png)" in text
    assert "## Not in this run" in text and "- R runtime" in text
