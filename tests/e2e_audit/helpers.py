"""Helpers of the audit end-to-end tests: an independent digest, calls, and reading the trail.

The digests here are computed from the definition in ``CallEvent.input_digest`` (and
``meshserve/audit/digest.py``'s docstring) without importing the product's code, so a
mistake in one is not repeated in the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from e2e.helpers import assert_eventually

from meshserve.local import process as local_process
from meshserve.local.process import ManagedProcess
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc
from meshserve.registry.etcd import connect

# datatype -> (little-endian numpy dtype, InferTensorContents field)
_TYPES: dict[str, tuple[str, str]] = {
    "FP32": ("<f4", "fp32_contents"), "FP64": ("<f8", "fp64_contents"), "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"), "BOOL": ("|b1", "bool_contents"),
}
_U64 = struct.Struct("<Q")

# -- digests (independent of meshserve.audit.digest) ---------------------------------------


def tensor_bytes(datatype: str, values: Any) -> bytes:
    """Little-endian bytes of a tensor (BYTES: each element a u32 length and its bytes)."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return np.asarray(values, dtype=_TYPES[datatype][0]).tobytes()


def tensor_digest(name: str, datatype: str, shape: Sequence[int], data: bytes) -> str:
    parts = (name.encode(), datatype.encode(), b"".join(struct.pack("<q", d) for d in shape), data)
    return hashlib.sha256(b"".join(_U64.pack(len(p)) + p for p in parts)).hexdigest()


def side_digest(tensors: Sequence[tuple[str, str, Sequence[int], bytes]]) -> str:
    """The digest of one side of a call: SHA-256 of its tensors' digests in name order, one per line."""
    if not tensors:
        return ""
    digests = [tensor_digest(*t) for t in sorted(tensors, key=lambda t: t[0])]
    return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()


def _typed_bytes(tensor: Any) -> bytes:
    if tensor.datatype == "BYTES":
        return tensor_bytes("BYTES", list(tensor.contents.bytes_contents))
    dtype, field = _TYPES[tensor.datatype]
    return np.asarray(list(getattr(tensor.contents, field)), dtype=dtype).tobytes()


def tensors_of(tensors: Sequence[Any], raws: Sequence[bytes]) -> list[tuple[str, str, list[int], bytes]]:
    """(name, datatype, shape, little-endian data) of each input or output tensor of a message."""
    return [(t.name, t.datatype, list(t.shape), raws[i] if raws else _typed_bytes(t)) for i, t in enumerate(tensors)]


def request_digest(request: oip.ModelInferRequest) -> str:
    return side_digest(tensors_of(request.inputs, request.raw_input_contents))


def response_digest(response: oip.ModelInferResponse) -> str:
    return side_digest(tensors_of(response.outputs, response.raw_output_contents))


# -- building requests ---------------------------------------------------------------------

Tensor = tuple[str, str, Any]  # name, datatype, numpy array (or list of bytes for BYTES)


def request(model: str, tensors: Sequence[Tensor], *, raw: bool, request_id: str = "",
            version: str = "") -> oip.ModelInferRequest:
    """A ModelInferRequest with the tensors as raw bytes or as typed contents."""
    req = oip.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, values in tensors:
        shape = [len(values)] if datatype == "BYTES" else list(np.shape(values))
        tensor = req.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            req.raw_input_contents.append(tensor_bytes(datatype, values))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(values)
        else:
            getattr(tensor.contents, _TYPES[datatype][1]).extend(np.asarray(values).ravel().tolist())
    return req


def stub(channel: grpc.Channel) -> oip_grpc.GRPCInferenceServiceStub:
    return oip_grpc.GRPCInferenceServiceStub(channel)


# -- what a record should hold -------------------------------------------------------------


