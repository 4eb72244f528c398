"""Helpers for the Triton tests: the registrar as a process, model listings, tritonclient calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tc

from meshserve.local.process import ManagedProcess, start_service
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

# A Python-backend model whose code raises while loading: Triton reports it UNAVAILABLE.
BROKEN_CONFIG = """
name: "broken"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("weights file missing: cannot initialize broken")
"""


@contextmanager
def registrar_process(triton_address: str, etcd_endpoint: str, folder: Path, *,
                      lease_ttl_s: int = 3) -> Iterator[ManagedProcess]:
    process, _ = start_service("triton-registrar", "meshserve.runtimes.triton", [
        "--triton-address", triton_address, "--etcd-endpoint", etcd_endpoint, "--lease-ttl-s", str(lease_ttl_s),
    ], folder)
    try:
        yield process
    finally:
        process.stop()


def index(channel: grpc.Channel) -> dict[tuple[str, str], oip.RepositoryIndexResponse.ModelIndex]:
    """The router's mesh-wide RepositoryIndex, by (model, version)."""
    reply = oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5)
    return {(m.name, m.version): m for m in reply.models}


def ready_models(channel: grpc.Channel) -> set[str]:
    return {name for (name, _), m in index(channel).items() if m.state == "READY"}


def simple_inputs(a: np.ndarray, b: np.ndarray) -> list[tc.InferInput]:
    inputs = [tc.InferInput("INPUT0", list(a.shape), "INT32"), tc.InferInput("INPUT1", list(b.shape), "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def infer_simple(address: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    client = tc.InferenceServerClient(address)
    try:
        result = client.infer("simple", simple_inputs(a, b))
        return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    finally:
        client.close()


def countdown_stream(address: str, ns: list[int], *, ids: bool = True) -> list[tuple[str, int]]:
    """Send one countdown request per n on one stream; every (request id, COUNT) answered, in order."""
    client = tc.InferenceServerClient(address)
    received: list[tuple[str, int]] = []
    errors: list[Exception] = []

    def callback(result: tc.InferResult | None, error: Exception | None) -> None:
        if error is not None:
            errors.append(error)
        else:
            assert result is not None
            received.append((result.get_response().id, int(result.as_numpy("COUNT")[0])))

    client.start_stream(callback=callback)
    try:
        for i, n in enumerate(ns):
            value = tc.InferInput("N", [1], "INT32")
            value.set_data_from_numpy(np.array([n], dtype=np.int32))
            client.async_stream_infer("countdown", [value], request_id=f"r{i}" if ids else "")
    finally:
        client.stop_stream()  # waits for the stream to end
        client.close()
    if errors:
        raise errors[0]
    return received
