"""Sizing: what etcd holds, and what each router holds and receives, for a mesh of 100 runtimes and 10,000 models.

    .venv/bin/python bench/sizing.py [--runtimes 100] [--models 10000] [--replicas 2] [--churn 0.01] [--seconds 10]

A real etcd (on 127.0.0.1, in a temporary folder) gets the keys such a mesh writes: one
runtime record per runtime and one placement per model version on each runtime holding
it (``--replicas`` runtimes of the model's kind), each runtime's under its own lease, with
the real key layout (meshserve/registry/keys.py) and messages (registry.proto). One real
RegistryCache, what every router runs, then loads the registry and follows it while a
separate writer process changes ``--churn`` of the placements per second (state READY to
LOADING, as when models load and unload), each model once. Measured:

- etcd: keys, bytes of keys and values, database size, time to write them all;
- the cache: initial load, memory (resident set growth; Python allocations by tracemalloc,
  which miss protobuf's own arenas), CPU per watch event;
- fan-out: events per second the cache receives, and time from a placement's put to the
  cache's view of it (both processes read the same monotonic clock).

It prints a table, then figures for N routers extrapolated from the one measured (each
router watches the whole registry, so etcd sends every event to every router), and writes
bench/results/sizing.json. It stops by itself in well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aetcd  # noqa: E402

from meshserve.local.etcd import EtcdServer  # noqa: E402
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb  # noqa: E402
from meshserve.registry import keys  # noqa: E402
from meshserve.registry.cache import RegistryCache  # noqa: E402
from meshserve.registry.etcd import connect, split_endpoint  # noqa: E402

# Share of runtimes, and of models, of each kind.
KINDS = (("python", 0.7), ("r", 0.2), ("triton", 0.1))
PLATFORMS = {"python": "sklearn", "r": "r", "triton": "onnxruntime_onnx"}
TXN_OPS = 128  # etcd's default --max-txn-ops
ROUTERS = (1, 10, 50, 100)


@dataclass(frozen=True)
class Runtime:
    id: str
    kind: str
    address: str
    link_address: str


def plan_runtimes(count: int) -> list[Runtime]:
    """Runtimes named and addressed as the Kubernetes manifests name them (pod DNS names)."""
    runtimes = []
    for kind, share in KINDS:
        service = "triton" if kind == "triton" else f"runtime-{kind}"
        for i in range(max(1, round(count * share))):
            host = f"{service}-{i}.{service}.meshserve.svc.cluster.local"
            runtimes.append(Runtime(f"{service}-{i}", kind, f"{host}:{8001 if kind == 'triton' else 9001}",
                                    "" if kind == "triton" else f"{host}:9002"))
    return runtimes[:count]


def plan_placements(runtimes: list[Runtime], models: int, replicas: int) -> list[pb.Placement]:
    """Each model on ``replicas`` runtimes of its kind, spread evenly."""
    by_kind = {kind: [r for r in runtimes if r.kind == kind] for kind, _ in KINDS}
    kinds = [kind for kind, share in KINDS for _ in range(round(share * 10))]
    now = int(time.time() * 1000)
    placements = []
    for m in range(models):
        pool = by_kind[kinds[m % len(kinds)]]
        for j in range(min(replicas, len(pool))):
            runtime = pool[(m + j * max(1, len(pool) // replicas)) % len(pool)]
            placements.append(pb.Placement(
                model=f"model-{m:05d}", version="1", runtime_id=runtime.id, runtime_kind=runtime.kind,
                address=runtime.address, link_address=runtime.link_address, state=pb.MODEL_STATE_READY,
                platform=PLATFORMS[runtime.kind], updated_at_unix_ms=now,
            ))
    return placements


async def populate(endpoint: str, runtimes: list[Runtime], placements: list[pb.Placement]) -> dict[str, Any]:
    """Write every record the mesh holds, each runtime's under its lease; return sizes and lease ids."""
    host, port = split_endpoint(endpoint)
    # This client reads the whole registry back at once: past gRPC's 4 MiB default.
    client = aetcd.Client(host=host, port=port, timeout=30, options={"grpc.max_receive_message_length": 2**30})
    try:
        leases = {r.id: await client.lease(600) for r in runtimes}
        ops = []
        for r in runtimes:
            record = pb.Runtime(id=r.id, kind=r.kind, address=r.address, link_address=r.link_address,
                                started_at_unix_ms=int(time.time() * 1000), version="0.1.0")
            ops.append((keys.runtime_key(r.id), record.SerializeToString(), leases[r.id]))
        for p in placements:
            ops.append((keys.placement_key(p.model, p.version, p.runtime_id), p.SerializeToString(),
                        leases[p.runtime_id]))
        started = time.perf_counter()
        batches = [ops[i:i + TXN_OPS] for i in range(0, len(ops), TXN_OPS)]
        gate = asyncio.Semaphore(8)

        async def write(batch: list[tuple[bytes, bytes, aetcd.Lease]]) -> None:
            async with gate:
                await client.transaction([], [client.transactions.put(k, v, lease=lease) for k, v, lease in batch], [])

        await asyncio.gather(*(write(b) for b in batches))
        write_s = time.perf_counter() - started
        stored = await client.get_prefix(keys.ROOT.encode(), keys_only=True)
        status = await client.status()
        return {
            "keys": len(list(stored)),
            "key_bytes": sum(len(k) for k, _, _ in ops),
            "value_bytes": sum(len(v) for _, v, _ in ops),
            "placement_value_bytes_avg": statistics.fmean(len(p.SerializeToString()) for p in placements),
            "db_size_bytes": status.db_size,
            "write_s": write_s,
            "leases": {rid: lease.id for rid, lease in leases.items()},
        }
    finally:
        await client.close()


