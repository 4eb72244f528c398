"""Replicas: throughput with two Python replicas against one, and failover under load, in one run.

Starts a private mesh on free ports (etcd, one router and its Python runtime, replica A;
no audit, no R), a second Python runtime (replica B, with a 2 s lease) and a second
router that forwards over gRPC rather than the mesh link. ``iris-one`` is held by A
alone and ``iris-two`` by A and B, so alternating rounds of the same load on the two
models through the same router compare one replica with two; a round straight to A
shows what one runtime does without a router. Then, under a closed-loop load through
both routers, B is killed with SIGKILL: the failed calls, the longest gap between
successful calls and how long B stayed in the registry are reported. Prints a table and
the ratios; writes bench/results/scale.json.

    .venv/bin/python bench/scale.py [--rounds 3] [--seconds 2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import h2load  # noqa: E402
from bench.loadgen import METHOD, Result, run_load  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.local.process import ManagedProcess, start_service  # noqa: E402
from meshserve.oip import build_request  # noqa: E402
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg  # noqa: E402
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc as reg_grpc  # noqa: E402

IRIS = ROOT / "examples" / "models" / "iris"
LEASE_TTL_S = 2
DIRECT, ONE, TWO = "direct to one runtime", "router, 1 replica", "router, 2 replicas"
LINK, GRPC = "router (mesh link)", "router (gRPC)"


def request(model: str) -> bytes:
    rows = np.random.default_rng(0).random((1, 4), dtype=np.float32)
    return build_request(model, {"features": rows}).SerializeToString()


def measure_once(address: str, body: bytes, concurrency: int, seconds: float) -> Result:
    if h2load.available():
        return h2load.run_h2load(address, body, concurrency=concurrency, warmup_s=0.5, duration_s=seconds)
    return run_load(address, body, concurrency=concurrency, processes=2, warmup_s=0.5, duration_s=seconds)


def throughput(setups: dict[str, tuple[str, bytes]], rounds: int, concurrency: int,
               seconds: float) -> dict[str, Result]:
    """Alternating rounds over the set-ups, so drift in the machine's load touches them alike."""
    runs: dict[str, list[Result]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (address, body) in setups.items():
            runs[name].append(measure_once(address, body, concurrency, seconds))
    return {name: Result(np.concatenate([r.latencies_s for r in parts]), sum(r.duration_s for r in parts),
                         sum(r.errors for r in parts)) for name, parts in runs.items()}


@dataclass(frozen=True)
class Failover:
    calls: int
    failed: int
    gap_before_ms: float  # longest gap between successful calls before the kill
    gap_after_ms: float  # ... from the kill to the end of the load
    p99_before_ms: float
    max_after_ms: float  # slowest call that started after the kill (retries included)


def _longest_gap(ends: np.ndarray, start: float, stop: float) -> float:
    window = np.concatenate([[start], np.sort(ends[(ends > start) & (ends < stop)]), [stop]])
    return float(np.diff(window).max() * 1000)


def _failover_stats(rows: np.ndarray, load_start: float, killed_at: float, load_end: float) -> Failover:
    """``rows``: (started, ended, ok) per call through one router."""
    ok = rows[rows[:, 2] == 1]
    latency = ok[:, 1] - ok[:, 0]
    before = latency[ok[:, 1] < killed_at]
    after = latency[ok[:, 0] >= killed_at]
    return Failover(
        calls=len(rows), failed=int((rows[:, 2] == 0).sum()),
        gap_before_ms=_longest_gap(ok[:, 1], load_start + 0.5, killed_at),
        gap_after_ms=_longest_gap(ok[:, 1], killed_at, load_end),
        p99_before_ms=float(np.percentile(before, 99) * 1000) if len(before) else float("nan"),
        max_after_ms=float(after.max() * 1000) if len(after) else float("nan"),
    )


async def _listed(stub: reg_grpc.RegistryServiceStub, runtime_id: str) -> bool:
    response = await stub.ListRuntimes(reg.ListRuntimesRequest(), timeout=5)
    return any(r.runtime.id == runtime_id for r in response.runtimes)


async def failover(routers: dict[str, str], body: bytes, victim: ManagedProcess, victim_id: str,
                   callers: int, seconds: float, kill_after_s: float) -> tuple[dict[str, Failover], float]:
    """Closed-loop load through every router; SIGKILL ``victim`` after ``kill_after_s``."""
    channels = {name: grpc.aio.insecure_channel(address) for name, address in routers.items()}
    rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name in routers}
    clock = time.perf_counter
    start = clock()
    stop_at = start + seconds

    async def caller(name: str) -> None:
        call = channels[name].unary_unary(METHOD, _registered_method=True)
        while (t0 := clock()) < stop_at:
            try:
                await call(body, timeout=5)
                rows[name].append((t0, clock(), 1))
            except grpc.aio.AioRpcError:
                rows[name].append((t0, clock(), 0))

    try:
        for channel in channels.values():
            await channel.channel_ready()
        tasks = [asyncio.create_task(caller(name)) for name in routers for _ in range(callers // len(routers))]
        await asyncio.sleep(kill_after_s)
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at = clock()
        registry = reg_grpc.RegistryServiceStub(channels[LINK])
        for _ in range(1500):  # at most about 30 s
            if not await _listed(registry, victim_id):
                break
            await asyncio.sleep(0.02)
        left_after = clock() - killed_at
        await asyncio.gather(*tasks)
        victim.proc.wait(5)
    finally:
        for channel in channels.values():
            await channel.close()
    end = min(clock(), stop_at)
    return {name: _failover_stats(np.array(r, ndmin=2), start, killed_at, end) for name, r in rows.items()}, left_after


def start_runtime(name: str, repository: Path, mesh: LocalMesh) -> tuple[ManagedProcess, str, str]:
    runtime_id = f"bench-{name}"
    proc, info = start_service(runtime_id, "meshserve.runtimes.python", [
        "--port", "0", "--model-repository", str(repository), "--etcd-endpoint", mesh.etcd_endpoint,
        "--lease-ttl-s", str(LEASE_TTL_S), "--runtime-id", runtime_id, "--log-level", "WARNING",
        *mesh.mesh_flags(),
    ], mesh.data_dir, log_path=mesh.log_dir / f"{runtime_id}.log", timeout=120)
    return proc, str(info["address"]), runtime_id


def wait_listed(address: str, runtime_id: str, timeout: float = 30.0) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = reg_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + timeout
        while not any(r.runtime.id == runtime_id
                      for r in stub.ListRuntimes(reg.ListRuntimesRequest(), timeout=5).runtimes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{runtime_id} is not listed by the router at {address}")
            time.sleep(0.05)


def throughput_lines(results: dict[str, Result], tool: str, concurrency: int) -> list[str]:
    lines = [f"\niris, 1 row, concurrency {concurrency} ({tool})",
             f"  {'':26} {'p50 ms':>9} {'p99 ms':>9} {'calls/s':>9} {'calls':>7} {'errors':>7}"]
    for name, res in results.items():
        lines.append(f"  {name:26} {res.percentile_ms(50):9.3f} {res.percentile_ms(99):9.3f} "
                     f"{res.throughput:9.0f} {res.calls:7d} {res.errors:7d}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the throughput set-ups")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per set-up and round")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight in the throughput runs")
    parser.add_argument("--callers", type=int, default=8, help="closed-loop callers in the failover run")
    args = parser.parse_args()
    if not (IRIS / "1" / "model.skops").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_examples.py")], check=True)
    tool = "h2load" if h2load.available() else "Python load generator (h2load not installed)"
    print(f"meshserve replica benchmark on {os.cpu_count()} cores; load from {tool}", flush=True)
    with tempfile.TemporaryDirectory(prefix="meshserve-scale-") as tmp:
        folder = Path(tmp)
        both, b_only = folder / "a", folder / "b"
        for repository, names in ((both, ("iris-one", "iris-two")), (b_only, ("iris-two",))):
            for name in names:
                shutil.copytree(IRIS, repository / name)
        config = MeshConfig(model_repository=both, router_port=0, etcd_port=0, audit=False, r_runtime=False,
                            data_dir=folder / "data", log_level="WARNING")
        with LocalMesh(config) as mesh:
            b, _, b_id = start_runtime("b", b_only, mesh)
            grpc_router, info = start_service("router-grpc", "meshserve.services.router", [
                "--port", "0", "--dev-mode", "--no-use-link", "--etcd-endpoint", mesh.etcd_endpoint,
                "--log-level", "WARNING"], mesh.data_dir, log_path=mesh.log_dir / "router-grpc.log")
            try:
                routers = {LINK: mesh.router_address, GRPC: str(info["address"])}
                for address in routers.values():
                    wait_listed(address, b_id)
                setups = {DIRECT: (mesh.runtime_address, request("iris-one")),
                          ONE: (mesh.router_address, request("iris-one")),
                          TWO: (mesh.router_address, request("iris-two"))}
                results = throughput(setups, args.rounds, args.concurrency, args.seconds)
                stats, left_after = asyncio.run(failover(routers, request("iris-two"), b, b_id, args.callers,
                                                         seconds=6.0, kill_after_s=2.0))
            finally:
                grpc_router.stop()
                b.stop()

    lines = throughput_lines(results, tool, args.concurrency)
    ratio_tp = results[TWO].throughput / results[ONE].throughput
    ratio_p50 = results[TWO].percentile_ms(50) / results[ONE].percentile_ms(50)
    router_share = results[ONE].throughput / results[DIRECT].throughput
    lines += [f"  {'2 replicas / 1 replica':26} throughput {ratio_tp:.2f}x, p50 {ratio_p50:.2f}x",
              f"  {'router, 1 replica / direct':26} throughput {router_share:.2f}x"]
    lines += [f"\nfailover: replica B SIGKILLed 2 s into 6 s of load ({args.callers} callers, iris-two on A and B)",
              f"  {'':20} {'calls':>7} {'failed':>7} {'gap before':>11} {'gap after':>10} {'p99 before':>11} "
              f"{'max after':>10}  (ms)"]
    for name, s in stats.items():
        lines.append(f"  {name:20} {s.calls:7d} {s.failed:7d} {s.gap_before_ms:11.1f} {s.gap_after_ms:10.1f} "
                     f"{s.p99_before_ms:11.1f} {s.max_after_ms:10.1f}")
    lines.append(f"  B left the registry {left_after:.2f} s after the kill (lease TTL {LEASE_TTL_S} s); "
                 "gap: longest time without a successful call")
    print("\n".join(lines))

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "load": tool,
        "throughput": {name: {"p50_ms": r.percentile_ms(50), "p99_ms": r.percentile_ms(99),
                              "throughput": r.throughput, "calls": r.calls, "errors": r.errors}
                       for name, r in results.items()},
        "ratios": {"two_over_one_throughput": ratio_tp, "two_over_one_p50": ratio_p50,
                   "router_one_over_direct_throughput": router_share},
        "failover": {name: dataclasses.asdict(s) for name, s in stats.items()},
        "failover_left_registry_s": left_after,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
