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
               tls_ca: Path | None = None, drain: bool = False) -> Result:
    """``concurrency`` streams on one HTTP/2 connection for ``duration_s`` after ``warmup_s``.

    With ``tls_ca`` the connection is TLS (h2load negotiates HTTP/2 by ALPN and, unlike the
    check call, does not verify the server's certificate). With ``drain``, h2load makes a
    number of calls instead (as many as a warm-up run says fill ``duration_s``) and waits
    for every answer: a timed run ends by closing the connection with calls in flight, which
    cancels them, and Triton 2.51 can crash on a cancelled call (its gRPC cancellation race,
    fixed in Triton 2.54), so runs that reach Triton drain.
    """
    response_size = len(call_once(address, request, metadata, tls_ca))
    if drain:
        probe = _h2load(address, request, concurrency, ["-n", str(max(concurrency, 200))], metadata, tls_ca,
                        response_size, warmup_s + 60)
        calls = max(concurrency, 200, round(probe.throughput * duration_s))
        return _h2load(address, request, concurrency, ["-n", str(calls)], metadata, tls_ca, response_size,
                       duration_s * 10 + 60)
    return _h2load(address, request, concurrency,
                   ["-D", f"{round(duration_s * 1000)}ms", f"--warm-up-time={round(warmup_s * 1000)}ms"],
                   metadata, tls_ca, response_size, warmup_s + duration_s + 60, duration_s)


def _h2load(address: str, request: bytes, concurrency: int, run: list[str], metadata: Sequence[tuple[str, str]],
            tls_ca: Path | None, response_size: int, timeout_s: float, duration_s: float = 0.0) -> Result:
    """One h2load run; ``duration_s`` 0: the time h2load reports it took."""
    headers = [arg for key, value in metadata for arg in ("-H", f"{key}: {value}")]
    with tempfile.TemporaryDirectory(prefix="meshserve-h2load-") as folder:
        body = Path(folder) / "body"
        body.write_bytes(b"\x00" + struct.pack(">I", len(request)) + request)
        log = Path(folder) / "log"
        out = subprocess.run(
            [H2LOAD, "-c", "1", "-m", str(concurrency), *run,
             "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers", *headers,
             f"--log-file={log}", f"{'https' if tls_ca else 'http'}://{address}{METHOD}"],
            capture_output=True, text=True, timeout=timeout_s, check=True,
        ).stdout
        rows = np.loadtxt(log, ndmin=2) if log.stat().st_size else np.zeros((0, 3))
    done = int(_field(out, r"requests: \d+ total, \d+ started, (\d+) done"))
    data = int(_field(out, r"\((\d+)\) data"))
    answered = data // (5 + response_size) if response_size else done
    ok_http = int((rows[:, 1] == 200).sum()) if len(rows) else 0
    errors = max(done - answered, len(rows) - ok_http, 0)
    return Result(rows[:, 2] / 1e6, duration_s or _finished_s(out), errors)


_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _finished_s(out: str) -> float:
    """The run's length, from h2load's "finished in 2.00s" (or ms, us)."""
    match = re.search(r"finished in ([\d.]+)(us|ms|s)\b", out)
    if match is None:
        raise RuntimeError(f"h2load printed no run time:\n{out}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _field(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load printed no {pattern!r}:\n{text}")
    return match.group(1)
