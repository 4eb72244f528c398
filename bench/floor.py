"""Floors: the least a Python gRPC process can cost per call, measured beside what it bounds.

- :func:`floor_server` answers ModelInfer with canned bytes and does nothing else: any
  runtime written in Python pays at least this per call;
- :func:`passthrough_server` forwards ModelInfer's bytes to one fixed upstream over one
  channel and returns the answer, with no routing, audit or checks: any Python proxy in
  front of that upstream (the router) pays at least this.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

import grpc


async def _serve(response: bytes, upstream: str, ports: mp.Queue) -> None:  # type: ignore[type-arg]
    async def model_infer(request: bytes, context: Any) -> bytes:
        return response

    if upstream:
        channel = grpc.aio.insecure_channel(upstream)
        forward = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def model_infer(request: bytes, context: Any) -> bytes:
            answer: bytes = await forward(request, timeout=context.time_remaining())
            return answer

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await server.wait_for_termination()


def _main(response: bytes, upstream: str, ports: mp.Queue) -> None:  # type: ignore[type-arg]
    asyncio.run(_serve(response, upstream, ports))


def floor_server(response: bytes) -> contextlib.AbstractContextManager[str]:
    """Run the canned-answer server in its own process; yield its address."""
    return _floor(response, "")


def passthrough_server(upstream: str) -> contextlib.AbstractContextManager[str]:
    """Run the bare pass-through to ``upstream`` in its own process; yield its address."""
    return _floor(b"", upstream)


@contextlib.contextmanager
def _floor(response: bytes, upstream: str) -> Iterator[str]:
    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    process = ctx.Process(target=_main, args=(response, upstream, ports), daemon=True)
    process.start()
    try:
        yield f"127.0.0.1:{ports.get(timeout=30)}"
    finally:
        process.terminate()
        process.join(timeout=10)
