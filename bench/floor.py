"""The floor: a Python gRPC server that answers ModelInfer with canned bytes and does nothing else.

Any runtime written in Python pays at least this per call, so a benchmark that
reports an absolute overhead reports it next to this floor, measured in the same run
with the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

import grpc


async def _serve(response: bytes, ports: mp.Queue) -> None:  # type: ignore[type-arg]
    async def model_infer(request: bytes, context: Any) -> bytes:
        return response

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await server.wait_for_termination()


def _main(response: bytes, ports: mp.Queue) -> None:  # type: ignore[type-arg]
    asyncio.run(_serve(response, ports))


@contextlib.contextmanager
def floor_server(response: bytes) -> Iterator[str]:
    """Run the canned-answer server in its own process; yield its address."""
    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    process = ctx.Process(target=_main, args=(response, ports), daemon=True)
    process.start()
    try:
        yield f"127.0.0.1:{ports.get(timeout=30)}"
    finally:
        process.terminate()
        process.join(timeout=10)
