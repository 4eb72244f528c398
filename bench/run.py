"""`make bench`: the same calls direct to a runtime and through the router, in one run.

Starts a private local mesh (etcd, router, Python runtime with the example models) on
free ports, plus a second router with the mesh link turned off (it reaches the runtime
over gRPC, as it would a Triton server). For each scenario it alternates rounds over the
three set-ups, so drift in the machine's load affects them alike, and prints p50, p99
and throughput with the routed/direct ratios against the targets. Results also go to
bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Result, run_load  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.local.process import ManagedProcess  # noqa: E402
from meshserve.oip import build_request  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    concurrency: int
    processes: int
    seconds: float
    # (metric, limit): routed/direct ratio of p50 must stay <= limit, of throughput >= limit
    targets: tuple[tuple[str, float], ...]


SCENARIOS = [
    Scenario("iris, 1 row, concurrency 1", 1, 1, 1, 3.0, (("p50", 1.3),)),
    Scenario("iris, 1 row, concurrency 16", 1, 16, 4, 3.0, (("throughput", 0.7),)),
    Scenario("iris, 4 MiB input, concurrency 1", 262_144, 1, 1, 8.0, (("p50", 1.3),)),
]


def merge(parts: list[Result]) -> Result:
    return Result(np.concatenate([p.latencies_s for p in parts]), sum(p.duration_s for p in parts),
                  sum(p.errors for p in parts))


SIDES = ("direct", "router", "router, gRPC hop")


def measure(scenario: Scenario, addresses: dict[str, str], rounds: int) -> dict[str, Result]:
    request = build_request(
        "iris", {"features": np.random.default_rng(0).random((scenario.rows, 4), dtype=np.float32)}
    ).SerializeToString()
    runs: dict[str, list[Result]] = {side: [] for side in addresses}
    for _ in range(rounds):
        for side, address in addresses.items():
            runs[side].append(run_load(address, request, concurrency=scenario.concurrency,
                                       processes=scenario.processes, warmup_s=0.5,
                                       duration_s=scenario.seconds / rounds))
    return {side: merge(parts) for side, parts in runs.items()}


def report(scenario: Scenario, results: dict[str, Result]) -> tuple[list[str], dict[str, object], bool]:
    d, r = results["direct"], results["router"]
    hop = results.get("router, gRPC hop")
    ratios = {
        "p50": r.percentile_ms(50) / d.percentile_ms(50),
        "p99": r.percentile_ms(99) / d.percentile_ms(99),
        "throughput": r.throughput / d.throughput,
    }
    lines = [f"\n{scenario.name}  ({d.calls} direct and {r.calls} routed calls)",
             f"  {'':16} {'p50 ms':>9} {'p99 ms':>9} {'calls/s':>9} {'errors':>7}"]
    for side, res in results.items():
        lines.append(f"  {side:16} {res.percentile_ms(50):9.3f} {res.percentile_ms(99):9.3f} "
                     f"{res.throughput:9.0f} {res.errors:7d}")
    lines.append(f"  {'router/direct':16} {ratios['p50']:8.2f}x {ratios['p99']:8.2f}x {ratios['throughput']:8.2f}x")
    if hop is not None:
        lines.append(f"  {'gRPC hop/direct':16} {hop.percentile_ms(50) / d.percentile_ms(50):8.2f}x "
                     f"{hop.percentile_ms(99) / d.percentile_ms(99):8.2f}x {hop.throughput / d.throughput:8.2f}x")
    ok = True
    for metric, limit in scenario.targets:
        met = ratios[metric] <= limit if metric != "throughput" else ratios[metric] >= limit
        ok &= met
        sign = "<=" if metric != "throughput" else ">="
        lines.append(f"  target: router/direct {metric} {sign} {limit}x: {'met' if met else 'NOT MET'}")
    record = {
        "scenario": scenario.name,
        **{side: {"p50_ms": res.percentile_ms(50), "p99_ms": res.percentile_ms(99), "throughput": res.throughput,
                  "errors": res.errors} for side, res in results.items()},
        "ratios": ratios,
        "targets_met": ok,
    }
    return lines, record, ok


@contextlib.contextmanager
def grpc_hop_router(mesh: LocalMesh) -> Iterator[str]:
    """A second router on the same registry that calls the runtime over gRPC, not the link."""
    announce = mesh.data_dir / "router-grpc-hop.json"
    process = ManagedProcess("router (gRPC hop)", [
        sys.executable, "-m", "meshserve.services.router", "--port", "0", "--no-use-link",
        "--etcd-endpoint", mesh.etcd_endpoint, "--announce-file", str(announce), "--log-level", "WARNING",
    ], mesh.log_dir / "router-grpc-hop.log")
    process.start()
    try:
        yield str(process.wait_announce(announce)["address"])
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/router rounds per scenario")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    config = MeshConfig(model_repository=ROOT / "examples" / "models", router_port=0, etcd_port=0,
                        log_level="WARNING")
    records: list[dict[str, object]] = []
    print(f"meshserve benchmark on {os.cpu_count()} cores; load from separate processes")
    with LocalMesh(config) as mesh, grpc_hop_router(mesh) as hop_address:
        addresses = dict(zip(SIDES, (mesh.runtime_address, mesh.router_address, hop_address), strict=True))
        for scenario in SCENARIOS:
            if args.only and args.only not in scenario.name:
                continue
            results = measure(scenario, addresses, args.rounds)
            lines, record, _ = report(scenario, results)
            print("\n".join(lines), flush=True)
            records.append(record)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "router_vs_direct.json").write_text(json.dumps(
        {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "results": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
