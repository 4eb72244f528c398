"""Helpers for the end-to-end tests: polling, starting services as processes, calling iris."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aetcd
import grpc
import numpy as np
import yaml

from meshserve.local.process import ManagedProcess, start_service
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry import keys
from meshserve.registry.etcd import with_etcd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "models"
IRIS_SKOPS = EXAMPLES / "iris" / "1" / "model.skops"

T = TypeVar("T")

# A few rows of each species, and a row between the classes.
IRIS_ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [6.0, 2.7, 5.1, 1.6]], dtype=np.float32
)

# What the ``faulty`` model of the e2e mesh raises in predict: it must reach the runtime's log, never a caller.
FAULT = "the faulty model's secret words 7f3a"


def assert_eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
                      retry_on: tuple[type[BaseException], ...] = (AssertionError,)) -> T:
    """Call ``check`` until it returns without raising one of ``retry_on``; its last error otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except retry_on:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The RpcError ``call`` raises (fails the test if it succeeds)."""
    try:
        call()
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded; an error was expected")


def copy_model(source: Path, repository: Path, name: str) -> Path:
    """Copy one model folder (every version) into ``repository`` under ``name``."""
    target = repository / name
    shutil.copytree(source, target)
    return target


def write_python_model(repository: Path, name: str, code: str, cls: str,
                       parameters: Mapping[str, Any] | None = None) -> Path:
    """A version-1 Python-class model taking x FP32 [-1] and returning y FP32 [-1]."""
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(code)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "framework": "python", "entrypoint": f"model.py:{cls}", "parameters": dict(parameters or {}),
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    }))
    return folder


def _service(name: str, module: str, args: list[str], folder: Path, timeout: float) -> tuple[ManagedProcess, str]:
    proc, info = start_service(name, module, ["--port", "0", *args], folder, timeout=timeout)
    return proc, str(info["address"])


@contextmanager
def runtime_process(repository: Path, etcd_endpoint: str, folder: Path, *, lease_ttl_s: int = 5,
                    runtime_id: str | None = None, extra: Sequence[str] = (),
                    timeout: float = 60.0) -> Iterator[tuple[ManagedProcess, str, str]]:
    """A Python runtime process: yields (process, address, runtime id); stopped (or reaped) on exit."""
    runtime_id = runtime_id or f"e2e-{uuid.uuid4().hex[:8]}"
    proc, address = _service(f"runtime-{runtime_id}", "meshserve.runtimes.python", [
        "--model-repository", str(repository), "--etcd-endpoint", etcd_endpoint,
        "--lease-ttl-s", str(lease_ttl_s), "--runtime-id", runtime_id, "--dev-mode", *extra,
    ], folder, timeout)
    try:
        yield proc, address, runtime_id
    finally:
        proc.stop(grace=5)


@contextmanager
def router_process(etcd_endpoint: str, folder: Path, *extra: str,
                   timeout: float = 30.0) -> Iterator[tuple[ManagedProcess, str]]:
    """A router process: yields (process, address)."""
    proc, address = _service(f"router-{uuid.uuid4().hex[:6]}", "meshserve.services.router",
                             ["--etcd-endpoint", etcd_endpoint, "--dev-mode", *extra], folder, timeout)
    try:
        yield proc, address
    finally:
        proc.stop(grace=5)


def infer(channel: grpc.Channel, model: str, x: np.ndarray, *, timeout: float = 5.0,
          version: str = "") -> dict[str, np.ndarray]:
    """One ModelInfer through the generated stub; the outputs as numpy."""
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    request = build_request(model, {"features": x}, model_version=version)
    return decode_response(stub.ModelInfer(request, timeout=timeout))


def model_infer(channel: grpc.Channel, request: oip.ModelInferRequest, timeout: float = 5.0) -> Any:
    return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)


def repository_index(channel: grpc.Channel) -> list[tuple[str, str, str]]:
    """(name, version, state) of every RepositoryIndex entry."""
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    response = stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5)
    return [(m.name, m.version, m.state) for m in response.models]


def allow_anonymous(etcd_endpoint: str, *actions: str, models: str = "*") -> None:
    """An allow rule for callers without a key (the tests that load and unload models need ``load``)."""
    rule = auth_pb2.AccessRule(id=f"anonymous-{'-'.join(actions)}", principal="anonymous", models=[models],
                               actions=list(actions))

    async def put(client: aetcd.Client) -> None:
        await client.put(keys.access_rule_key(rule.id), rule.SerializeToString())
    with_etcd(etcd_endpoint, put)