@dataclass
class Expected:
    """The fields a call's record must hold, as the test saw the call."""

    request_id: str
    model: str
    method: str = "ModelInfer"
    requested_version: str = ""
    resolved_version: str = ""
    runtime_kind: str = ""
    runtime_id: str = ""
    status_code: int = 0
    status_message: str = ""
    input_digest: str = ""
    output_digest: str = ""
    input_bytes: int = 0
    output_bytes: int = 0
    # (name, datatype, shape, digest) of each input and output tensor, in the message's order
    inputs: list[tuple[str, str, list[int], str]] = field(default_factory=list)
    outputs: list[tuple[str, str, list[int], str]] = field(default_factory=list)


def tensor_records(tensors: Sequence[tuple[str, str, list[int], bytes]]) -> list[tuple[str, str, list[int], str]]:
    return [(n, d, s, tensor_digest(n, d, s, data)) for n, d, s, data in tensors]


def _recorded(tensors: Sequence[audit_pb2.TensorRecord]) -> list[tuple[str, str, list[int], str]]:
    return [(t.name, t.datatype, list(t.shape), t.digest) for t in tensors]


def check_record(event: audit_pb2.CallEvent, want: Expected, window: tuple[int, int], peer_prefix: str) -> None:
    """Compare a stored event with what the test expects; the start time must lie in the window."""
    got = {f: getattr(event, f) for f in vars(want) if f not in ("inputs", "outputs")}
    got.update(inputs=_recorded(event.inputs), outputs=_recorded(event.outputs))
    assert got == vars(want), f"record of {want.request_id!r} differs from the call"
    assert event.principal == "anonymous"
    assert event.peer.startswith(peer_prefix), event.peer
    assert window[0] <= event.start_unix_nanos <= window[1], (event.start_unix_nanos, window)
    assert 0 < event.duration_nanos <= window[1] - event.start_unix_nanos
    assert event.event_id and event.router_id


# -- reading the trail ---------------------------------------------------------------------


def query(address: str, *, metadata: Sequence[tuple[str, str]] = (), **filters: Any) -> list[audit_pb2.AuditRecord]:
    """Every record matching ``filters`` (QueryRequest fields), paging through, oldest first."""
    records: list[audit_pb2.AuditRecord] = []
    token = ""
    with grpc.insecure_channel(address) as channel:
        service = audit_pb2_grpc.AuditServiceStub(channel)
        while True:
            page_token = ""
            for response in service.Query(audit_pb2.QueryRequest(limit=1000, page_token=token, **filters), timeout=10,
                                          metadata=metadata):
                records.append(response.record)
                page_token = response.next_page_token or page_token
            if not page_token:
                return records
            token = page_token


def verify(address: str, *, metadata: Sequence[tuple[str, str]] = ()) -> audit_pb2.VerifyResponse:
    with grpc.insecure_channel(address) as channel:
        response: audit_pb2.VerifyResponse = audit_pb2_grpc.AuditServiceStub(channel).Verify(
            audit_pb2.VerifyRequest(), timeout=30, metadata=metadata)
        return response


def spooled_events(spool: Path) -> list[audit_pb2.CallEvent]:
    """The events in a router's spool directory, read from its documented record format."""
    events = []
    for segment in sorted(spool.glob("segment-*.spool")):
        data = segment.read_bytes()
        offset = 0
        while offset + 8 <= len(data):
            (length,) = struct.unpack_from("<I", data, offset)
            if offset + 8 + length > len(data):
                break
            batch = audit_pb2.CallEventBatch.FromString(data[offset + 8:offset + 8 + length])
            events += [audit_pb2.CallEvent.FromString(event) for event in batch.events]
            offset += 8 + length
    return events


# -- processes -----------------------------------------------------------------------------


def start_service(name: str, module: str, args: Sequence[str], folder: Path,
                  timeout: float = 60.0) -> tuple[ManagedProcess, str, dict[str, Any]]:
    """A meshserve service as a process on port 0: (process, address, announcement)."""
    proc, info = local_process.start_service(name, module, ["--port", "0", *args], folder, timeout=timeout)
    return proc, str(info["address"]), info


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(interval)


