"""A C load generator for unary gRPC: h2load (nghttp2) posting one framed request.

The Python load generator costs about 0.2 ms of client time per call, which a
latency measured in absolute milliseconds (the R bridge) must not include. h2load
sends a gRPC unary call as what it is on the wire (an HTTP/2 POST of a 5-byte prefix
and the serialized request) and records every call's latency. It does not read gRPC
trailers, so each run is checked twice: the request is first sent once with grpcio and
must succeed, and every answer must carry the same number of bytes as that response
(an error answers with trailers only, so it shows up as missing bytes).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from bench.loadgen import METHOD, Result

H2LOAD = "h2load"


def available() -> bool:
    return shutil.which(H2LOAD) is not None


def call_once(address: str, request: bytes, metadata: Sequence[tuple[str, str]] = (),
              tls_ca: Path | None = None) -> bytes:
    """Send ``request`` once with grpcio (over TLS trusting ``tls_ca``, when given); return the response."""
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes()) if tls_ca else None
    with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as channel:
        response: bytes = channel.unary_unary(METHOD)(request, timeout=30, metadata=tuple(metadata))
    return response


def run_h2load(address: str, request: bytes, *, concurrency: int, warmup_s: float = 1.0,
               duration_s: float = 5.0, metadata: Sequence[tuple[str, str]] = (),
               tls_ca: Path | None = None) -> Result:
    """``concurrency`` streams on one HTTP/2 connection for ``duration_s`` after ``warmup_s``.

    With ``tls_ca`` the connection is TLS (h2load negotiates HTTP/2 by ALPN and, unlike the
    check call, does not verify the server's certificate).
    """
    response_size = len(call_once(address, request, metadata, tls_ca))
    headers = [arg for key, value in metadata for arg in ("-H", f"{key}: {value}")]
    with tempfile.TemporaryDirectory(prefix="meshserve-h2load-") as folder:
        body = Path(folder) / "body"
        body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
        log = Path(folder) / "log"
        out = subprocess.run(
            [H2LOAD, "-c", "1", "-m", str(concurrency), "-D", f"{round(duration_s * 1000)}ms",
             f"--warm-up-time={round(warmup_s * 1000)}ms",
             "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers", *headers,
             f"--log-file={log}", f"{'https' if tls_ca else 'http'}://{address}{METHOD}"],
            capture_output=True, text=True, timeout=warmup_s + duration_s + 60, check=True,
        ).stdout
        rows = np.loadtxt(log, ndmin=2) if log.stat().st_size else np.zeros((0, 3))
    done = int(_field(out, r"requests: \d+ total, \d+ started, (\d+) done"))
    data = int(_field(out, r"\((\d+)\) data"))
    answered = data // (5 + response_size) if response_size else done
    ok_http = int((rows[:, 1] == 200).sum()) if len(rows) else 0
    errors = max(done - answered, len(rows) - ok_http, 0)
    return Result(rows[:, 2] / 1e6, duration_s, errors)


def _field(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load printed no {pattern!r}:\n{text}")
    return match.group(1)
