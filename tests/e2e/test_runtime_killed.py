"""A runtime killed with SIGKILL: calls fail fast with UNAVAILABLE, and it leaves within its lease TTL."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from meshserve.local.mesh import LocalMesh
from meshserve.local.process import ManagedProcess
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg
from meshserve.protos.meshserve.registry.v1 import registry_pb2_grpc as reg_grpc

from .helpers import EXAMPLES, IRIS_ROWS, assert_eventually, copy_model, infer, repository_index, runtime_process

pytestmark = pytest.mark.slow

LEFT = "left the registry"
LEASE_TTL_S = 2
SOLO = "iris-solo"


@pytest.fixture(scope="module")
def solo(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManagedProcess, str, str]]:
    """A second runtime, the only holder of ``iris-solo``, registered with a 2 s lease."""
    folder = tmp_path_factory.mktemp("solo")
    repository = folder / "models"
    repository.mkdir()
    copy_model(EXAMPLES / "iris", repository, SOLO)
    with runtime_process(repository, mesh.etcd_endpoint, folder, lease_ttl_s=LEASE_TTL_S) as started:
        yield started


def timed_error(channel: grpc.Channel) -> tuple[grpc.RpcError, float]:
    start = time.monotonic()
    try:
        infer(channel, SOLO, IRIS_ROWS, timeout=5.0)
    except grpc.RpcError as e:
        return e, time.monotonic() - start
    raise AssertionError(f"{SOLO} still answered after its runtime was killed")


def test_killed_runtime_is_unavailable_then_gone(solo: tuple[ManagedProcess, str, str], router: grpc.Channel,
                                                 grpc_router: grpc.Channel, mesh: LocalMesh) -> None:
    proc, address, runtime_id = solo

    # Routed to while it lives: the same answer as the runtime gives directly.
    routed = assert_eventually(lambda: infer(router, SOLO, IRIS_ROWS), timeout=10, retry_on=(grpc.RpcError,))
    assert_eventually(lambda: infer(grpc_router, SOLO, IRIS_ROWS), timeout=10, retry_on=(grpc.RpcError,))
    with grpc.insecure_channel(address) as direct:
        np.testing.assert_array_equal(routed["label"], infer(direct, SOLO, IRIS_ROWS)["label"])
    assert (SOLO, "1", "READY") in repository_index(router)
    runtimes = reg_grpc.RegistryServiceStub(router).ListRuntimes(reg.ListRuntimesRequest(), timeout=5)
    assert runtime_id in [r.runtime.id for r in runtimes.runtimes]

    proc.kill(signal.SIGKILL)
    assert proc.proc is not None
    proc.proc.wait(5)
    killed_at = time.monotonic()

    # Still listed (its lease runs on), but nothing answers: UNAVAILABLE at once, never a
    # hang, whichever transport the router forwards over.
    for channel in (router, grpc_router):
        error, elapsed = timed_error(channel)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert elapsed < 2.0, f"a call to the dead replica took {elapsed:.2f} s"
        assert SOLO in error.details() and runtime_id in error.details()

    # Within the lease TTL (plus etcd's expiry granularity and a margin) it leaves the mesh.
    codes = []
    while True:
        error, elapsed = timed_error(router)
        codes.append(error.code())
        assert elapsed < 2.0, f"a call took {elapsed:.2f} s after the kill"
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND), error
        assert SOLO in error.details(), error.details()
        if LEFT in error.details():
            break
        assert time.monotonic() - killed_at < LEASE_TTL_S + 2.0, f"still routed after the TTL: {codes}"
        time.sleep(0.05)
    gone_after = time.monotonic() - killed_at
    assert gone_after < LEASE_TTL_S + 2.0
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # gone for now: callers may try again

    error, _ = timed_error(grpc_router)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and SOLO in error.details() and LEFT in error.details()
    assert not any(name == SOLO for name, _, _ in repository_index(router))
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    assert not stub.ModelReady(oip.ModelReadyRequest(name=SOLO), timeout=5).ready
    runtimes = reg_grpc.RegistryServiceStub(router).ListRuntimes(reg.ListRuntimesRequest(), timeout=5)
    assert runtime_id not in [r.runtime.id for r in runtimes.runtimes]

    # The rest of the mesh is unaffected.
    assert infer(router, "iris", IRIS_ROWS)["label"].shape == (len(IRIS_ROWS),)
    assert all(mesh.alive().values()) and {"etcd", "router", "runtime"} <= set(mesh.alive())


def test_solo_log_shows_no_clean_shutdown(solo: tuple[ManagedProcess, str, str]) -> None:
    # SIGKILL means no deregistration ran: the lease, not the runtime, removed it.
    proc, _, runtime_id = solo
    assert not proc.alive()
    assert f"stopping python runtime {runtime_id}" not in Path(proc.log_path).read_text()