def raise_receive_limit(limit: int = 256 * 2**20) -> None:
    """Let every etcd client of this process receive messages up to ``limit`` (gRPC's default is 4 MiB)."""
    original = aetcd.Client.__init__

    def init(self: aetcd.Client, *args: Any, **kwargs: Any) -> None:
        kwargs["options"] = {"grpc.max_receive_message_length": limit, **(kwargs.get("options") or {})}
        original(self, *args, **kwargs)

    aetcd.Client.__init__ = init


async def start_cache(cache: RegistryCache) -> str:
    """Start ``cache`` as a router does; "" when that works, else why not (then start it past the limit)."""
    try:
        await cache.start()
        return ""
    except aetcd.ClientError as e:
        if "larger than max" not in str(e):
            raise
        raise_receive_limit()
        await cache.start()
        return str(e)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def load_probe(endpoint: str, what: str) -> dict[str, Any]:
    """In a fresh process: load one cache and say what it took (``rss``: time and resident set; else tracemalloc)."""
    raise_receive_limit()
    warm = await connect(endpoint)  # gRPC's own threads and buffers are not the cache's
    await warm.get(b"/")
    await warm.close()
    if what == "tracemalloc":
        tracemalloc.start()
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    cache = RegistryCache(endpoint)
    await cache.start()
    load_s = time.perf_counter() - started
    gc.collect()
    found = {"load_s": load_s, "rss_growth_bytes": rss_bytes() - rss_before, "placements": len(cache.placements),
             "models": len(cache.models)}
    if what == "tracemalloc":
        found["tracemalloc_bytes"] = tracemalloc.get_traced_memory()[0]
    await cache.stop()
    return found


async def in_child(*args: str, stdin: bytes = b"") -> Any:
    """Run this script with ``args`` in a new process; its JSON answer."""
    child = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE)
    out, _ = await child.communicate(stdin)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit status {child.returncode}")
    return json.loads(out)


