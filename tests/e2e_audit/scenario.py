"""Test 1's calls: a mix of successes, errors and streamed requests, and what each record must hold.

Shared by the SQLite run (``test_calls.py``) and the PostgreSQL run (``test_postgres.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

import grpc
import numpy as np
from e2e.helpers import IRIS_ROWS, assert_eventually

from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .helpers import (
    Expected,
    Tensor,
    check_record,
    request,
    request_digest,
    response_digest,
    stub,
    tensor_records,
    tensors_of,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NO_ID = "<none>"  # a call sent without any request id: its record's request id is its event id


def pair_tensors(i: int) -> list[Tensor]:
    """``pair``'s inputs, deliberately not in name order."""
    return [("secret", "FP32", np.array([0.5 * i, -1.25, 3.0], dtype=np.float32)),
            ("public", "INT32", np.array([i, -7, 2**31 - 1], dtype=np.int32)),
            ("note", "BYTES", [b"hello", b"", "caf\u00e9".encode()])]


class Calls:
    """Makes calls through a router and notes the record each should leave."""

    def __init__(self, channel: grpc.Channel, runtime_id: str) -> None:
        self.stub = stub(channel)
        self.runtime_id = runtime_id
        self.tag = uuid.uuid4().hex[:6]
        self.expected: list[Expected] = []

    def rid(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def ok(self, req: oip.ModelInferRequest, metadata: Sequence[tuple[str, str]] = (), *,
           request_id: str = "") -> oip.ModelInferResponse:
        response = self.stub.ModelInfer(req, timeout=10, metadata=metadata)
        self.expected.append(Expected(
            request_id=request_id or req.id, model=req.model_name, requested_version=req.model_version,
            resolved_version="1", runtime_kind="python", runtime_id=self.runtime_id,
            input_digest=request_digest(req), output_digest=response_digest(response),
            input_bytes=len(req.SerializeToString()), output_bytes=len(response.SerializeToString()),
            inputs=tensor_records(tensors_of(req.inputs, req.raw_input_contents)),
            outputs=tensor_records(tensors_of(response.outputs, response.raw_output_contents))))
        return response

    def failing(self, req: oip.ModelInferRequest, code: grpc.StatusCode, *, reaches_runtime: bool) -> None:
        try:
            self.stub.ModelInfer(req, timeout=10)
        except grpc.RpcError as e:
            assert e.code() == code, e
            message = e.details()
        else:
            raise AssertionError(f"{req.id}: the call succeeded")
        self.expected.append(Expected(
            request_id=req.id, model=req.model_name, requested_version=req.model_version,
            resolved_version="1" if reaches_runtime else "", runtime_kind="python" if reaches_runtime else "",
            runtime_id=self.runtime_id if reaches_runtime else "", status_code=code.value[0], status_message=message,
            input_digest=request_digest(req), input_bytes=len(req.SerializeToString()),
            inputs=tensor_records(tensors_of(req.inputs, req.raw_input_contents))))

    def stream(self, requests: Sequence[oip.ModelInferRequest], unknown_model: str) -> None:
        """One ModelStreamInfer; requests for ``unknown_model`` are answered by the router itself."""
        responses = list(self.stub.ModelStreamInfer(iter(requests), timeout=10))
        assert len(responses) == len(requests), responses
        refused = [r for r in responses if f"{unknown_model!r}" in r.error_message]
        answered = iter([r for r in responses if r not in refused])  # the runtime answers in order
        refusals = iter(refused)
        for req in requests:
            common = {"request_id": req.id, "model": req.model_name, "method": "ModelStreamInfer",
                      "input_digest": request_digest(req), "input_bytes": len(req.SerializeToString()),
                      "inputs": tensor_records(tensors_of(req.inputs, req.raw_input_contents))}
            if req.model_name == unknown_model:
                self.expected.append(Expected(**common, status_code=NOT_FOUND,
                                              status_message=next(refusals).error_message))
                continue
            response = next(answered)
            reply = response.infer_response
            self.expected.append(Expected(
                **common, resolved_version="1", runtime_kind="python", runtime_id=self.runtime_id,
                # a request the runtime refuses comes back as an error message, without a status code
                status_code=grpc.StatusCode.UNKNOWN.value[0] if response.error_message else 0,
                status_message=response.error_message, output_digest=response_digest(reply),
                output_bytes=len(response.SerializeToString()),
                outputs=tensor_records(tensors_of(reply.outputs, reply.raw_output_contents))))
            if not response.error_message:
                assert reply.id == req.id, (reply.id, req.id)

def make_calls(channel: grpc.Channel, runtime_id: str) -> tuple[list[Expected], tuple[int, int]]:
    """The mix of calls; returns the records they must leave and the time window they were made in."""
    calls = Calls(channel, runtime_id)
    rid = calls.rid
    start = time.time_ns()
    raw_digests, typed_digests = [], []
    for i, row in enumerate(IRIS_ROWS[:3]):
        raw = request("iris", [("features", "FP32", row[None, :])], raw=True, request_id=rid(f"raw-{i}"))
        typed = request("iris", [("features", "FP32", row[None, :])], raw=False, request_id=rid(f"typed-{i}"))
        calls.ok(raw)
        calls.ok(typed)
        raw_digests.append(request_digest(raw))
        typed_digests.append(request_digest(typed))
    calls.ok(request("iris", [("features", "FP32", IRIS_ROWS)], raw=True, request_id=rid("v1"), version="1"))
    calls.ok(request("pair", pair_tensors(1), raw=True, request_id=rid("pair-raw")))
    calls.ok(request("pair", pair_tensors(1), raw=False, request_id=rid("pair-typed")))
    calls.ok(request("iris", [("features", "FP32", IRIS_ROWS[1:2])], raw=True), (("x-request-id", rid("meta")),),
             request_id=rid("meta"))
    calls.ok(request("iris", [("features", "FP32", IRIS_ROWS[2:3])], raw=False), request_id=NO_ID)
    bad_shape = request("iris", [("features", "FP32", IRIS_ROWS[:2, :3])], raw=True, request_id=rid("bad-shape"))
    calls.failing(bad_shape, grpc.StatusCode.INVALID_ARGUMENT, reaches_runtime=True)
    bad_type = request("iris", [("features", "FP64", IRIS_ROWS[:1])], raw=False, request_id=rid("bad-type"))
    calls.failing(bad_type, grpc.StatusCode.INVALID_ARGUMENT, reaches_runtime=True)
    calls.failing(request("no-such-model", [("features", "FP32", IRIS_ROWS[:1])], raw=True, request_id=rid("unknown")),
                  grpc.StatusCode.NOT_FOUND, reaches_runtime=False)
    calls.failing(request("iris", [("features", "FP32", IRIS_ROWS[:1])], raw=True, request_id=rid("v7"), version="7"),
                  grpc.StatusCode.NOT_FOUND, reaches_runtime=False)
    calls.stream([
        request("iris", [("features", "FP32", IRIS_ROWS[3:4])], raw=True, request_id=rid("stream-ok")),
        request("nope", [("features", "FP32", IRIS_ROWS[3:4])], raw=False, request_id=rid("stream-unknown")),
        request("pair", pair_tensors(5), raw=False, request_id=rid("stream-pair")),
        request("iris", [("features", "FP32", IRIS_ROWS[:1, :2])], raw=True, request_id=rid("stream-bad")),
        request("iris", [("features", "FP32", IRIS_ROWS[1:3])], raw=False, request_id=rid("stream-ok-2")),
    ], "nope")
    window = (start, time.time_ns())
    # Typed contents and raw bytes of the same data: the same digest.
    assert raw_digests == typed_digests
    assert len(set(raw_digests)) == 3
    return calls.expected, window


def check_trail(query: Callable[..., list[audit_pb2.AuditRecord]], expected: list[Expected],
                window: tuple[int, int]) -> list[audit_pb2.AuditRecord]:
    """Exactly one record per call made in the window, each with the fields the call had."""
    n = len(expected)

    def all_there() -> list[audit_pb2.AuditRecord]:
        records = query(since_unix_nanos=window[0])
        assert len(records) >= n, f"{len(records)} of {n} records so far"
        return records

    records = assert_eventually(all_there, timeout=15, interval=0.1)
    deadline = time.monotonic() + 1.5  # and no more arrive (no duplicates, no strays)
    while time.monotonic() < deadline:
        assert len(records) == n, [(r.event.request_id, r.event.model) for r in records]
        time.sleep(0.25)
        records = query(since_unix_nanos=window[0])
    assert len(records) == n
    by_id = {r.event.request_id: r.event for r in records}
    peers = {r.event.peer for r in records}
    assert len(peers) == 1, peers  # every call came over one channel
    for want in expected:
        if want.request_id == NO_ID:
            [event] = [r.event for r in records if r.event.request_id == r.event.event_id]
            want.request_id = event.event_id
        else:
            event = by_id[want.request_id]
        check_record(event, want, window, "ipv4:127.0.0.1:")
    return records
