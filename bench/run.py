"""`make bench`: the same calls direct to a runtime and through the router, in one run.

Starts a private local mesh (etcd, NATS, audit service, router, Python runtime with the
example models) on free ports. The mesh's router audits every call, journaling each
before its answer (fsync every 100 ms, the default); two more routers on the same
registry do not audit: one as the mesh's router otherwise is, one with the mesh link
turned off (it reaches the runtime over gRPC, as it would a Triton server); three more
audit with the call journal off, or fsynced before every answer, or never fsynced. For
each scenario it alternates rounds over the set-ups, so drift in the machine's load
affects them alike, and prints p50, p99 and throughput, the ratios, and the targets of
the issues they answer. Results also go to bench/results/.
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

from bench import journal  # noqa: E402
from bench.h2load import available as h2load_available  # noqa: E402
from bench.h2load import run_h2load  # noqa: E402
from bench.loadgen import Result, run_load  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.local.process import start_service  # noqa: E402
from meshserve.oip import build_request  # noqa: E402


@dataclass(frozen=True)
class Target:
    """A ratio between two set-ups that must hold: ``metric`` of ``side`` over ``base``."""

    side: str
    base: str
    metric: str  # "p50" (at most limit) or "throughput" (at least limit)
    limit: float
    issue: str

    def met(self, ratio: float) -> bool:
        return ratio >= self.limit if self.metric == "throughput" else ratio <= self.limit


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    concurrency: int
    processes: int
    seconds: float
    targets: tuple[Target, ...]


SWEEP = (1, 2, 4, 8, 16, 32)
DIRECT, ROUTER, NO_AUDIT, GRPC_HOP = "direct", "router", "router, audit off", "router, gRPC hop"
NO_JOURNAL, FSYNC_ALWAYS, FSYNC_NEVER = "router, journal off", "router, fsync always", "router, fsync never"
# Ratios printed for every scenario: (label, side, base).
RATIOS = ((f"{ROUTER} / {DIRECT}", ROUTER, DIRECT), (f"{NO_AUDIT} / {DIRECT}", NO_AUDIT, DIRECT),
          (f"{ROUTER} / {NO_AUDIT}", ROUTER, NO_AUDIT), (f"{GRPC_HOP} / {DIRECT}", GRPC_HOP, DIRECT),
          (f"{ROUTER} / {NO_JOURNAL}", ROUTER, NO_JOURNAL), (f"{FSYNC_NEVER} / {NO_JOURNAL}", FSYNC_NEVER, NO_JOURNAL),
          (f"{FSYNC_ALWAYS} / {NO_JOURNAL}", FSYNC_ALWAYS, NO_JOURNAL))
# The call journal's set-ups: audited routers, each with its own data folder.
JOURNALS = {NO_JOURNAL: ("--no-audit-journal",), FSYNC_ALWAYS: ("--audit-journal-fsync", "always"),
            FSYNC_NEVER: ("--audit-journal-fsync", "never")}

SCENARIOS = [
    Scenario("iris, 1 row, concurrency 1", 1, 1, 1, 3.0, (
        Target(ROUTER, DIRECT, "p50", 1.3, "#2"), Target(ROUTER, NO_AUDIT, "p50", 1.1, "#3 audit"))),
    Scenario("iris, 1 row, concurrency 16", 1, 16, 4, 3.0, (
        Target(ROUTER, DIRECT, "throughput", 0.7, "#2"), Target(ROUTER, NO_AUDIT, "throughput", 0.9, "#3 audit"),
        Target(ROUTER, NO_AUDIT, "p50", 1.1, "#3 audit"))),
    Scenario("iris, 4 MiB input, concurrency 1", 262_144, 1, 1, 8.0, (Target(ROUTER, DIRECT, "p50", 1.3, "#2"),)),
]


def merge(parts: list[Result]) -> Result:
    return Result(np.concatenate([p.latencies_s for p in parts]), sum(p.duration_s for p in parts),
                  sum(p.errors for p in parts))


def measure(scenario: Scenario, addresses: dict[str, str], rounds: int) -> dict[str, Result]:
    request = build_request(
        "iris", {"features": np.random.default_rng(0).random((scenario.rows, 4), dtype=np.float32)}
    ).SerializeToString()
    runs: dict[str, list[Result]] = {side: [] for side in addresses}
    order = list(addresses.items())
    for number in range(rounds):  # the order reversed every other round: no set-up always follows another
        for side, address in order if number % 2 == 0 else reversed(order):
            runs[side].append(run_load(address, request, concurrency=scenario.concurrency,
                                       processes=scenario.processes, warmup_s=0.5,
                                       duration_s=scenario.seconds / rounds))
    return {side: merge(parts) for side, parts in runs.items()}


def _ratio(results: dict[str, Result], side: str, base: str, metric: str) -> float:
    a, b = results[side], results[base]
    if metric == "throughput":
        return a.throughput / b.throughput
    q = 50 if metric == "p50" else 99
    return a.percentile_ms(q) / b.percentile_ms(q)


def report(scenario: Scenario, results: dict[str, Result]) -> tuple[list[str], dict[str, object], bool]:
    lines = [f"\n{scenario.name}",
             f"  {'':44} {'p50 ms':>9} {'p99 ms':>9} {'calls/s':>9} {'calls':>7} {'errors':>7}"]
    for side, res in results.items():
        lines.append(f"  {side:44} {res.percentile_ms(50):9.3f} {res.percentile_ms(99):9.3f} "
                     f"{res.throughput:9.0f} {res.calls:7d} {res.errors:7d}")
    ratios: dict[str, dict[str, float]] = {}
    for label, side, base in RATIOS:
        if side in results and base in results:
            ratios[label] = {m: _ratio(results, side, base, m) for m in ("p50", "p99", "throughput")}
            r = ratios[label]
            lines.append(f"  {label:44} {r['p50']:8.2f}x {r['p99']:8.2f}x {r['throughput']:8.2f}x")
    ok = True
    for target in scenario.targets:
        ratio = _ratio(results, target.side, target.base, target.metric)
        met = target.met(ratio)
        ok &= met
        sign = ">=" if target.metric == "throughput" else "<="
        lines.append(f"  target {target.issue}: {target.side} / {target.base} {target.metric} {ratio:.2f}x "
                     f"{sign} {target.limit}x: {'met' if met else 'NOT MET'}")
    record = {
        "scenario": scenario.name,
        **{side: {"p50_ms": res.percentile_ms(50), "p99_ms": res.percentile_ms(99), "throughput": res.throughput,
                  "calls": res.calls, "errors": res.errors} for side, res in results.items()},
        "ratios": ratios,
        "targets_met": ok,
    }
    return lines, record, ok


def save_samples(index: int, results: dict[str, Result]) -> None:
    """Every call's latency of each set-up, for the report's distribution plots."""
    samples = ROOT / "bench" / "results" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(samples / f"router_vs_direct-{index}.npz",
                        **{side: res.latencies_s for side, res in results.items()})


def sweep(direct: str, router: str) -> None:
    """Throughput (and p50) against concurrency, direct and through the router, alternating per level."""
    request = build_request("iris", {"features": np.ones((1, 4), dtype=np.float32)}).SerializeToString()
    client = "h2load" if h2load_available() else "Python load generator"
    throughput: dict[str, dict[str, float]] = {DIRECT: {}, ROUTER: {}}
    p50: dict[str, dict[str, float]] = {DIRECT: {}, ROUTER: {}}
    print(f"\nthroughput against concurrency, iris 1 row ({client})")
    for level in SWEEP:
        for side, address in ((DIRECT, direct), (ROUTER, router)):
            if h2load_available():
                res = run_h2load(address, request, concurrency=level, warmup_s=0.3, duration_s=1.5)
            else:
                res = run_load(address, request, concurrency=level, processes=min(level, 4), warmup_s=0.3,
                               duration_s=1.5)
            throughput[side][str(level)], p50[side][str(level)] = res.throughput, res.percentile_ms(50)
        print(f"  {level:3d} concurrent: direct {throughput[DIRECT][str(level)]:7.0f}/s, "
              f"router {throughput[ROUTER][str(level)]:7.0f}/s", flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "concurrency.json").write_text(json.dumps({"client": client, "throughput": throughput, "p50_ms": p50},
                                                     indent=2))


@contextlib.contextmanager
def extra_router(mesh: LocalMesh, name: str, *flags: str) -> Iterator[str]:
    """Another router on the mesh's registry, set up differently (no audit, no link...)."""
    process, info = start_service(name, "meshserve.services.router", [
        "--port", "0", "--dev-mode", *flags, "--etcd-endpoint", mesh.etcd_endpoint, "--log-level", "WARNING",
    ], mesh.data_dir, log_path=mesh.log_dir / f"{name}.log")
    try:
        yield str(info["address"])
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternating direct/router rounds per scenario")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    config = MeshConfig(model_repository=ROOT / "examples" / "models", router_port=0, etcd_port=0, nats_port=0,
                        audit_port=0,
                        log_level="WARNING")
    records: list[dict[str, object]] = []
    print(f"meshserve benchmark on {os.cpu_count()} cores; load from separate processes")
    with LocalMesh(config) as mesh, extra_router(mesh, "router-no-audit") as no_audit, \
            extra_router(mesh, "router-grpc-hop", "--no-use-link") as grpc_hop, contextlib.ExitStack() as stack:
        addresses = {DIRECT: mesh.runtime_address, ROUTER: mesh.router_address, NO_AUDIT: no_audit,
                     GRPC_HOP: grpc_hop}
        for side, flags in JOURNALS.items():
            name = "router-" + side.removeprefix("router, ").replace(" ", "-")
            addresses[side] = stack.enter_context(extra_router(
                mesh, name, "--nats-url", mesh.nats_url, "--data-dir", str(mesh.data_dir / name), *flags))
        for scenario in SCENARIOS:
            if args.only and args.only not in scenario.name:
                continue
            results = measure(scenario, addresses, args.rounds)
            lines, record, _ = report(scenario, results)
            print("\n".join(lines), flush=True)
            save_samples(len(records), results)
            records.append(record)
        if not args.only:
            sweep(mesh.runtime_address, mesh.router_address)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    if not args.only:
        costs = journal.measure()
        print("\n".join(journal.report(costs)), flush=True)
        (out / "journal.json").write_text(json.dumps({"microseconds_per_call": costs}, indent=2))
    (out / "router_vs_direct.json").write_text(json.dumps(
        {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "results": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
