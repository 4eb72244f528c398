"""A hot catalog model gets a second copy under load and gives it back when the load stops.

Real etcd, two Python runtimes that start empty, and a router whose scaler wants a copy
per 20 calls per second (and gives one back after 2 s of less).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, infer, router_process, runtime_process

from e2e_catalog.helpers import placements, register
from meshserve.local.etcd import EtcdServer
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb

MODEL = "iris-popular"


def copies(etcd: str) -> int:
    return sum(1 for (m, _, _), p in placements(etcd).items() if m == MODEL and p.state == pb.MODEL_STATE_READY)


def test_copies_follow_the_load(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(EXAMPLES / "iris", repository / "iris")
    empty = ["--load", ""]
    with EtcdServer(tmp_path, tmp_path / "etcd.log") as etcd, \
            runtime_process(repository, etcd.endpoint, tmp_path, extra=empty), \
            runtime_process(repository, etcd.endpoint, tmp_path, extra=empty), \
            router_process(etcd.endpoint, tmp_path, "--scale-calls-per-s", "20", "--scale-down-after-s", "2",
                           "--scale-interval-s", "0.5") as (_, router):
        register(etcd.endpoint, MODEL)
        time.sleep(0.5)
        stop = threading.Event()
        failures: list[BaseException] = []

        def load() -> None:
            with grpc.insecure_channel(router) as channel:
                while not stop.is_set():
                    try:
                        infer(channel, MODEL, IRIS_ROWS, timeout=30)
                    except grpc.RpcError as e:
                        failures.append(e)
                    time.sleep(0.005)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            def two() -> None:
                assert copies(etcd.endpoint) == 2
            assert_eventually(two, timeout=20, interval=0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not failures, failures[:3]

        def one() -> None:
            assert copies(etcd.endpoint) == 1
        assert_eventually(one, timeout=30, interval=0.2)
