"""`make bench`, pipelines: the example three-step pipeline against its steps, in one run.

Starts the local mesh (Python, R and Triton runtimes, auditing off) with the example
`sentiment` pipeline (text-features -> sentiment-glm -> sentiment-label) and measures, for
one text at concurrency 1:
- the pipeline through the router, and the three steps called one after another by the
  client through the router (both with the same Python gRPC client, which must decode
  each answer to build the next request);
- the pipeline, and each step called directly on its runtime, with h2load (a C client):
  the pipeline's overhead is its p50 minus the sum of the steps' direct p50s, per step, in each
  round, and the figure is the median over the rounds;
  seven rounds, the order reversed every other round, as this machine drifts between rounds
  by as much as the overhead measured.
Results also go to bench/results/pipeline.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.h2load import available as h2load_available  # noqa: E402
from bench.h2load import run_h2load  # noqa: E402
from bench.loadgen import Result, run_load  # noqa: E402
from meshserve.local import triton  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.oip import build_request, decode_response  # noqa: E402
from meshserve.protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402

TEXT = np.array([b"I love it, great and fast"], dtype=object)
CALLS = 600
ROUNDS = 7
PIPELINE = "pipeline"


def p50_of(work: Callable[[], object], calls: int = CALLS) -> float:
    for _ in range(50):
        work()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(address: str, request: bytes) -> Result:
    if h2load_available():
        return run_h2load(address, request, concurrency=1, warmup_s=0.3, duration_s=2, drain=True)
    return run_load(address, request, concurrency=1, processes=1, warmup_s=0.3, duration_s=2)


def main() -> int:
    if not triton.available():
        print(f"pipeline benchmark skipped: Triton is not installed ({triton.INSTALL_HINT})")
        return 0
    config = MeshConfig(model_repository=ROOT / "examples" / "models", triton_repository=ROOT / "examples" / "triton",
                        pipelines=(ROOT / "examples" / "pipelines" / "sentiment.yaml",), router_port=0, etcd_port=0,
                        audit=False, log_level="WARNING", data_dir=Path(tempfile.mkdtemp(prefix="meshserve-pbench-")))
    with LocalMesh(config) as mesh, grpc.insecure_channel(mesh.router_address) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def infer(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return decode_response(stub.ModelInfer(build_request(model, inputs), timeout=10))

        def by_hand() -> dict[str, np.ndarray]:
            features = infer("text-features", {"text": TEXT})
            score = infer("sentiment-glm", {"pos": features["pos"], "neg": features["neg"]})
            return {**infer("sentiment-label", {"prob": score["prob"]}), "probability": score["prob"]}

        expected = by_hand()
        got = infer("sentiment", {"text": TEXT})
        assert got["label"].tolist() == expected["label"].tolist(), (got, expected)
        rounds = [(p50_of(lambda: infer("sentiment", {"text": TEXT})), p50_of(by_hand)) for _ in range(3)]
        pipeline_py = statistics.median(r[0] for r in rounds)
        by_hand_py = statistics.median(r[1] for r in rounds)

        features = infer("text-features", {"text": TEXT})
        score = infer("sentiment-glm", {"pos": features["pos"], "neg": features["neg"]})
        targets = {
            "text-features (python)": (mesh.runtime_address, build_request("text-features", {"text": TEXT})),
            "sentiment-glm (R)": (mesh.addresses["r-runtime"], build_request(
                "sentiment-glm", {"pos": features["pos"], "neg": features["neg"]})),
            "sentiment-label (triton)": (mesh.addresses["triton"], build_request(
                "sentiment-label", {"prob": score["prob"]})),
            PIPELINE: (mesh.router_address, build_request("sentiment", {"text": TEXT})),
        }
        runs: dict[str, list[Result]] = {label: [] for label in targets}
        order = list(targets.items())
        for number in range(ROUNDS):  # alternating, the order reversed every other round: drift hits all alike
            for label, (address, request) in order if number % 2 == 0 else reversed(order):
                runs[label].append(measure(address, request.SerializeToString()))
    p50 = {label: statistics.median(r.percentile_ms(50) for r in results) for label, results in runs.items()}
    errors = sum(r.errors for results in runs.values() for r in results)
    direct = {label: ms for label, ms in p50.items() if label != PIPELINE}
    steps_ms = sum(direct.values())
    # The overhead within each round (the pipeline against the steps measured beside it, seconds
    # apart); the figure is their median, as the machine drifts between rounds.
    by_round = sorted((runs[PIPELINE][i].percentile_ms(50) - sum(runs[label][i].percentile_ms(50) for label in direct))
                      / len(direct) for i in range(ROUNDS))
    overhead = statistics.median(by_round)
    of_medians = (p50[PIPELINE] - steps_ms) / len(direct)
    client = "h2load" if h2load_available() else "the Python load generator"
    print(f"\nPipeline `sentiment`, 3 steps, 1 text ({os.cpu_count()} cores)")
    print(f"  Python client, median of 3 rounds of {CALLS} calls:")
    print(f"    pipeline through the router       {pipeline_py:8.3f} ms p50")
    print(f"    the 3 steps called one by one     {by_hand_py:8.3f} ms p50   "
          f"(pipeline / by hand {pipeline_py / by_hand_py:.2f}x)")
    print(f"  {client}, median p50 of {ROUNDS} alternating rounds:")
    for label, ms in direct.items():
        print(f"    {label + ' direct':34}{ms:8.3f} ms")
    print(f"    sum of the steps direct           {steps_ms:8.3f} ms")
    print(f"    pipeline through the router       {p50[PIPELINE]:8.3f} ms")
    print(f"  target #6: pipeline faster than by hand: {'met' if pipeline_py < by_hand_py else 'NOT MET'}")
    print(f"  target #6: overhead per step {overhead:.3f} ms <= 0.5 ms: {'met' if overhead <= 0.5 else 'NOT MET'} "
          f"(median of the rounds; they range {by_round[0]:.3f} to {by_round[-1]:.3f} ms; from the median p50s "
          f"above: {of_medians:.3f} ms)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps({
        "client": client, "pipeline_python_client_p50_ms": pipeline_py, "by_hand_python_client_p50_ms": by_hand_py,
        "direct_p50_ms": direct, "pipeline_p50_ms": p50[PIPELINE], "overhead_per_step_ms": overhead,
        "overhead_per_step_ms_by_round": by_round, "overhead_per_step_ms_of_medians": of_medians,
        "errors": errors,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
