"""Tracing's cost: iris calls through a mesh tracing every call against the same calls through
a mesh with tracing off, in one run.

Each mesh is etcd, a router and the Python runtime (auditing off, so only tracing differs).
The traced one samples every call (``--trace-sample-ratio 1``): the router's server and
mesh-link client spans, the runtime's server and predict spans, four spans a call, exported
in batches to an OTLP/gRPC receiver in this process that parses and counts them (a
collector's receiving end, without its storage). Rounds alternate between the meshes; each
measures concurrency 1 (p50) and 16 (throughput) with h2load; eight rounds, as the
machine's own drift between rounds is as large as the cost measured. Results also go to
bench/results/tracing.json.

    .venv/bin/python bench/tracing.py
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.h2load import available as h2load_available  # noqa: E402
from bench.onoff import Setup, alternate  # noqa: E402
from meshserve.local.mesh import LocalMesh, MeshConfig  # noqa: E402
from meshserve.oip import build_request  # noqa: E402

REQUEST = build_request("iris", {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}).SerializeToString()
ROUNDS = 8
ON, OFF = "tracing on (every call)", "tracing off"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Receiver:
    """OTLP/gRPC trace receiver on loopback: parses each export and counts its spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self._request = trace_service_pb2.ExportTraceServiceRequest
        self._answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self._lock = threading.Lock()
        self.spans = 0
        self.exports = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(self._export)}),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def _export(self, data: bytes, _context: Any) -> bytes:
        request = self._request.FromString(data)
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += count
            self.exports += 1
        return self._answer


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.server.start()
    try:
        yield receiver
    finally:
        receiver.server.stop(0)


def mesh_config(prefix: str, **tracing: Any) -> MeshConfig:
    return MeshConfig(model_repository=ROOT / "examples" / "models", router_port=0, etcd_port=0, audit=False,
                      r_runtime=False, log_level="WARNING", data_dir=Path(tempfile.mkdtemp(prefix=prefix)), **tracing)


def main() -> int:
    if not h2load_available():
        print("tracing benchmark skipped: h2load is missing (make bench installs nghttp2-client)")
        return 0
    with receiving() as receiver, \
            LocalMesh(mesh_config("meshserve-tbench-off-")) as off, \
            LocalMesh(mesh_config("meshserve-tbench-on-", trace_sample_ratio=1.0,
                                  otlp_endpoint=receiver.address)) as on:
        figures = alternate(REQUEST, {OFF: Setup(off.router_address), ON: Setup(on.router_address)}, ROUNDS)
        traced_calls = sum(r.calls for (label, _), v in figures.runs.items() if label == ON for r in v)
    latency, throughput = figures.ratios(ON, OFF)
    # Warm-up calls are traced too but not counted by h2load: spans per measured call is an upper bound.
    spans_per_call = receiver.spans / traced_calls if traced_calls else 0.0
    figures.print_table("Tracing, iris", ROUNDS)
    rounds = figures.round_ratios(ON, OFF, "p50")
    print(f"  target: tracing on / off p50 {latency:.3f}x <= 1.1x: {'met' if latency <= 1.1 else 'NOT MET'} "
          f"(round by round: {', '.join(f'{r:.2f}x' for r in rounds)}; the set-ups' median p50s: "
          f"{figures.median(ON, 1, 'p50') / figures.median(OFF, 1, 'p50'):.3f}x)")
    print(f"  tracing on / off throughput (c=16): {throughput:.3f}x")
    print(f"  spans received: {receiver.spans} in {receiver.exports} exports "
          f"({spans_per_call:.2f} per measured call, warm-up calls included)")
    print(f"  errors: {figures.errors}")
    figures.save("tracing", ON, OFF, latency_ratio_c1_rounds=rounds, spans_received=receiver.spans,
                 exports=receiver.exports, spans_per_call=spans_per_call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
