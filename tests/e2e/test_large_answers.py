"""Answers over a size limit: RESOURCE_EXHAUSTED naming the size and the limit, tried once, holding up nothing.

A valid 60 MB iris batch (3.75 million rows) has a 75 MB answer, over the 64 MiB every
service sends by default: the runtime refuses to send it. Routers that take less than
their runtimes send refuse it too, over the mesh link (the frame is dropped unread, the
connection kept) or gRPC. None of these is UNAVAILABLE, so no router tries another
replica, and calls beside the large one are answered as usual.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e_metrics.helpers import scrape, total

from meshserve.local.mesh import LocalMesh
from meshserve.local.process import ManagedProcess
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import (
    EXAMPLES,
    IRIS_ROWS,
    assert_eventually,
    copy_model,
    infer,
    router_process,
    rpc_error,
    runtime_process,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
REFUSED = "refused a call to model 'iris'"
RETRIES = "meshserve_router_retries_total"


@pytest.fixture(scope="module")
def replica(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory,
            router: grpc.Channel) -> Iterator[ManagedProcess]:
    """A second runtime serving iris, so a router has another replica it could (wrongly) retry on."""
    folder = tmp_path_factory.mktemp("iris-replica")
    repository = folder / "models"
    repository.mkdir()
    copy_model(EXAMPLES / "iris", repository, "iris")
    with runtime_process(repository, mesh.etcd_endpoint, folder) as (proc, _, _):
        assert_eventually(lambda: two_replicas(router), timeout=20, retry_on=(AssertionError, grpc.RpcError))
        yield proc


def two_replicas(channel: grpc.Channel) -> None:
    index = oip_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5)
    reason = next(m.reason for m in index.models if m.name == "iris" and m.version == "1")
    assert re.search(r"\breplicas=2\b", reason), reason


def router_retries(mesh: LocalMesh) -> float:
    samples = scrape(mesh.metrics_addresses["router"])
    assert any(name == RETRIES for name, _ in samples), sorted({name for name, _ in samples})
    return total(samples, RETRIES)


def refusals(logs: list[Path], offsets: list[int]) -> list[str]:
    """The refusal lines about iris written to ``logs`` past ``offsets``."""
    lines = []
    for log, offset in zip(logs, offsets, strict=True):
        with log.open("rb") as f:
            f.seek(offset)
            lines += [line for line in f.read().decode(errors="replace").splitlines() if REFUSED in line]
    return lines


class SmallCalls:
    """Small iris calls, one after another on a thread, while a large one runs."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.results: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                assert infer(self.channel, "iris", IRIS_ROWS, timeout=10)["label"].shape == (len(IRIS_ROWS),)
                outcome = "OK"
            except grpc.RpcError as e:
                outcome = f"{e.code().name}: {e.details()}"
            self.results.append((outcome, time.monotonic() - started))
            time.sleep(0.02)

    def __enter__(self) -> SmallCalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=20)


def test_an_answer_over_the_runtimes_limit(any_router: grpc.Channel, router: grpc.Channel, mesh: LocalMesh,
                                           replica: ManagedProcess) -> None:
    batch = np.tile(IRIS_ROWS, (60_000_000 // IRIS_ROWS.nbytes, 1))  # 60 MB of valid rows
    assert batch.nbytes == 60_000_000
    logs = [mesh.log_dir / "runtime.log", replica.log_path]
    offsets = [log.stat().st_size for log in logs]
    retries = router_retries(mesh)
    with SmallCalls(any_router) as small:
        started = time.monotonic()
        error = rpc_error(lambda: infer(any_router, "iris", batch, timeout=60))
        elapsed = time.monotonic() - started
    assert error.code() == EXHAUSTED, (error.code(), error.details())
    found = re.search(r"the answer of model 'iris' version '1' is (75,000,\d{3}) bytes; this runtime sends at "
                      r"most 67,108,864 \(max_message_bytes\)", error.details())
    assert found, error.details()

    # One attempt: one runtime refused it (one line in one log) and the router tried no other replica.
    def refused_once() -> None:
        lines = refusals(logs, offsets)
        assert len(lines) == 1 and "RESOURCE_EXHAUSTED" in lines[0], lines

    assert_eventually(refused_once, timeout=5)
    assert router_retries(mesh) == retries
    # Nothing else was held up: every small call beside it answered, none took long.
    assert small.results, "no small call ran"
    assert all(outcome == "OK" for outcome, _ in small.results), small.results
    assert max(seconds for _, seconds in small.results) < min(5.0, elapsed), small.results
    assert infer(any_router, "iris", IRIS_ROWS)["label"].shape == (len(IRIS_ROWS),)


@pytest.fixture(scope="module", params=["link", "grpc"])
def small_router(request: pytest.FixtureRequest, mesh: LocalMesh,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """A router on the mesh's etcd taking and sending 1 MiB at most, over the mesh link or over gRPC only."""
    extra = ["--max-message-bytes", str(MiB)] + (["--no-use-link"] if request.param == "grpc" else [])
    folder = tmp_path_factory.mktemp(f"small-{request.param}-router")
    with router_process(mesh.etcd_endpoint, folder, *extra) as (_, address), grpc.insecure_channel(address) as channel:
        assert_eventually(lambda: infer(channel, "iris", IRIS_ROWS), timeout=10, retry_on=(grpc.RpcError,))
        yield channel


def test_an_answer_over_the_routers_limit(small_router: grpc.Channel, mesh: LocalMesh) -> None:
    # 0.9 MiB of rows, under the router's 1 MiB; the answer (20 bytes a row against 16) is over it.
    rows = np.tile(IRIS_ROWS, (int(0.9 * MiB) // IRIS_ROWS.nbytes, 1))
    with SmallCalls(small_router) as small:
        error = rpc_error(lambda: infer(small_router, "iris", rows, timeout=20))
    assert error.code() == EXHAUSTED, (error.code(), error.details())
    found = re.search(r"is (1,1\d\d,\d{3}) bytes; this router (takes|sends) at most 1,048,576 \(max_message_bytes\)",
                      error.details())
    assert found, error.details()
    assert "unavailable" not in error.details()
    assert all(outcome == "OK" for outcome, _ in small.results), small.results
    assert infer(small_router, "iris", rows[:1000])["label"].shape == (1000,)  # the same router still serves