def counts(records: Sequence[audit_pb2.AuditRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.event.request_id] = out.get(r.event.request_id, 0) + 1
    return out


def dump(records: Sequence[audit_pb2.AuditRecord]) -> str:
    return json.dumps([[r.sequence, r.event.request_id, r.event.model] for r in records])


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


# -- audit policies ------------------------------------------------------------------------

POLICY_PREFIX = "/meshserve/v1/audit-policies/"


def write_policy(etcd_endpoint: str, model: str, policy: audit_pb2.AuditPolicy | None) -> None:
    """Write (or with None, delete) a model's audit policy key in etcd, as an operator's tool would."""
    async def write() -> None:
        client = await connect(etcd_endpoint, wait=5)
        try:
            key = (POLICY_PREFIX + model).encode()
            if policy is None:
                await client.delete(key)
            else:
                await client.put(key, policy.SerializeToString())
        finally:
            await client.close()
    asyncio.run(write())


def meshserve_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``meshserve`` command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "meshserve.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


# -- load ----------------------------------------------------------------------------------


class Load:
    """Threads calling iris through a router back to back (or, with ``rate``, that many calls a second in
    all), each call with its own request id."""

    def __init__(self, address: str, tag: str, threads: int = 2, rate: float = 0.0) -> None:
        self.address = address
        self.tag = tag
        self.threads = threads
        self.interval_s = threads / rate if rate else 0.0  # between two calls' starts, per thread
        # (request id, monotonic start, seconds taken, error or None), in completion order
        self.calls: list[tuple[str, float, float, grpc.RpcError | None]] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, n: int) -> None:
        rows = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
        with grpc.insecure_channel(self.address) as channel:
            infer = stub(channel).ModelInfer
            i = 0
            began = time.monotonic()
            while not self._stop.is_set():
                wait = began + i * self.interval_s - time.monotonic()
                if self.interval_s and wait > 0 and self._stop.wait(wait):
                    break
                request_id = f"{self.tag}-{n}-{i}"
                started = time.monotonic()
                error = None
                try:
                    infer(request("iris", [("features", "FP32", rows)], raw=True, request_id=request_id), timeout=10)
                except grpc.RpcError as e:
                    error = e
                self.calls.append((request_id, started, time.monotonic() - started, error))
                i += 1

    def wait_calls(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` more calls have finished."""
        target = len(self.calls) + count
        wait_for(lambda: len(self.calls) >= target, timeout, f"{count} more calls made")

    @property
    def ids(self) -> set[str]:
        return {c[0] for c in self.calls}

    @property
    def answered(self) -> set[str]:
        """The calls that were answered OK."""
        return {c[0] for c in self.calls if c[3] is None}

    def errors(self) -> list[tuple[str, grpc.RpcError]]:
        return [(c[0], c[3]) for c in self.calls if c[3] is not None]

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return sorted(c[2] for c in self.calls if since <= c[1] < until)


def all_stored_once(address: str, ids: set[str], since_ns: int, timeout: float = 20.0) -> None:
    """Every request id in ``ids`` is stored exactly once (and nothing else in the window), and stays so."""
    def arrived() -> None:
        got = counts(query(address, since_unix_nanos=since_ns))
        missing = ids - set(got)
        assert not missing, f"{len(missing)} of {len(ids)} events not stored yet, e.g. {sorted(missing)[:3]}"
    assert_eventually(arrived, timeout=timeout, interval=0.2)
    deadline = time.monotonic() + 1.5
    while True:
        got = counts(query(address, since_unix_nanos=since_ns))
        twice = {k: v for k, v in got.items() if v != 1}
        assert not twice, f"stored more than once: {twice}"
        assert set(got) == ids, f"unexpected records: {sorted(set(got) - ids)[:5]}"
        if time.monotonic() > deadline:
            return
        time.sleep(0.3)
