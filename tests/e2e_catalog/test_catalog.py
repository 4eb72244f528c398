"""Catalog models load on their first call, within a runtime's memory budget (real etcd, runtime, router).

The runtime starts with nothing loaded and a budget of 4 MiB; catalog models point at the
example iris artifact and declare 1 MiB each, so at most four fit at once.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import skops.io as sio
from e2e.helpers import (
    EXAMPLES,
    IRIS_ROWS,
    IRIS_SKOPS,
    assert_eventually,
    infer,
    router_process,
    rpc_error,
    runtime_process,
)

from e2e_catalog.helpers import MiB, placements, ready_models, register
from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb

BUDGET_MB = 4


@dataclass
class Mesh:
    etcd: str
    router: str
    runtime_log: Path
    runtime_id: str


def loads(mesh: Mesh, name: str) -> int:
    """How many times the runtime loaded ``name`` (from its log)."""
    return mesh.runtime_log.read_text().count(f"loaded model {name} version 1 ")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("catalog-mesh")
    repository = folder / "models"
    shutil.copytree(EXAMPLES / "iris", repository / "iris")
    with EtcdServer(folder, folder / "etcd.log") as etcd, \
            runtime_process(repository, etcd.endpoint, folder, extra=[
                "--load", "", "--memory-budget-mb", str(BUDGET_MB)]) as (_, _, runtime_id), \
            router_process(etcd.endpoint, folder) as (_, router):
        yield Mesh(etcd.endpoint, router, folder / f"runtime-{runtime_id}.log", runtime_id)


def test_a_registered_model_loads_on_its_first_call(mesh: Mesh) -> None:
    register(mesh.etcd, "iris-lazy")
    assert "iris-lazy" not in ready_models(mesh.etcd)
    with grpc.insecure_channel(mesh.router) as channel:
        out = assert_eventually(lambda: infer(channel, "iris-lazy", IRIS_ROWS, timeout=30),
                                retry_on=(grpc.RpcError,), timeout=10)
    local = sio.load(IRIS_SKOPS, trusted=sio.get_untrusted_types(file=IRIS_SKOPS))
    assert out["label"].tolist() == local.predict(IRIS_ROWS).tolist()
    assert "iris-lazy" in ready_models(mesh.etcd)
    assert loads(mesh, "iris-lazy") == 1


def test_concurrent_first_calls_load_once(mesh: Mesh) -> None:
    register(mesh.etcd, "iris-rush")
    time.sleep(0.5)  # the router's watch sees the catalog entry
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def call() -> None:
        with grpc.insecure_channel(mesh.router) as channel:
            start.wait()
            try:
                infer(channel, "iris-rush", IRIS_ROWS, timeout=30)
            except grpc.RpcError as e:
                errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert loads(mesh, "iris-rush") == 1


def test_the_budget_holds_and_the_hot_set_stays_through_a_burst_of_one_off_models(mesh: Mesh) -> None:
    hot = ["hot-a", "hot-b"]
    burst = [f"once-{i}" for i in range(8)]
    for name in hot + burst:
        register(mesh.etcd, name)
    time.sleep(0.5)
    with grpc.insecure_channel(mesh.router) as channel:
        for _ in range(3):  # the hot set: called again and again
            for name in hot:
                infer(channel, name, IRIS_ROWS, timeout=30)
        for name in burst:  # each called once
            infer(channel, name, IRIS_ROWS, timeout=30)
            held = {m: p for (m, _, rid), p in placements(mesh.etcd).items()
                    if rid == mesh.runtime_id and p.state in (pb.MODEL_STATE_READY, pb.MODEL_STATE_LOADING)}
            assert sum(p.memory_bytes for p in held.values()) <= BUDGET_MB * MiB, held
            assert set(hot) <= set(held), f"the hot set was evicted by {name}: {sorted(held)}"
            for h in hot:
                infer(channel, h, IRIS_ROWS, timeout=30)
    for name in hot:
        assert loads(mesh, name) == 1
    assert "evicted to make room" in mesh.runtime_log.read_text()


def test_a_model_that_cannot_load_is_reported_and_not_retried_at_once(mesh: Mesh) -> None:
    register(mesh.etcd, "broken", artifact="no-such-model/1")
    time.sleep(0.5)
    with grpc.insecure_channel(mesh.router) as channel:
        first = rpc_error(lambda: infer(channel, "broken", IRIS_ROWS, timeout=30))
        started = time.monotonic()
        again = rpc_error(lambda: infer(channel, "broken", IRIS_ROWS, timeout=30))
    assert "no-such-model/1" in (first.details() or ""), first.details()
    assert "placing it again in" in (again.details() or ""), again.details()
    assert time.monotonic() - started < 1.0
    assert first.code() == again.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_too_big_for_the_budget_is_refused_with_resource_exhausted(mesh: Mesh) -> None:
    register(mesh.etcd, "iris-huge", memory_mb=BUDGET_MB + 1)
    time.sleep(0.5)
    with grpc.insecure_channel(mesh.router) as channel:
        error = rpc_error(lambda: infer(channel, "iris-huge", IRIS_ROWS, timeout=30))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "budget" in (error.details() or "")


def test_idle_models_unload(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(EXAMPLES / "iris", repository / "iris")
    with EtcdServer(tmp_path, tmp_path / "etcd.log") as etcd, \
            runtime_process(repository, etcd.endpoint, tmp_path, extra=["--idle-unload-s", "2"]):
        assert "iris" in ready_models(etcd.endpoint)  # loaded at start

        def unloaded() -> None:
            (placement,) = [p for (m, _, _), p in placements(etcd.endpoint).items() if m == "iris"]
            assert placement.state == pb.MODEL_STATE_AVAILABLE
            assert "2 s without a call" in placement.reason
        assert_eventually(unloaded, timeout=10)


def test_an_artifact_outside_the_runtimes_roots_is_never_read(mesh: Mesh) -> None:
    register(mesh.etcd, "escape", artifact="/etc")
    time.sleep(0.5)
    with grpc.insecure_channel(mesh.router) as channel:
        error = rpc_error(lambda: infer(channel, "escape", IRIS_ROWS, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside this runtime's artifact roots" in (error.details() or "")
