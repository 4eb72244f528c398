"""`make bench`, Triton: the same `simple` calls direct to Triton and through the router, in one run.

Starts etcd, a tritonserver on examples/triton, its registrar and a router (auditing off:
the router's audit cost is measured by bench/run.py) on free ports, and the floor: a bare
Python gRPC pass-through to Triton (no routing, audit or checks), the least any proxy
written in Python costs in front of Triton here. Rounds alternate between the set-ups so drift hits
all alike; each round measures concurrency 1
(p50) and 16 (throughput) with h2load when installed (else the Python load generator).
Results also go to bench/results/triton.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.floor import passthrough_server  # noqa: E402
from bench.h2load import available as h2load_available  # noqa: E402
from bench.h2load import run_h2load  # noqa: E402
from bench.loadgen import Result, run_load  # noqa: E402
from bench.services import service  # noqa: E402
from meshserve.local import triton  # noqa: E402
from meshserve.local.etcd import EtcdServer  # noqa: E402
from meshserve.oip import build_request  # noqa: E402
from meshserve.protos.inference import grpc_service_pb2 as oip  # noqa: E402
from meshserve.protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402

DIRECT, ROUTER, FLOOR = "direct", "router", "floor: bare Python proxy"
REQUEST = build_request("simple", {
    "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16), "INPUT1": np.ones((1, 16), dtype=np.int32),
}).SerializeToString()


def measure(address: str, concurrency: int, duration_s: float) -> Result:
    if h2load_available():
        return run_h2load(address, REQUEST, concurrency=concurrency, warmup_s=0.5, duration_s=duration_s, drain=True)
    return run_load(address, REQUEST, concurrency=concurrency, processes=min(2, concurrency), warmup_s=0.5,
                    duration_s=duration_s)


def wait_routed(address: str) -> None:
    """Until the router has `simple` from the registrar."""
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        for _ in range(200):
            if stub.ModelReady(oip.ModelReadyRequest(name="simple"), timeout=5).ready:
                return
            time.sleep(0.05)
    raise SystemExit("the router never saw `simple` ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per set-up and round")
    args = parser.parse_args()
    if not triton.available():
        print(f"Triton benchmark skipped: Triton is not installed ({triton.INSTALL_HINT})")
        return 0
    folder = Path(tempfile.mkdtemp(prefix="meshserve-tritonbench-"))
    repository = folder / "models"
    shutil.copytree(ROOT / "examples" / "triton" / "simple", repository / "simple")
    server = triton.TritonServer(repository, folder / "triton", folder / "triton.log", explicit=False)
    rows: dict[tuple[str, int], list[Result]] = {}
    try:
        server.start()
        with EtcdServer(folder / "etcd", folder / "etcd.log") as etcd, \
                service(folder, "registrar", "meshserve.runtimes.triton", "--triton-address", server.address,
                        "--etcd-endpoint", etcd.endpoint), \
                service(folder, "router", "meshserve.services.router", "--etcd-endpoint", etcd.endpoint,
                        "--dev-mode") as router:
            wait_routed(router)
            # The floor: what any Python gRPC proxy in front of Triton costs here, doing nothing else.
            with passthrough_server(server.address) as floor:
                for _ in range(args.rounds):
                    for label, address in ((DIRECT, server.address), (ROUTER, router), (FLOOR, floor)):
                        for concurrency in (1, 16):
                            rows.setdefault((label, concurrency), []).append(
                                measure(address, concurrency, args.duration))
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    p50 = {k: statistics.median(r.percentile_ms(50) for r in v) for k, v in rows.items()}
    p99 = {k: statistics.median(r.percentile_ms(99) for r in v) for k, v in rows.items()}
    thr = {k: statistics.median(r.throughput for r in v) for k, v in rows.items()}
    errors = sum(r.errors for v in rows.values() for r in v)
    client = "h2load" if h2load_available() else "the Python load generator"
    print(f"\nTriton `simple` ({os.cpu_count()} cores, {client}, median of {args.rounds} alternating rounds)")
    print(f"  {'set-up':24}{'c=1 p50':>10}{'c=1 p99':>10}{'c=16 p50':>10}{'c=16 calls/s':>14}")
    for label in (DIRECT, ROUTER, FLOOR):
        print(f"  {label:24}{p50[label, 1]:9.3f}ms{p99[label, 1]:9.3f}ms{p50[label, 16]:9.3f}ms"
              f"{thr[label, 16]:14.0f}")
    latency = p50[ROUTER, 1] / p50[DIRECT, 1]
    throughput = thr[ROUTER, 16] / thr[DIRECT, 16]
    print(f"  target #5: router p50 / direct p50 at c=1 {latency:.2f}x <= 1.3x: "
          f"{'met' if latency <= 1.3 else 'NOT MET'}")
    print(f"  target #5: router / direct throughput at c=16 {throughput:.2f}x >= 0.7x: "
          f"{'met' if throughput >= 0.7 else 'NOT MET'}")
    print(f"  the bare Python proxy alone: {p50[FLOOR, 1] / p50[DIRECT, 1]:.2f}x Triton's p50, "
          f"{thr[FLOOR, 16] / thr[DIRECT, 16]:.2f}x its throughput")
    print(f"  errors: {errors}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton.json").write_text(json.dumps({
        "client": client, "p50_ms": {f"{k[0]}_c{k[1]}": v for k, v in p50.items()},
        "p99_ms": {f"{k[0]}_c{k[1]}": v for k, v in p99.items()},
        "throughput": {f"{k[0]}_c{k[1]}": v for k, v in thr.items()},
        "latency_ratio_c1": latency, "throughput_ratio_c16": throughput, "errors": errors,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
