"""The R runtime in the registry: listed as kind "r" with its models READY; it leaves at
once on SIGTERM, and within its lease TTL after SIGKILL (calls fail fast meanwhile)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import assert_eventually, rpc_error

from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg

from .helpers import R_MARKS, infer, list_runtimes, placements, r_runtime_process

pytestmark = R_MARKS

CARS = {"wt": np.array([2.62]), "hp": np.array([110.0])}
EXAMPLE_MODELS = ("mtcars/1", "iris-rf/1", "mtcars-am/1", "sentiment-glm/1", "mtcars-bytes/1", "mtcars-cyl/1")


def solo_repository(r_repository: Path, folder: Path, name: str) -> Path:
    repository = folder / "models"
    shutil.copytree(r_repository / "mtcars", repository / name)
    return repository


def test_listed_as_r_with_models_ready(router: grpc.Channel, r_runtime: str) -> None:
    entry = list_runtimes(router)[r_runtime]
    assert entry.runtime.kind == "r"
    assert entry.ready_models == len(EXAMPLE_MODELS)
    assert entry.runtime.address and entry.runtime.started_at_unix_ms > 0
    states = placements(router, r_runtime)
    assert states == dict.fromkeys(EXAMPLE_MODELS, reg.MODEL_STATE_READY)


def test_sigterm_deregisters_at_once(router: grpc.Channel, r_repository: Path, r_etcd: EtcdServer,
                                     tmp_path: Path) -> None:
    model = "mtcars-term"
    # A 30 s lease: leaving within a second can only be the runtime's own deregistration.
    with r_runtime_process(solo_repository(r_repository, tmp_path, model), r_etcd.endpoint, tmp_path,
                           lease_ttl_s=30) as (proc, _, runtime_id):
        assert_eventually(lambda: infer(router, model, CARS), timeout=15, retry_on=(grpc.RpcError,))
        assert list_runtimes(router)[runtime_id].runtime.kind == "r"
        start = time.monotonic()
        proc.stop(grace=5)
        assert proc.proc is not None and proc.proc.returncode == 0, proc.proc.returncode if proc.proc else None

        def gone() -> None:
            assert runtime_id not in list_runtimes(router)
            error = rpc_error(lambda: infer(router, model, CARS))
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "left the registry" in error.details()

        assert_eventually(gone, timeout=3)
        assert time.monotonic() - start < 3
    assert f"stopping r runtime {runtime_id}" in proc.log_path.read_text()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_sigkill_leaves_within_lease_ttl(router: grpc.Channel, r_repository: Path, r_etcd: EtcdServer,
                                         tmp_path: Path) -> None:
    model, ttl = "mtcars-solo", 2
    with r_runtime_process(solo_repository(r_repository, tmp_path, model), r_etcd.endpoint, tmp_path,
                           lease_ttl_s=ttl) as (proc, _, runtime_id):
        assert_eventually(lambda: infer(router, model, CARS), timeout=15, retry_on=(grpc.RpcError,))
        workers = _children(proc.pid)
        assert len(workers) == 2, workers  # the default pool: two Rscript workers

        proc.kill(signal.SIGKILL)
        assert proc.proc is not None
        proc.proc.wait(5)
        killed_at = time.monotonic()

        codes = []
        while True:
            start = time.monotonic()
            error = rpc_error(lambda: infer(router, model, CARS, timeout=5))
            assert time.monotonic() - start < 2.0, f"a call took {time.monotonic() - start:.2f} s after the kill"
            codes.append(error.code())
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND), error
            assert model in error.details(), error.details()
            if "left the registry" in error.details():
                break
            assert time.monotonic() - killed_at < ttl + 2.0, f"still routed after the TTL: {codes}"
            time.sleep(0.05)
        assert runtime_id not in list_runtimes(router)
        assert codes[0] == grpc.StatusCode.UNAVAILABLE  # the lease outlived the process for a while

        # Orphaned workers see their request pipe close and exit on their own.
        def workers_gone() -> None:
            assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]

        assert_eventually(workers_gone, timeout=5)
    assert f"stopping r runtime {runtime_id}" not in proc.log_path.read_text()
