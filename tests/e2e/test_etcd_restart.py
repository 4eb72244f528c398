"""etcd stopped and restarted under a router: it serves from its cache, then sees new runtimes."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import grpc
import pytest

from meshserve.local.etcd import EtcdServer

from .helpers import (
    EXAMPLES,
    IRIS_ROWS,
    assert_eventually,
    copy_model,
    infer,
    repository_index,
    router_process,
    runtime_process,
)

pytestmark = pytest.mark.slow


def listening(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def test_router_rides_out_an_etcd_restart(private_etcd: EtcdServer, tmp_path: Path) -> None:
    endpoint = private_etcd.endpoint
    late_repository = tmp_path / "late-models"
    late_repository.mkdir()
    copy_model(EXAMPLES / "iris", late_repository, "iris-late")

    with router_process(endpoint, tmp_path) as (_, router_address), \
            runtime_process(EXAMPLES, endpoint, tmp_path, lease_ttl_s=3), \
            grpc.insecure_channel(router_address) as router:
        expected = assert_eventually(lambda: infer(router, "iris", IRIS_ROWS), retry_on=(grpc.RpcError,))

        private_etcd.stop()
        assert not listening(endpoint)
        # etcd is down: calls keep working from the router's cache, through several of the
        # router's watch retries.
        down_until = time.monotonic() + 2.5
        calls = 0
        while time.monotonic() < down_until:
            assert infer(router, "iris", IRIS_ROWS, timeout=2)["label"].tolist() == expected["label"].tolist()
            calls += 1
            time.sleep(0.1)
        assert calls > 10
        assert ("iris", "1", "READY") in repository_index(router)

        private_etcd.start()
        assert private_etcd.endpoint == endpoint, "etcd came back on another port"

        # A runtime started after the restart, serving a model nothing else has, is routed to.
        with runtime_process(late_repository, endpoint, tmp_path, lease_ttl_s=3) as (_, late_address, _):
            late = assert_eventually(lambda: infer(router, "iris-late", IRIS_ROWS), timeout=15,
                                     interval=0.1, retry_on=(grpc.RpcError,))
            with grpc.insecure_channel(late_address) as direct:
                assert late["label"].tolist() == infer(direct, "iris-late", IRIS_ROWS)["label"].tolist()
            index = repository_index(router)
            assert ("iris-late", "1", "READY") in index and ("iris", "1", "READY") in index

        # The runtime that lived through the outage is still routed to (its lease was kept).
        assert infer(router, "iris", IRIS_ROWS)["label"].tolist() == expected["label"].tolist()
