"""A closed-loop load generator that is not the bottleneck.

Requests are serialized once and sent as raw bytes over plain gRPC channels (no
client-side protobuf work per call), from several processes, each running several
concurrent callers on its own event loop. Each process records every latency; the
parent merges them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from dataclasses import dataclass

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Result:
    latencies_s: np.ndarray
    duration_s: float
    errors: int

    @property
    def calls(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.calls / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.calls else float("nan")


async def _run(address: str, request: bytes, callers: int, warmup_s: float, duration_s: float,
               max_calls: int) -> tuple[list[float], int, float]:
    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20),
               ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(METHOD, _registered_method=True)
        await call(request, timeout=30)
        latencies: list[float] = []
        errors = 0
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def caller() -> None:
            nonlocal errors
            clock = time.perf_counter
            while True:
                t0 = clock()
                if t0 >= stop_at or len(latencies) >= max_calls:
                    return
                try:
                    await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                t1 = clock()
                if t0 >= measure_from:
                    latencies.append(t1 - t0)

        await asyncio.gather(*(caller() for _ in range(callers)))
        measured = min(time.perf_counter(), stop_at) - measure_from
        return latencies, errors, measured


def _worker(address: str, request: bytes, callers: int, warmup_s: float, duration_s: float, max_calls: int,
            out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_run(address, request, callers, warmup_s, duration_s, max_calls)))


def run_load(address: str, request: bytes, *, concurrency: int, processes: int,
             warmup_s: float = 1.0, duration_s: float = 5.0, max_calls: int = 200_000) -> Result:
    """Drive ``concurrency`` callers spread over ``processes`` processes against ``address``."""
    processes = max(1, min(processes, concurrency))
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    workers = [ctx.Process(target=_worker, args=(address, request, n, warmup_s, duration_s, max_calls, queue))
               for n in shares]
    for w in workers:
        w.start()
    parts = [queue.get(timeout=warmup_s + duration_s + 120) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    latencies = np.array([x for lat, _, _ in parts for x in lat])
    return Result(latencies, max(m for _, _, m in parts), sum(e for _, e, _ in parts))
