"""``python -m meshserve.runtimes.python`` as a real process: announce file, SIGTERM."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np

from meshserve.local.etcd import EtcdServer
from meshserve.local.process import ManagedProcess
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


async def test_example_iris_in_a_process(tmp_path: Path, etcd: EtcdServer) -> None:
    # The example model, built the way `make up` builds it.
    build = ManagedProcess("build", [sys.executable, str(ROOT / "scripts" / "build_examples.py")],
                           tmp_path / "build.log")
    build.start()
    assert build.proc is not None and build.proc.wait(120) == 0

    announce = tmp_path / "announce.json"
    proc = ManagedProcess("python-runtime", [
        sys.executable, "-m", "meshserve.runtimes.python",
        "--model-repository", str(ROOT / "examples" / "models"), "--port", "0",
        "--etcd-endpoint", etcd.endpoint, "--announce-file", str(announce), "--runtime-id", "python-proc-test",
        "--dev-mode",
    ], tmp_path / "runtime.log")
    proc.start()
    try:
        info = proc.wait_announce(announce)
        assert info["runtime_id"] == "python-proc-test" and info["pid"] == proc.pid
        async with grpc.aio.insecure_channel(info["address"]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
            outputs = decode_response(await stub.ModelInfer(build_request("iris", {"features": x})))
        assert outputs["label"].dtype == np.int64 and outputs["label"].tolist() == [0, 2]
        assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (2, 3)
    finally:
        proc.stop(grace=10)
    assert proc.proc is not None and proc.proc.returncode == 0, (tmp_path / "runtime.log").read_text()
    assert "stopping python runtime python-proc-test" in (tmp_path / "runtime.log").read_text()