async def measure_cache(endpoint: str, changes: list[pb.Placement], leases: dict[str, int],
                        churn_per_s: float, seconds: float) -> dict[str, Any]:
    """Load and memory in fresh processes; then one cache here follows the writer process's changes."""
    loaded = await in_child("--probe", "rss", endpoint)
    traced = await in_child("--probe", "tracemalloc", endpoint)
    received: dict[str, float] = {}
    cpu: list[float] = []  # process CPU time at each event

    def on_change(names: set[str]) -> None:
        now = time.monotonic()
        cpu.append(time.process_time())
        for name in names:
            received.setdefault(name, now)

    cache = RegistryCache(endpoint, on_change=on_change)
    refused = await start_cache(cache)
    received.clear()
    cpu.clear()
    plan = {"endpoint": endpoint, "per_s": churn_per_s, "seconds": seconds, "leases": leases,
            "placements": [p.SerializeToString().hex() for p in changes]}
    sent: dict[str, float] = await in_child("--writer", stdin=json.dumps(plan).encode())
    await asyncio.sleep(0.5)  # the last events arrive
    await cache.stop()

    latencies = sorted((received[m] - t) * 1000 for m, t in sent.items() if m in received)
    window = max(received.values()) - min(received.values()) if len(received) > 1 else 0.0
    events = len(cpu)
    return {
        "router_as_is_refused": refused,
        "placements_in_cache": loaded["placements"], "models_in_cache": loaded["models"],
        "load_s": loaded["load_s"], "rss_growth_bytes": loaded["rss_growth_bytes"],
        "tracemalloc_bytes": traced["tracemalloc_bytes"],
        "changes_sent": len(sent), "changes_seen": len(latencies), "events": events,
        "events_per_s": events / window if window else 0.0,
        "cpu_share_of_core": (cpu[-1] - cpu[0]) / window if window else 0.0,
        "cpu_ms_per_event": 1000 * (cpu[-1] - cpu[0]) / (events - 1) if events > 1 else None,
        "latency_ms_p50": statistics.median(latencies) if latencies else None,
        "latency_ms_p99": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "latency_ms_max": latencies[-1] if latencies else None,
    }


async def write_changes(plan: dict[str, Any]) -> dict[str, float]:
    """The writer process: put each change once, ``per_s`` a second in 20 ticks a second; when each was sent."""
    client = await connect(plan["endpoint"])
    changes = [pb.Placement.FromString(bytes.fromhex(h)) for h in plan["placements"]]
    per_tick = max(1, round(plan["per_s"] / 20))
    sent: dict[str, float] = {}
    start = time.monotonic()
    try:
        for tick, i in enumerate(range(0, len(changes), per_tick)):
            await asyncio.sleep(max(0.0, start + tick / 20 - time.monotonic()))
            batch = changes[i:i + per_tick]

            async def put(p: pb.Placement) -> None:
                p.state = pb.MODEL_STATE_LOADING
                p.updated_at_unix_ms = int(time.time() * 1000)
                sent[p.model] = time.monotonic()
                await client.put(keys.placement_key(p.model, p.version, p.runtime_id), p.SerializeToString(),
                                 lease=plan["leases"][p.runtime_id])

            await asyncio.gather(*(put(p) for p in batch))
    finally:
        await client.close()
    return sent


