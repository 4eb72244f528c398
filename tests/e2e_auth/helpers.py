"""What the access-control tests share: a mesh that requires keys, the meshserve command against it, a JWKS server."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aetcd

from meshserve.local.mesh import LocalMesh, MeshConfig
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry import keys
from meshserve.registry.etcd import with_etcd

ROOT = Path(__file__).resolve().parents[2]
MESHSERVE = str(Path(sys.executable).parent / "meshserve")


@contextmanager
def keyed_mesh(data_dir: Path, **changes: Any) -> Iterator[LocalMesh]:
    """The local mesh (no R, no Triton) outside dev mode: every caller needs a key and a rule.

    ``changes`` replace fields of its MeshConfig (``routers=3``...).
    """
    config = MeshConfig(model_repository=ROOT / "examples" / "models", dev_mode=False, r_runtime=False,
                        router_port=0, etcd_port=0, nats_port=0, audit_port=0, data_dir=data_dir)
    config = dataclasses.replace(config, **changes)
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


def put(etcd_endpoint: str, key: bytes, record: Any) -> None:
    async def write(client: aetcd.Client) -> None:
        await client.put(key, record.SerializeToString())
    with_etcd(etcd_endpoint, write)


def allow(etcd_endpoint: str, rule_id: str, *, principal: str = "", role: str = "") -> None:
    """An allow rule for ``principal`` or ``role`` to infer on iris, written to etcd."""
    rule = auth_pb2.AccessRule(id=rule_id, principal=principal, role=role, models=["iris"], actions=["infer"])
    put(etcd_endpoint, keys.access_rule_key(rule_id), rule)


class JwksServer:
    """An identity provider's JWKS endpoint on loopback: serves ``document`` at /jwks and counts the fetches."""

    def __init__(self, document: dict[str, Any], *, delay_s: float = 0.0) -> None:
        self.document = document
        self.delay_s = delay_s
        self.fetches = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.fetches += 1
                time.sleep(served.delay_s)
                body = json.dumps(served.document).encode()
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks"
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks-server", daemon=True)

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
