"""A second router on a port in use fails at once, naming the port; the first one keeps every call."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc

from meshserve.local.etcd import EtcdServer
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .helpers import router_process


def test_a_second_router_on_a_port_in_use_fails_at_once(etcd: EtcdServer, tmp_path: Path) -> None:
    with router_process(etcd.endpoint, tmp_path) as (first, address):
        port = int(address.rpartition(":")[2])
        started = time.monotonic()
        # etcd is given as unreachable, with a long wait: the port is checked before any of it.
        done = subprocess.run(
            [sys.executable, "-m", "meshserve.services.router", "--port", str(port), "--metrics-port", "0",
             "--etcd-endpoint", "127.0.0.1:1", "--etcd-wait-s", "60", "--dev-mode"],
            capture_output=True, text=True, timeout=45, check=False)
        took = time.monotonic() - started
        assert done.returncode == 1, done.stderr
        assert f"port {port} on 127.0.0.1 is in use" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert took < 30, f"it took {took:.1f} s to fail"  # the interpreter's start, not the 60 s etcd wait
        assert first.alive()
        with grpc.insecure_channel(address) as channel:  # the first router still has the port to itself
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(20):
                assert stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
