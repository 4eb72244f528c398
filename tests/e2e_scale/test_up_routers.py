"""`meshserve up --routers N`: N routers on one registry, listed in the endpoints table and the announce file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, copy_model, infer

from meshserve.local.mesh import port_is_free

MESHSERVE = str(Path(sys.executable).parent / "meshserve")


def test_a_taken_port_among_the_routers_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        first = taken - 1
        if not port_is_free("127.0.0.1", first):
            pytest.skip(f"port {first} is in use here")
        done = subprocess.run([MESHSERVE, "up", "--model-repository", str(tmp_path), "--no-triton",
                               "--router-port", str(first), "--routers", "2"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert f"port {taken} on 127.0.0.1 is in use" in done.stderr + done.stdout


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_up_starts_routers_side_by_side(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    copy_model(EXAMPLES / "iris", repository, "iris")
    announce = tmp_path / "up.json"
    proc = subprocess.Popen(
        [MESHSERVE, "up", "--model-repository", str(repository), "--no-triton", "--no-audit", "--routers", "2",
         "--router-port", "0", "--etcd-port", "0", "--data-dir", str(tmp_path / "data"),
         "--announce-file", str(announce)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    routers: list[str] = []
    children: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 90
        while not announce.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "meshserve up did not come up in 90 s"
            time.sleep(0.1)
        info = json.loads(announce.read_text())
        routers, children = info["routers"], info["children"]
        assert len(routers) == 2 and routers[0] == info["router"] and routers[0] != routers[1]
        assert {"router", "router-2"} <= set(children)
        for address in routers:
            with grpc.insecure_channel(address) as channel:
                labels = assert_eventually(lambda channel=channel: infer(channel, "iris", IRIS_ROWS)["label"],
                                           timeout=20, retry_on=(grpc.RpcError,))
                assert labels.shape == (len(IRIS_ROWS),)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it did not stop: stop what it started, then it
            for pid in children.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    assert "router 2 (OIP gRPC)" in out
    for address in routers:  # each router is in the endpoints table
        assert address in out
