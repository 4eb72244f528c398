"""Three Python runtime replicas behind three routers, for the balancing and failover tests.

One set serves the package (starting a Python runtime takes seconds on this machine):
``LocalMesh`` with ``routers=2`` (etcd and two routers forwarding over the mesh link; no
audit, no R) and its Python runtime, replica A; replicas B and C started here with a
2 s lease, so that a killed one leaves the registry quickly; and a third router that
forwards over gRPC only. Every replica serves a copy of the example ``iris`` and
``whoami``, which answers the PID of the runtime that ran it: how the tests see which
replica served a call. B and C also serve ``slow`` (a ``whoami``): on B it waits 30 s
and leaves a marker file as it starts; on C it answers at once.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, copy_model, infer, router_process, write_python_model

from meshserve.local.mesh import LocalMesh, MeshConfig
from meshserve.local.process import ManagedProcess, start_service

from .helpers import WHOAMI, listed_runtimes

LEASE_TTL_S = 2


@dataclass(frozen=True)
class Replica:
    name: str
    runtime_id: str
    address: str
    pid: int
    process: ManagedProcess | None  # None: the mesh's own runtime (never killed here)


def repository(folder: Path, slow: dict[str, object] | None = None) -> Path:
    """iris and whoami; with ``slow``, also ``slow`` (a whoami with these parameters)."""
    folder.mkdir()
    copy_model(EXAMPLES / "iris", folder, "iris")
    write_python_model(folder, "whoami", WHOAMI, "Whoami")
    if slow is not None:
        write_python_model(folder, "slow", WHOAMI, "Whoami", slow)
    return folder


@pytest.fixture(scope="package")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``slow`` on replica B leaves started-<tag> as each call begins."""
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="package")
def scale_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    folder = tmp_path_factory.mktemp("scale-mesh")
    config = MeshConfig(model_repository=repository(folder / "models"), router_port=0, routers=2, etcd_port=0,
                        audit=False, r_runtime=False, data_dir=folder / "data", start_timeout_s=60)
    with LocalMesh(config) as mesh:
        yield mesh


def start_replica(name: str, repo: Path, etcd_endpoint: str, folder: Path) -> Replica:
    runtime_id = f"scale-{name.lower()}-{uuid.uuid4().hex[:6]}"
    proc, info = start_service(f"runtime-{runtime_id}", "meshserve.runtimes.python", [
        "--port", "0", "--model-repository", str(repo), "--etcd-endpoint", etcd_endpoint,
        "--lease-ttl-s", str(LEASE_TTL_S), "--runtime-id", runtime_id, "--dev-mode",
    ], folder, timeout=90)
    return Replica(name, runtime_id, str(info["address"]), proc.pid, proc)


@pytest.fixture(scope="package")
def replicas(scale_mesh: LocalMesh, markers: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Replica]]:
    """Replicas A (the mesh's runtime), B and C, by name; B and C are started side by side."""
    folder = tmp_path_factory.mktemp("replicas")
    repos = {"B": repository(folder / "b", {"delay_s": 30.0, "marker_dir": str(markers)}),
             "C": repository(folder / "c", {})}
    started: dict[str, Replica] = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {name: pool.submit(start_replica, name, repo, scale_mesh.etcd_endpoint, folder)
                       for name, repo in repos.items()}
            concurrent.futures.wait(futures.values())
        for name, future in futures.items():
            if future.exception() is None:
                started[name] = future.result()
        for future in futures.values():
            future.result()  # raises the first failure, once every started replica is noted
        a = Replica("A", scale_mesh.runtime_id, scale_mesh.runtime_address, scale_mesh.pids()["runtime"], None)
        yield {"A": a, **started}
    finally:
        for replica in started.values():
            assert replica.process is not None
            replica.process.stop(grace=5)


@pytest.fixture(scope="package")
def grpc_router(scale_mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A third router on the mesh's etcd, forwarding to runtimes over gRPC only."""
    with router_process(scale_mesh.etcd_endpoint, tmp_path_factory.mktemp("grpc-router"), "--no-use-link") as (
            _, address):
        yield address


@pytest.fixture(scope="package")
def routers(scale_mesh: LocalMesh, grpc_router: str, replicas: dict[str, Replica]) -> Iterator[list[grpc.Channel]]:
    """Channels to the mesh's two routers, then the gRPC-only router; each lists every replica."""
    addresses = [*scale_mesh.router_addresses, grpc_router]
    assert len(addresses) == 3 and scale_mesh.router_addresses[0] == scale_mesh.router_address
    channels = [grpc.insecure_channel(address) for address in addresses]
    try:
        ids = {r.runtime_id for r in replicas.values()}
        for channel in channels:
            def lists_every_replica(channel: grpc.Channel = channel) -> None:
                listed = listed_runtimes(channel)
                assert ids <= listed, f"a router lists {sorted(listed)}; expected {sorted(ids)}"
            assert_eventually(lists_every_replica, timeout=15)
        yield channels
    finally:
        for channel in channels:
            channel.close()


@pytest.fixture(scope="package")
def iris_labels(replicas: dict[str, Replica]) -> np.ndarray:
    """iris's labels for IRIS_ROWS, straight from replica A."""
    with grpc.insecure_channel(replicas["A"].address) as direct:
        labels: np.ndarray = infer(direct, "iris", IRIS_ROWS)["label"]
    return labels
