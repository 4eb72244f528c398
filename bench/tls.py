"""`make bench`, TLS: iris through a mesh with TLS on every link against the same mesh in plain text.

Two local meshes (etcd, router, Python runtime; auditing off) differ only in TLS: in one,
the client reaches the router over TLS, the router reaches the runtime's mesh link over
mutual TLS, and etcd requires mesh certificates. Rounds alternate between them; each
measures concurrency 1 (p50) and 16 (throughput) with h2load, which keeps one connection
open, so the figures are the cost of encrypting calls, not of handshakes. Results also go
to bench/results/tls.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.h2load import available as h2load_available  # noqa: E402
from bench.h2load import run_h2load  # noqa: E402
from bench.loadgen import Result  # noqa: E402
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
    runs: dict[tuple[str, int], list[Result]] = {}
    with _mesh(tls=False) as plain, _mesh(tls=True) as secured:
        setups = {PLAIN: (plain.router_address, None), TLS: (secured.router_address, secured.tls_files("operator")[0])}
        for _ in range(ROUNDS):
            for label, (address, ca) in setups.items():
                for concurrency in (1, 16):
                    runs.setdefault((label, concurrency), []).append(run_h2load(
                        address, REQUEST, concurrency=concurrency, warmup_s=0.5, duration_s=3, tls_ca=ca))
    p50 = {k: statistics.median(r.percentile_ms(50) for r in v) for k, v in runs.items()}
    thr = {k: statistics.median(r.throughput for r in v) for k, v in runs.items()}
    errors = sum(r.errors for v in runs.values() for r in v)
    latency, throughput = p50[TLS, 1] / p50[PLAIN, 1], thr[TLS, 16] / thr[PLAIN, 16]
    print(f"\nTLS, iris ({os.cpu_count()} cores, h2load, median of {ROUNDS} alternating rounds)")
    print(f"  {'set-up':24}{'c=1 p50':>10}{'c=16 calls/s':>14}")
    for label in (PLAIN, TLS):
        print(f"  {label:24}{p50[label, 1]:9.3f}ms{thr[label, 16]:14.0f}")
    print(f"  TLS / plain: p50 {latency:.3f}x, throughput {throughput:.3f}x (no target; reported)")
    print(f"  errors: {errors}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls.json").write_text(json.dumps({
        "p50_ms": {f"{k[0]} c{k[1]}": v for k, v in p50.items()},
        "throughput": {f"{k[0]} c{k[1]}": v for k, v in thr.items()},
        "latency_ratio_c1": latency, "throughput_ratio_c16": throughput, "errors": errors,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
