"""`make bench`, R runtime: where the time of an R call goes, and what a second worker buys.

In one run, for `mtcars` (1 row):
- predict() timed inside R (the worker measures around predict() only);
- the worker pool called in-process (the pipe bridge alone);
- the R runtime called directly over gRPC, and through the router;
- throughput at concurrency 8 of an R runtime with 1 worker and one with 2.
The bridge is the direct call's p50 minus the in-R p50. Results also go to bench/results/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import run_load  # noqa: E402
from meshserve.local.etcd import EtcdServer  # noqa: E402
from meshserve.local.process import start_service  # noqa: E402
from meshserve.oip import build_request  # noqa: E402
from meshserve.runtime import load_manifest  # noqa: E402
from meshserve.runtimes.r.loader import model_spec  # noqa: E402
from meshserve.runtimes.r.pool import RWorkerPool  # noqa: E402

MODELS = ROOT / "examples" / "models"
INPUTS = {"wt": np.array([2.62]), "hp": np.array([110.0])}


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


@contextlib.contextmanager
def service(folder: Path, name: str, module: str, *args: str) -> Iterator[str]:
    process, info = start_service(name, module, ["--port", "0", "--log-level", "WARNING", *args], folder)
    try:
        yield str(info["address"])
    finally:
        process.stop()


@contextlib.contextmanager
def etcd(folder: Path) -> Iterator[str]:
    server = EtcdServer(folder, folder / "etcd.log")
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def main() -> int:
    if shutil.which("Rscript") is None or not (MODELS / "mtcars" / "1" / "model.rds").exists():
        print("R benchmark skipped: Rscript or the mtcars example is missing (make examples builds it)")
        return 0
    request = build_request("mtcars", INPUTS).SerializeToString()
    in_r_ms, pool_ms = asyncio.run(in_process(2000))
    folder = Path(tempfile.mkdtemp(prefix="meshserve-rbench-"))
    repository = folder / "models"
    repository.mkdir()
    shutil.copytree(MODELS / "mtcars", repository / "mtcars")
    try:
        with etcd(folder / "a") as endpoint_a, etcd(folder / "b") as endpoint_b, \
                service(folder, "r2", "meshserve.runtimes.r", "--pool-size", "2", "--etcd-endpoint", endpoint_a,
                        "--model-repository", str(repository)) as two, \
                service(folder, "router", "meshserve.services.router", "--etcd-endpoint", endpoint_a) as router, \
                service(folder, "r1", "meshserve.runtimes.r", "--pool-size", "1", "--etcd-endpoint", endpoint_b,
                        "--model-repository", str(repository)) as one:
            direct = run_load(two, request, concurrency=1, processes=1, warmup_s=0.5, duration_s=3)
            routed = run_load(router, request, concurrency=1, processes=1, warmup_s=0.5, duration_s=3)
            thr_one = run_load(one, request, concurrency=8, processes=2, warmup_s=0.5, duration_s=3)
            thr_two = run_load(two, request, concurrency=8, processes=2, warmup_s=0.5, duration_s=3)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    bridge = direct.percentile_ms(50) - in_r_ms
    scaling = thr_two.throughput / thr_one.throughput
    print(f"\nR runtime, mtcars, 1 row ({os.cpu_count()} cores)")
    print(f"  predict() inside R, p50                 {in_r_ms:8.3f} ms")
    print(f"  worker pool in-process, p50             {pool_ms:8.3f} ms   (pipe bridge alone: "
          f"{pool_ms - in_r_ms:.3f} ms)")
    for label, result in (("R runtime direct (gRPC)", direct), ("through the router", routed)):
        print(f"  {label + ', p50 / p99':40}{result.percentile_ms(50):8.3f} / {result.percentile_ms(99):.3f} ms")
    print(f"  throughput, concurrency 8: 1 worker     {thr_one.throughput:8.0f} calls/s")
    print(f"  throughput, concurrency 8: 2 workers    {thr_two.throughput:8.0f} calls/s")
    print(f"  target #4: bridge (direct - in R) p50 {bridge:.3f} ms <= 0.3 ms: {'met' if bridge <= 0.3 else 'NOT MET'}")
    print(f"  target #4: 2 workers / 1 worker {scaling:.2f}x >= 1.7x: {'met' if scaling >= 1.7 else 'NOT MET'}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "r_runtime.json").write_text(json.dumps({
        "in_r_p50_ms": in_r_ms, "pool_p50_ms": pool_ms, "direct_p50_ms": direct.percentile_ms(50),
        "router_p50_ms": routed.percentile_ms(50), "throughput_1_worker": thr_one.throughput,
        "throughput_2_workers": thr_two.throughput, "bridge_ms": bridge, "scaling": scaling,
        "errors": direct.errors + routed.errors + thr_one.errors + thr_two.errors,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
