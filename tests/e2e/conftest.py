"""The mesh the end-to-end tests call: real etcd, router and Python runtime as processes.

One mesh serves the whole ``tests/e2e`` package (package scope: starting the Python
runtime takes about 5 s on this machine, so one per module would cost most of the
time budget). Its repository holds a copy of the example ``iris`` plus two Python-class
models used by the deadline tests and one whose predict fails (``faulty``). Tests that
kill or restart a part start their own processes (see ``helpers.runtime_process`` and
``helpers.router_process``).

Calls that the router may forward over more than one transport (the mesh link, or plain
gRPC) are checked through both: ``any_router`` is the mesh's own router (default
settings) and a second router on the same etcd that forwards over gRPC only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import skops.io as sio

from meshserve.local.mesh import LocalMesh, MeshConfig

from .helpers import EXAMPLES, FAULT, IRIS_SKOPS, ROOT, allow_anonymous, copy_model, router_process, write_python_model

SLEEPY = textwrap.dedent('''
    import time
    from meshserve.runtimes.python import Model


    class Sleepy(Model):
        """Blocks a predict thread for 2 s: the runtime cannot interrupt it."""

        def predict(self, inputs):
            time.sleep(2.0)
            return {"y": inputs["x"]}
''')

NAPPER = textwrap.dedent('''
    import asyncio
    import pathlib
    from meshserve.runtimes.python import Model


    class Napper(Model):
        """Awaits 5 s; leaves a marker file when it starts and when it is cancelled."""

        async def predict(self, inputs):
            markers = pathlib.Path(self.parameters["marker_dir"])
            tag = str(int(inputs["x"][0]))
            (markers / f"started-{tag}").touch()
            try:
                await asyncio.sleep(5.0)
            except asyncio.CancelledError:
                (markers / f"cancelled-{tag}").touch()
                raise
            return {"y": inputs["x"]}
''')

FAULTY = textwrap.dedent(f'''
    from meshserve.runtimes.python import Model


    class Faulty(Model):
        """Fails every call with an exception no model means to raise."""

        def predict(self, inputs):
            raise RuntimeError({FAULT!r})
''')


@pytest.fixture(scope="session")
def iris_sklearn() -> Any:
    """The example iris estimator, loaded from its skops artifact as scikit-learn's own object."""
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_examples.py")],
                           capture_output=True, text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    return sio.load(IRIS_SKOPS, trusted=sio.get_untrusted_types(file=IRIS_SKOPS))


@pytest.fixture(scope="package")
def napper_markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("napper")


@pytest.fixture(scope="package")
def mesh_repository(tmp_path_factory: pytest.TempPathFactory, iris_sklearn: Any, napper_markers: Path) -> Path:
    repository = tmp_path_factory.mktemp("mesh-models")
    copy_model(EXAMPLES / "iris", repository, "iris")
    twins = copy_model(EXAMPLES / "iris", repository, "twins")  # two versions of one model
    shutil.copytree(twins / "1", twins / "2")
    write_python_model(repository, "sleepy", SLEEPY, "Sleepy")
    write_python_model(repository, "napper", NAPPER, "Napper", {"marker_dir": str(napper_markers)})
    write_python_model(repository, "faulty", FAULTY, "Faulty")
    return repository


@pytest.fixture(scope="package")
def mesh(mesh_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """etcd, the router and the Python runtime (iris, sleepy, napper, faulty) on loopback."""
    config = MeshConfig(model_repository=mesh_repository, router_port=0, etcd_port=0, nats_port=0, audit_port=0,
                        r_runtime=False,
                        data_dir=tmp_path_factory.mktemp("mesh"), start_timeout_s=60)
    with LocalMesh(config) as started:
        allow_anonymous(started.etcd_endpoint, "load")  # the load and unload tests call without a key
        yield started


@pytest.fixture(scope="package")
def router(mesh: LocalMesh) -> Iterator[grpc.Channel]:
    """A channel to the mesh's router."""
    with grpc.insecure_channel(mesh.router_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="package")
def grpc_router(mesh: LocalMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """A second router on the mesh's etcd that forwards to runtimes over gRPC only."""
    grpc_only = ["--no-use-link"]
    folder = tmp_path_factory.mktemp("grpc-router")
    with router_process(mesh.etcd_endpoint, folder, *grpc_only) as (_, address), \
            grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(params=["default-router", "grpc-only-router"])
def any_router(request: pytest.FixtureRequest) -> grpc.Channel:
    """The mesh's router, then a router forwarding over gRPC only."""
    name = "router" if request.param == "default-router" else "grpc_router"
    channel: grpc.Channel = request.getfixturevalue(name)
    return channel
