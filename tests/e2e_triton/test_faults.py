"""Triton killed and restarted, and the registrar killed: the registry follows within the lease TTL."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from e2e.helpers import assert_eventually, router_process

from meshserve.local.etcd import EtcdServer
from meshserve.local.triton import TritonServer

from .helpers import infer_simple, ready_models, registrar_process

pytestmark = [pytest.mark.triton, pytest.mark.slow]

LEASE_TTL_S = 3
A = np.ones((1, 16), dtype=np.int32)
MODELS = {"simple", "countdown", "iris-onnx"}


@pytest.fixture
def own_mesh(triton_repository: Path, tmp_path: Path) -> Iterator[tuple[TritonServer, EtcdServer, str]]:
    """A Triton, an etcd and a router of the test's own (the test kills things)."""
    server = TritonServer(triton_repository, tmp_path / "triton", tmp_path / "triton.log")
    with EtcdServer(tmp_path / "etcd", tmp_path / "etcd.log") as etcd:
        try:
            server.start()
            with router_process(etcd.endpoint, tmp_path) as (_, address):
                yield server, etcd, address
        finally:
            server.stop()


def _ready(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return ready_models(channel)


def wait_ready(router: str, models: set[str], *, timeout: float, ready: bool = True) -> None:
    """Wait until every one of ``models`` is ready (or, with ``ready=False``, none is)."""
    def check() -> None:
        seen = _ready(router) & models
        assert seen == (models if ready else set()), seen
    assert_eventually(check, timeout=timeout)


def test_triton_killed_then_restarted(own_mesh: tuple[TritonServer, EtcdServer, str], tmp_path: Path) -> None:
    server, etcd, router = own_mesh
    with registrar_process(server.address, etcd.endpoint, tmp_path / "registrar", lease_ttl_s=LEASE_TTL_S):
        wait_ready(router, MODELS, timeout=20)
        server.kill()
        killed = time.monotonic()
        wait_ready(router, MODELS, timeout=LEASE_TTL_S, ready=False)
        assert time.monotonic() - killed <= LEASE_TTL_S
        with pytest.raises(tc.InferenceServerException) as caught:
            infer_simple(router, A, A)
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "simple" in caught.value.message()

        server.start()  # same ports: the registrar finds it again
        wait_ready(router, MODELS, timeout=20)
        np.testing.assert_array_equal(infer_simple(router, A, A)[0], A + A)


def test_registrar_killed_models_leave_within_the_lease(own_mesh: tuple[TritonServer, EtcdServer, str],
                                                         tmp_path: Path) -> None:
    server, etcd, router = own_mesh
    with registrar_process(server.address, etcd.endpoint, tmp_path / "registrar", lease_ttl_s=LEASE_TTL_S) as proc:
        wait_ready(router, MODELS, timeout=20)
        proc.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_ready(router, MODELS, timeout=LEASE_TTL_S + 2, ready=False)
        assert time.monotonic() - killed <= LEASE_TTL_S + 1


def test_registrar_stopping_deregisters_at_once(own_mesh: tuple[TritonServer, EtcdServer, str],
                                                tmp_path: Path) -> None:
    server, etcd, router = own_mesh
    with registrar_process(server.address, etcd.endpoint, tmp_path / "registrar", lease_ttl_s=30):
        wait_ready(router, MODELS, timeout=20)
    wait_ready(router, MODELS, timeout=2, ready=False)