def extrapolate(etcd: dict[str, Any], cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-router figures stay as measured; etcd's outbound work grows with the number of routers."""
    event_bytes = etcd["placement_value_bytes_avg"] + 60  # key and watch-response framing, roughly
    snapshot = etcd["key_bytes"] + etcd["value_bytes"]
    return [{
        "routers": n,
        "per_router_memory_mib": cache["rss_growth_bytes"] / 2**20,
        "per_router_watch_cpu_share": cache["cpu_share_of_core"],
        "etcd_watch_events_out_per_s": n * cache["events_per_s"],
        "etcd_watch_kib_out_per_s": n * cache["events_per_s"] * event_bytes / 1024,
        "etcd_snapshot_mib_if_all_routers_restart": n * snapshot / 2**20,
    } for n in ROUTERS]


def report(args: argparse.Namespace, etcd: dict[str, Any], cache: dict[str, Any],
           scaled: list[dict[str, Any]]) -> None:
    mib = 2**20
    print(f"\nSizing: {args.runtimes} runtimes, {args.models} models x {args.replicas} replicas, "
          f"{args.churn:.1%} of placements changing per second for {args.seconds:.0f} s "
          f"({os.cpu_count()} cores, one etcd 3.5 on loopback, one RegistryCache)")
    rows = [
        ("etcd keys", f"{etcd['keys']:,}"),
        ("etcd key + value bytes", f"{(etcd['key_bytes'] + etcd['value_bytes']) / mib:.1f} MiB "
                                   f"({etcd['placement_value_bytes_avg']:.0f} B per placement value)"),
        ("etcd database size", f"{etcd['db_size_bytes'] / mib:.1f} MiB"),
        ("writing every record (8 txns of 128 in flight)", f"{etcd['write_s']:.2f} s"),
        ("cache: initial load (fresh process)",
         f"{cache['load_s']:.2f} s ({cache['placements_in_cache']:,} placements, {cache['models_in_cache']:,} models)"),
        ("cache: resident memory growth (fresh process)", f"{cache['rss_growth_bytes'] / mib:.1f} MiB"),
        ("cache: Python allocations (tracemalloc)", f"{cache['tracemalloc_bytes'] / mib:.1f} MiB"),
        ("watch events received", f"{cache['events_per_s']:.0f} /s ({cache['changes_seen']:,} of "
                                  f"{cache['changes_sent']:,} changes seen)"),
        ("put -> cache, p50 / p99 / max", f"{cache['latency_ms_p50']:.1f} / {cache['latency_ms_p99']:.1f} / "
                                          f"{cache['latency_ms_max']:.1f} ms"),
        ("cache CPU while following", f"{cache['cpu_share_of_core']:.0%} of a core "
                                      f"({cache['cpu_ms_per_event']:.2f} ms per event)"),
    ]
    for label, value in rows:
        print(f"  {label:48}{value}")
    if cache["router_as_is_refused"]:
        print(f"\n  NOTE: the router as it is cannot load this registry: {cache['router_as_is_refused']}.\n"
              "  The figures above are with the etcd client's gRPC receive limit raised in this process.")
    print("\nExtrapolated to N routers (each watches the whole registry; per-router figures as measured above):")
    print(f"  {'routers':>8}{'etcd events out /s':>20}{'etcd watch KiB/s':>18}{'all restart: MiB read':>24}")
    for row in scaled:
        print(f"  {row['routers']:>8}{row['etcd_watch_events_out_per_s']:>20,.0f}"
              f"{row['etcd_watch_kib_out_per_s']:>18,.0f}{row['etcd_snapshot_mib_if_all_routers_restart']:>24,.1f}")


async def run(args: argparse.Namespace) -> int:
    runtimes = plan_runtimes(args.runtimes)
    placements = plan_placements(runtimes, args.models, args.replicas)
    per_s = args.churn * len(placements)
    first_of_model = list({p.model: p for p in reversed(placements)}.values())  # each model changes once
    count = int(per_s * args.seconds)
    changes = first_of_model[:: max(1, len(first_of_model) // count)][:count]
    with tempfile.TemporaryDirectory(prefix="meshserve-sizing-") as tmp:
        server = EtcdServer(Path(tmp), Path(tmp) / "etcd.log", host="127.0.0.1")
        server.start()
        try:
            etcd = await populate(server.endpoint, runtimes, placements)
            leases = etcd.pop("leases")
            cache = await measure_cache(server.endpoint, changes, leases, per_s, args.seconds)
        finally:
            server.stop()
    scaled = extrapolate(etcd, cache)
    report(args, etcd, cache, scaled)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sizing.json").write_text(json.dumps({
        "command": "python bench/sizing.py " + " ".join(sys.argv[1:]), "cores": os.cpu_count(),
        "runtimes": len(runtimes), "models": args.models, "placements": len(placements),
        "churn_per_s": per_s, "etcd": etcd, "cache": cache, "extrapolated": scaled,
    }, indent=2))
    print(f"\nresults: {out / 'sizing.json'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runtimes", type=int, default=100)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=2, help="runtimes holding each model")
    parser.add_argument("--churn", type=float, default=0.01, help="share of placements changing per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long placements change")
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", nargs=2, metavar=("WHAT", "ENDPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:  # the writer process: a plan on stdin, when each change was sent on stdout
        sys.stdout.write(json.dumps(asyncio.run(write_changes(json.loads(sys.stdin.read())))))
        return 0
    if args.probe:  # a fresh process loading one cache
        sys.stdout.write(json.dumps(asyncio.run(load_probe(args.probe[1], args.probe[0]))))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
