"""`make bench`, R runtime: where the time of an R call goes, and what a second worker buys.

In one run, for `mtcars` (1 row):
- predict() timed inside R (the worker measures around predict() only);
- the worker pool called in-process (the pipe bridge alone);
- the floor: a Python gRPC server answering canned bytes, which any Python runtime pays;
- the R runtime called directly over gRPC, and through the router;
- throughput at concurrency 8 of an R runtime with 1 worker and one with 2, for `mtcars`
  (1 row: the runtime's Python side is the bottleneck) and for `iris-rf` on 2,000 rows
  (R-bound: what the pool's parallelism buys).
The bridge is the direct call's p50 minus the in-R p50. Latencies are measured with h2load
(a C client, so no client time is counted) when it is installed (`make bench` installs
it), else with the Python load generator. Results also go to bench/results/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.floor import floor_server  # noqa: E402
from bench.h2load import available as h2load_available  # noqa: E402
from bench.h2load import call_once, run_h2load  # noqa: E402
from bench.loadgen import Result, run_load  # noqa: E402
from bench.services import service  # noqa: E402
from meshserve.local.etcd import EtcdServer  # noqa: E402
from meshserve.oip import build_request  # noqa: E402
from meshserve.runtime import load_manifest  # noqa: E402
from meshserve.runtimes.r.loader import model_spec  # noqa: E402
from meshserve.runtimes.r.pool import RWorkerPool  # noqa: E402

MODELS = ROOT / "examples" / "models"
INPUTS = {"wt": np.array([2.62]), "hp": np.array([110.0])}
HEAVY_ROWS = 2000
HEAVY_INPUTS = {
    name: np.random.default_rng(7).uniform(0.5, 7.5, HEAVY_ROWS)
    for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")
}


def measure(address: str, request: bytes, concurrency: int, duration_s: float = 3.0) -> Result:
    """One closed-loop run: h2load when installed, else the Python load generator."""
    if h2load_available():
        return run_h2load(address, request, concurrency=concurrency, warmup_s=0.5, duration_s=duration_s)
    return run_load(address, request, concurrency=concurrency, processes=min(2, concurrency), warmup_s=0.5,
                    duration_s=duration_s)


async def in_process(calls: int) -> tuple[float, float]:
    """(p50 of predict() inside R, p50 of pool.predict) in milliseconds, one worker."""
    manifest = load_manifest(MODELS / "mtcars" / "1" / "manifest.yaml")
    spec = model_spec(MODELS / "mtcars" / "1", manifest)
    pool = RWorkerPool(1)
    await pool.start()
    try:
        in_r, whole = [], []
        for _ in range(calls):
            start = time.perf_counter()
            result = await pool.predict("mtcars/1", spec, INPUTS, [("mpg", "FP64")])
            whole.append(time.perf_counter() - start)
            in_r.append(result.r_nanos / 1e9)
        return statistics.median(in_r[50:]) * 1e3, statistics.median(whole[50:]) * 1e3
    finally:
        await pool.close()


def main() -> int:
    if shutil.which("Rscript") is None or not (MODELS / "mtcars" / "1" / "model.rds").exists():
        print("R benchmark skipped: Rscript or the mtcars example is missing (make examples builds it)")
        return 0
    request = build_request("mtcars", INPUTS).SerializeToString()
    heavy = build_request("iris-rf", HEAVY_INPUTS).SerializeToString()
    in_r_ms, pool_ms = asyncio.run(in_process(2000))
    folder = Path(tempfile.mkdtemp(prefix="meshserve-rbench-"))
    repository = folder / "models"
    repository.mkdir()
    for model in ("mtcars", "iris-rf"):
        shutil.copytree(MODELS / model, repository / model)
    try:
        with EtcdServer(folder / "a", folder / "a.log") as etcd_a, \
                EtcdServer(folder / "b", folder / "b.log") as etcd_b, \
                service(folder, "r2", "meshserve.runtimes.r", "--pool-size", "2", "--etcd-endpoint", etcd_a.endpoint,
                        "--model-repository", str(repository), "--dev-mode") as two, \
                service(folder, "router", "meshserve.services.router", "--etcd-endpoint", etcd_a.endpoint,
                        "--dev-mode") as router, \
                service(folder, "r1", "meshserve.runtimes.r", "--pool-size", "1", "--etcd-endpoint", etcd_b.endpoint,
                        "--model-repository", str(repository), "--dev-mode") as one:
            with floor_server(call_once(two, request)) as floor_address:
                floor = measure(floor_address, request, 1)
            direct = measure(two, request, 1)
            routed = measure(router, request, 1)
            thr = {(rows, workers): measure(address, body, 8, duration_s=4)
                   for rows, body in ((1, request), (HEAVY_ROWS, heavy))
                   for workers, address in ((1, one), (2, two))}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bridge = direct.percentile_ms(50) - in_r_ms
    scaling = {rows: thr[rows, 2].throughput / thr[rows, 1].throughput for rows in (1, HEAVY_ROWS)}
    client = "h2load" if h2load_available() else "the Python load generator"
    print(f"\nR runtime ({os.cpu_count()} cores; gRPC latencies measured with {client})")
    print(f"  mtcars, 1 row: predict() inside R, p50      {in_r_ms:8.3f} ms")
    print(f"  worker pool in-process, p50                 {pool_ms:8.3f} ms   (pipe bridge alone: "
          f"{pool_ms - in_r_ms:.3f} ms)")
    for label, result in (("floor: empty Python gRPC server", floor), ("R runtime direct (gRPC)", direct),
                          ("through the router", routed)):
        print(f"  {label + ', p50 / p99':44}{result.percentile_ms(50):8.3f} / {result.percentile_ms(99):.3f} ms")
    for rows, model in ((1, "mtcars, 1 row"), (HEAVY_ROWS, f"iris-rf, {HEAVY_ROWS} rows")):
        print(f"  throughput c=8, {model:17} 1 worker {thr[rows, 1].throughput:8.0f}/s, 2 workers "
              f"{thr[rows, 2].throughput:8.0f}/s: {scaling[rows]:.2f}x")
    print(f"  target #4: bridge (direct - in R) p50 {bridge:.3f} ms <= 0.3 ms: {'met' if bridge <= 0.3 else 'NOT MET'}"
          f" (the floor alone is {floor.percentile_ms(50):.3f} ms)")
    for rows, model in ((1, "mtcars"), (HEAVY_ROWS, "iris-rf")):
        print(f"  target #4: 2 workers / 1 worker, {model}: {scaling[rows]:.2f}x >= 1.7x: "
              f"{'met' if scaling[rows] >= 1.7 else 'NOT MET'}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "r_runtime.json").write_text(json.dumps({
        "client": client, "in_r_p50_ms": in_r_ms, "pool_p50_ms": pool_ms, "floor_p50_ms": floor.percentile_ms(50),
        "direct_p50_ms": direct.percentile_ms(50), "router_p50_ms": routed.percentile_ms(50),
        "bridge_ms": bridge,
        "throughput": {f"{rows}_rows_{workers}_workers": r.throughput for (rows, workers), r in thr.items()},
        "scaling": {f"{rows}_rows": x for rows, x in scaling.items()},
        "errors": sum(r.errors for r in (floor, direct, routed, *thr.values())),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
