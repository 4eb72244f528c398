"""`make bench`, access control: iris calls through a router that checks an API key and an allow
rule, against the same calls through a dev-mode router (callers without a key allowed), in one run.

Both routers share one mesh (etcd, Python runtime; auditing off, so only access control
differs). Rounds alternate between them; each measures concurrency 1 (p50) and 16
(throughput) with h2load. Results also go to bench/results/auth.json.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.h2load import available as h2load_available  # noqa: E402
from bench.onoff import Setup, alternate  # noqa: E402
from bench.services import service  # noqa: E402
from meshserve.auth import apikeys  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.oip import build_request  # noqa: E402
from meshserve.protos.meshserve.auth.v1 import auth_pb2  # noqa: E402
from meshserve.registry import keys  # noqa: E402
from meshserve.registry.etcd import connect  # noqa: E402

REQUEST = build_request("iris", {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}).SerializeToString()
ROUNDS = 3
ON, OFF = "auth on (key + rule)", "dev mode (no key)"


async def grant(etcd: str) -> str:
    """A key for principal bench, allowed to infer iris; returns the token."""
    token, record = apikeys.create("bench", [])
    rule = auth_pb2.AccessRule(id="bench", principal="bench", models=["iris"], actions=["infer"])
    client = await connect(etcd)
    try:
        await client.put(keys.api_key_key(record.key_id), record.SerializeToString())
        await client.put(keys.access_rule_key(rule.id), rule.SerializeToString())
    finally:
        await client.close()
    return token


def main() -> int:
    if not h2load_available():
        print("access-control benchmark skipped: h2load is missing (make bench installs nghttp2-client)")
        return 0
    config = MeshConfig(model_repository=ROOT / "examples" / "models", router_port=0, etcd_port=0, audit=False,
                        r_runtime=False, log_level="WARNING",
                        data_dir=Path(tempfile.mkdtemp(prefix="meshserve-abench-")))
    with LocalMesh(config) as mesh, service(mesh.data_dir, "router-auth", "meshserve.services.router",
                                            "--etcd-endpoint", mesh.etcd_endpoint) as secured:
        token = asyncio.run(grant(mesh.etcd_endpoint))
        figures = alternate(REQUEST, {OFF: Setup(mesh.router_address),
                                      ON: Setup(secured, (("authorization", f"Bearer {token}"),))}, ROUNDS)
    latency, throughput = figures.ratios(ON, OFF)
    figures.print_table("Access control, iris", ROUNDS)
    print(f"  target #7: auth on / off p50 {latency:.3f}x <= 1.05x: {'met' if latency <= 1.05 else 'NOT MET'}")
    print(f"  target #7: auth on / off throughput {throughput:.3f}x >= 0.95x: "
          f"{'met' if throughput >= 0.95 else 'NOT MET'}")
    print(f"  errors: {figures.errors}")
    figures.save("auth", ON, OFF)
    return 0


if __name__ == "__main__":
    sys.exit(main())
