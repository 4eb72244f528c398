"""What the access-control tests share: a mesh that requires keys, and the meshserve command against it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshserve.local.mesh import LocalMesh, MeshConfig

ROOT = Path(__file__).resolve().parents[2]
MESHSERVE = str(Path(sys.executable).parent / "meshserve")


@contextmanager
def keyed_mesh(data_dir: Path) -> Iterator[LocalMesh]:
    """The local mesh (no R, no Triton) outside dev mode: every caller needs a key and a rule."""
    config = MeshConfig(model_repository=ROOT / "examples" / "models", dev_mode=False, r_runtime=False,
                        router_port=0, etcd_port=0, nats_port=0, audit_port=0, data_dir=data_dir)
    with LocalMesh(config) as running:
        yield running


def meshserve(mesh: LocalMesh, *args: str, key: str = "") -> subprocess.CompletedProcess[str]:
    """Run the meshserve command against ``mesh``, with ``key`` as $MESHSERVE_API_KEY when given."""
    env = {**os.environ, "COLUMNS": "200", "MESHSERVE_ETCD": mesh.etcd_endpoint,
           "MESHSERVE_ROUTER": mesh.router_address, **mesh.operator_env()}
    env.pop("MESHSERVE_API_KEY", None)
    if key:
        env["MESHSERVE_API_KEY"] = key
    return subprocess.run([MESHSERVE, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def new_key(mesh: LocalMesh, principal: str, *roles: str) -> str:
    """A new API key of ``principal`` (with ``roles``), as `meshserve keys create` prints it."""
    done = meshserve(mesh, "keys", "create", "--principal", principal, *(f"--role={r}" for r in roles))
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stdout.splitlines() if line.startswith("ms_"))
