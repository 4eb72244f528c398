"""`make bench`, TLS: iris through a mesh with TLS on every link against the same mesh in plain text.

Two local meshes (etcd, router, Python runtime; auditing off) differ only in TLS: in one,
the client reaches the router over TLS, the router reaches the runtime's mesh link over
mutual TLS, and etcd requires mesh certificates. Rounds alternate between them; each
measures concurrency 1 (p50) and 16 (throughput) with h2load, which keeps one connection
open, so the figures are the cost of encrypting calls, not of handshakes. Results also go
to bench/results/tls.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.h2load import available as h2load_available  # noqa: E402
from bench.onoff import Setup, alternate  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.oip import build_request  # noqa: E402

REQUEST = build_request("iris", {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}).SerializeToString()
ROUNDS = 3
PLAIN, TLS = "plain text", "TLS on every link"


def _mesh(tls: bool) -> LocalMesh:
    return LocalMesh(MeshConfig(model_repository=ROOT / "examples" / "models", router_port=0, etcd_port=0,
                                audit=False, r_runtime=False, log_level="WARNING", tls=tls,
                                data_dir=Path(tempfile.mkdtemp(prefix="meshserve-tlsbench-"))))


def main() -> int:
    if not h2load_available():
        print("TLS benchmark skipped: h2load is missing (make bench installs nghttp2-client)")
        return 0
    with _mesh(tls=False) as plain, _mesh(tls=True) as secured:
        figures = alternate(REQUEST, {PLAIN: Setup(plain.router_address),
                                      TLS: Setup(secured.router_address, tls_ca=secured.tls_files("operator")[0])},
                            ROUNDS)
    latency, throughput = figures.ratios(TLS, PLAIN)
    figures.print_table("TLS, iris", ROUNDS)
    print(f"  TLS / plain: p50 {latency:.3f}x, throughput {throughput:.3f}x (no target; reported)")
    print(f"  errors: {figures.errors}")
    figures.save("tls", TLS, PLAIN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
