"""`meshserve top` against a real router: in a pseudo-terminal (read through a terminal emulator) and --once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pexpect
import pyte
import pytest

from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

from .conftest import MetricsMesh

MESHSERVE = str(Path(sys.executable).parent / "meshserve")
ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
COLUMNS, LINES = 120, 30

pytestmark = pytest.mark.slow


@pytest.fixture
def iris_traffic(metrics_mesh: MetricsMesh) -> Iterator[None]:
    """About 20 iris calls a second through the router while the test runs."""
    stop = threading.Event()

    def call() -> None:
        with grpc.insecure_channel(metrics_mesh.router.address) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            while not stop.wait(0.05):
                stub.ModelInfer(build_request("iris", {"features": ROW}), timeout=10)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]


def _iris_row(lines: list[str]) -> list[str] | None:
    for line in lines:
        cells = _cells(line)
        if cells[:2] == ["iris", "1"]:
            return cells
    return None


def test_top_shows_live_rates_in_a_terminal(metrics_mesh: MetricsMesh, iris_traffic: None) -> None:
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(MESHSERVE, ["top", "--metrics", metrics_mesh.router.metrics, "--interval", "0.5"],
                          dimensions=(LINES, COLUMNS), env={**os.environ, "TERM": "xterm-256color"})
    try:
        deadline = time.monotonic() + 30
        row = None
        while time.monotonic() < deadline:
            with contextlib.suppress(pexpect.TIMEOUT):
                stream.feed(child.read_nonblocking(65536, timeout=0.5))
            row = _iris_row(screen.display)
            if row is not None and float(row[2]) > 0:
                break
        screen_text = "\n".join(screen.display)
        assert row is not None, screen_text
        calls_per_s, errors_per_s, p50, p99 = float(row[2]), float(row[3]), row[4], row[5]
        assert 2 < calls_per_s < 100, screen_text  # about 20 a second
        assert errors_per_s == 0, screen_text
        assert p50.endswith("ms") and p99.endswith("ms"), screen_text
        assert "routers: 1 of 1 answering" in screen_text and "scrape errors: 0" in screen_text
        child.sendintr()  # Ctrl-C: a clean exit
        child.expect(pexpect.EOF, timeout=10)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.signalstatus


def test_top_once_prints_one_table(metrics_mesh: MetricsMesh, iris_traffic: None) -> None:
    done = subprocess.run([MESHSERVE, "top", "--once", "--metrics", metrics_mesh.router.metrics, "--interval", "1"],
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "COLUMNS": str(COLUMNS)})
    assert done.returncode == 0, done.stdout + done.stderr
    row = _iris_row(done.stdout.splitlines())
    assert row is not None and float(row[2]) > 0, done.stdout


def test_top_reports_routers_it_cannot_scrape(metrics_mesh: MetricsMesh) -> None:
    done = subprocess.run([MESHSERVE, "top", "--once", "--metrics", "127.0.0.1:1", "--interval", "0.1"],
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "COLUMNS": str(COLUMNS)})
    assert done.returncode == 1
    assert "routers: 0 of 1 answering" in done.stdout and "scrape errors: 1" in done.stdout
    assert "127.0.0.1:1: " in done.stdout and "refused" in done.stdout.lower()
