"""A local mesh for the versions-and-routes tests: etcd, NATS, audit, router, Python runtime.

``echo`` has versions 1, 2 and 3, each answering its own version number for every row of
``x``; version 4 fails to load (a route may not point at it).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from e2e.helpers import assert_eventually

from meshserve.local.mesh import LocalMesh, MeshConfig

from .helpers import ready_versions

ECHO = textwrap.dedent('''
    import numpy as np
    from meshserve.runtimes.python import Model


    class Echo(Model):
        """y: this version's number, once per row of x."""

        def predict(self, inputs):
            return {"y": np.full(len(inputs["x"]), int(self.version), dtype=np.int32)}
''')
BROKEN = "raise RuntimeError('version 4 cannot load')\n"


def _version(repository: Path, version: str, code: str) -> None:
    folder = repository / "echo" / version
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(code)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({
        "framework": "python", "entrypoint": "model.py:Echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [-1]}],
    }))


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    repository = tmp_path_factory.mktemp("route-models")
    for version in ("1", "2", "3"):
        _version(repository, version, ECHO)
    _version(repository, "4", BROKEN)
    config = MeshConfig(model_repository=repository, router_port=0, etcd_port=0, nats_port=0, audit_port=0,
                        r_runtime=False, data_dir=tmp_path_factory.mktemp("route-mesh"))
    with LocalMesh(config) as running:
        def all_ready() -> None:
            assert ready_versions(running.router_address) == {"1", "2", "3"}
        assert_eventually(all_ready, timeout=30)
        yield running
