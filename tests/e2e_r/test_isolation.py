"""An R error, a worker crash and a timeout each fail only their own request.

A runtime of this module's own (two workers, ``--timeout-s 1.5``: room for a first
predict() on a busy machine) serves a copy of mtcars beside script models whose
predict() stops, quits, segfaults or sleeps. Each failure reaches the caller through the
router with its status and a message naming the cause; the next call succeeds, and so do
40 concurrent calls from 8 clients afterwards.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import assert_eventually, rpc_error

from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg

from .helpers import R_MARKS, infer, placements, r_runtime_process, write_script_model

pytestmark = R_MARKS

MTCARS = "mtcars-iso"
CARS = {"wt": np.array([2.62, 3.0, 1.835]), "hp": np.array([110.0, 150.0, 66.0])}


@pytest.fixture(scope="module")
def isolated(r_repository: Path, r_etcd: EtcdServer, router: grpc.Channel,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[np.ndarray]:
    """The module's runtime; yields mtcars' answer for CARS, computed while all is well."""
    folder = tmp_path_factory.mktemp("r-isolation")
    repository = folder / "models"
    repository.mkdir()
    shutil.copytree(r_repository / "mtcars", repository / MTCARS)
    write_script_model(repository, "r-stop", 'stop("no car is heavier than ", max(data$wt) - 1, " tons")')
    write_script_model(repository, "r-quit", "quit(save = 'no', status = 3L)")
    write_script_model(repository, "r-segfault", "tools::pskill(Sys.getpid(), 11L); Sys.sleep(10)")
    write_script_model(repository, "r-sleep", "Sys.sleep(5); data$wt")
    with r_runtime_process(repository, r_etcd.endpoint, folder, "--timeout-s", "1.5",
                           "--pool-size", "2") as (_, _, runtime_id):
        ready = {f"{m}/1": reg.MODEL_STATE_READY for m in (MTCARS, "r-stop", "r-quit", "r-segfault", "r-sleep")}

        def all_ready() -> None:
            assert placements(router, runtime_id) == ready

        assert_eventually(all_ready, timeout=15)
        yield infer(router, MTCARS, CARS)["mpg"]


def assert_still_serves(router: grpc.Channel, want: np.ndarray) -> None:
    np.testing.assert_array_equal(infer(router, MTCARS, CARS)["mpg"], want)


def test_r_error_is_internal_with_r_message(router: grpc.Channel, isolated: np.ndarray) -> None:
    error = rpc_error(lambda: infer(router, "r-stop", {"wt": np.array([4.5]), "hp": np.array([200.0])}))
    assert error.code() == grpc.StatusCode.INTERNAL, error
    assert "no car is heavier than 3.5 tons" in error.details(), error.details()
    assert "predict() failed" in error.details()
    assert_still_serves(router, isolated)


@pytest.mark.parametrize(("model", "cause"), [("r-quit", "exited with status 3"),
                                             ("r-segfault", "killed by signal 11 (SIGSEGV)")])
def test_worker_crash_fails_only_its_request(router: grpc.Channel, isolated: np.ndarray, model: str,
                                             cause: str) -> None:
    start = time.monotonic()
    error = rpc_error(lambda: infer(router, model, CARS))
    assert time.monotonic() - start < 5
    assert error.code() == grpc.StatusCode.INTERNAL, error
    details = error.details()
    assert "R worker" in details and model in details and "only this request failed" in details, details
    assert cause in details, details
    assert_still_serves(router, isolated)


def test_timeout_kills_only_the_runaway_call(router: grpc.Channel, isolated: np.ndarray) -> None:
    outcome: dict[str, grpc.RpcError] = {}

    def sleepy() -> None:
        outcome["error"] = rpc_error(lambda: infer(router, "r-sleep", CARS))

    start = time.monotonic()
    thread = threading.Thread(target=sleepy)
    thread.start()
    assert_still_serves(router, isolated)  # the other worker serves meanwhile
    thread.join(10)
    elapsed = time.monotonic() - start
    error = outcome["error"]
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert "1.5 s timeout" in error.details() and "r-sleep" in error.details(), error.details()
    assert elapsed < 3, f"the runaway predict() was ended after {elapsed:.1f} s"
    assert_still_serves(router, isolated)


def test_concurrent_calls_all_succeed_after_failures(router: grpc.Channel, isolated: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    batches = [{"wt": rng.uniform(1.5, 5.5, size=n), "hp": rng.uniform(50, 340, size=n)} for n in range(1, 41)]
    # Each batch alone first (one at a time), then all 40 at once from 8 client threads.
    want = [infer(router, MTCARS, batch)["mpg"] for batch in batches]
    with ThreadPoolExecutor(max_workers=8) as clients:
        got = list(clients.map(lambda batch: infer(router, MTCARS, batch)["mpg"], batches))
    for alone, together in zip(want, got, strict=True):
        np.testing.assert_array_equal(together, alone)
