"""`make bench`, lazy loading: the first call to a catalog model that no runtime holds, and warm calls after.

Starts etcd, a Python runtime and an R runtime with nothing loaded, and a router. Each
round registers fresh catalog names for the example `iris` (Python, scikit-learn) and
`mtcars` (R, lm) artifacts, so every first call is a real cold start: the router places
the version on the runtime (RepositoryModelLoad), the runtime loads it, the registry
shows it ready, and the call is answered. Times are taken by a Python gRPC client around
the call. Warm calls then measure the same model loaded. Results also go to
bench/results/coldstart.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.services import service  # noqa: E402
from meshserve import catalog  # noqa: E402
from meshserve.local.etcd import EtcdServer  # noqa: E402
from meshserve.oip import build_request  # noqa: E402
from meshserve.protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402
from meshserve.registry.etcd import with_etcd  # noqa: E402

ROUNDS = 5
WARM_CALLS = 300
TARGETS_MS = {"iris": 300.0, "mtcars": 1000.0}
MODELS = {  # name -> (runtime kind, artifact, inputs)
    "iris": ("python", "iris/1", {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}),
    "mtcars": ("r", "mtcars/1", {"wt": np.array([2.62]), "hp": np.array([110.0])}),
}


def _timed(call: object) -> float:
    start = time.perf_counter()
    call()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


def main() -> int:
    if shutil.which("Rscript") is None:
        print("cold-start benchmark skipped: Rscript is missing (make system-deps installs R)")
        return 0
    folder = Path(tempfile.mkdtemp(prefix="meshserve-coldbench-"))
    repository = ROOT / "examples" / "models"
    cold: dict[str, list[float]] = {m: [] for m in MODELS}
    warm: dict[str, float] = {}
    try:
        with EtcdServer(folder, folder / "etcd.log") as etcd, \
                service(folder, "runtime", "meshserve.runtimes.python", "--etcd-endpoint", etcd.endpoint,
                        "--model-repository", str(repository), "--load", "", "--dev-mode"), \
                service(folder, "r-runtime", "meshserve.runtimes.r", "--etcd-endpoint", etcd.endpoint,
                        "--model-repository", str(repository), "--load", "", "--dev-mode"), \
                service(folder, "router", "meshserve.services.router", "--etcd-endpoint", etcd.endpoint,
                        "--dev-mode") as router, \
                grpc.insecure_channel(router) as channel:
            stub = GRPCInferenceServiceStub(channel)
            for round_ in range(ROUNDS):
                for model, (kind, artifact, inputs) in MODELS.items():
                    name = f"{model}-cold-{round_}"
                    with_etcd(etcd.endpoint, lambda client, n=name, k=kind, a=artifact: catalog.register(
                        client, n, "1", kind=k, artifact=a))
                    time.sleep(0.2)  # the router's watch sees the entry
                    request = build_request(name, inputs)
                    cold[model].append(_timed(lambda r=request: stub.ModelInfer(r, timeout=60)))
            for model, (_, _, inputs) in MODELS.items():
                request = build_request(f"{model}-cold-0", inputs)
                times = [_timed(lambda r=request: stub.ModelInfer(r, timeout=10)) for _ in range(WARM_CALLS)]
                warm[model] = statistics.median(times[50:])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\nLazy loading: first call to a catalog model against warm calls ({os.cpu_count()} cores, "
          f"Python gRPC client, {ROUNDS} cold starts each)")
    print(f"  {'model':10}{'cold p50':>11}{'cold max':>11}{'warm p50':>11}  target")
    results = {}
    for model in MODELS:
        p50 = statistics.median(cold[model])
        met = "met" if p50 <= TARGETS_MS[model] else "NOT MET"
        print(f"  {model:10}{p50:9.1f}ms{max(cold[model]):9.1f}ms{warm[model]:9.3f}ms  "
              f"cold p50 <= {TARGETS_MS[model]:.0f} ms: {met}")
        results[model] = {"cold_ms": cold[model], "cold_p50_ms": p50, "warm_p50_ms": warm[model],
                          "target_ms": TARGETS_MS[model]}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "coldstart.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
