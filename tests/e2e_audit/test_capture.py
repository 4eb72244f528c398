"""Test 2: a model's payload-capture policy, set while the mesh runs, applies to its next calls."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import grpc
import numpy as np
from e2e.helpers import IRIS_ROWS, assert_eventually

from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .conftest import AuditMesh
from .helpers import meshserve_cli, query, request, stub, tensors_of, write_policy
from .scenario import pair_tensors

CAP = 16  # bytes: pair's 3-element INT32 input fits, its 10-element one does not


def expect_capture(recorded: Sequence[audit_pb2.TensorRecord], sent: Sequence[tuple[str, str, list[int], bytes]],
                   cap: int, redact: Sequence[str] = ()) -> None:
    assert [t.name for t in recorded] == [t[0] for t in sent]
    for record, (name, _, _, data) in zip(recorded, sent, strict=True):
        if name in redact:
            assert (record.redacted, record.truncated, record.data) == (True, False, b""), record
        elif len(data) > cap:
            assert (record.redacted, record.truncated, record.data) == (False, True, b""), record
        else:
            assert (record.redacted, record.truncated, record.data) == (False, False, data), record


def stored(address: str, request_id: str) -> audit_pb2.CallEvent:
    def one() -> audit_pb2.CallEvent:
        records = query(address, request_id=request_id)
        assert len(records) == 1, records
        return records[0].event
    return assert_eventually(one, timeout=10, interval=0.1)


def test_policy_captures_payloads_and_redacts(audit_mesh: AuditMesh, router: grpc.Channel) -> None:
    tag = uuid.uuid4().hex[:6]
    infer = stub(router).ModelInfer
    before = request("pair", pair_tensors(2), raw=True, request_id=f"{tag}-before")
    infer(before, timeout=10)
    try:
        cli = meshserve_cli("audit", "policy", "set", "pair", "--capture", "--redact", "secret",
                            "--max-payload-bytes", str(CAP), "--etcd", audit_mesh.etcd_endpoint)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        set_at = time.monotonic()
        write_policy(audit_mesh.etcd_endpoint, "iris",
                     audit_pb2.AuditPolicy(capture_payloads=True, redact_inputs=["features"]))
        time.sleep(max(0.0, set_at + 1.0 - time.monotonic()))  # the policy's promise: applied within a second

        small = request("pair", pair_tensors(3), raw=False, request_id=f"{tag}-small")
        big_tensors = pair_tensors(4)
        big_tensors[1] = ("public", "INT32", np.arange(10, dtype=np.int32))
        big = request("pair", big_tensors, raw=True, request_id=f"{tag}-big")
        iris = request("iris", [("features", "FP32", IRIS_ROWS)], raw=True, request_id=f"{tag}-iris")
        responses = {r.id: infer(r, timeout=10) for r in (small, big, iris)}

        event = stored(audit_mesh.audit_address, f"{tag}-before")  # before the policy: digests only
        assert all(not (t.data or t.redacted or t.truncated) for t in [*event.inputs, *event.outputs])
        for req in (small, big):
            event = stored(audit_mesh.audit_address, req.id)
            expect_capture(event.inputs, tensors_of(req.inputs, req.raw_input_contents), CAP, ["secret"])
            response = responses[req.id]
            expect_capture(event.outputs, tensors_of(response.outputs, response.raw_output_contents), CAP)
        # both cases are there: public is captured in the small call and truncated in the big one
        assert stored(audit_mesh.audit_address, big.id).inputs[1].truncated
        assert stored(audit_mesh.audit_address, small.id).inputs[1].data == np.array(
            [3, -7, 2**31 - 1], dtype="<i4").tobytes()

        # iris, its only input redacted: only the outputs are kept (the router's default cap is 64 KiB).
        event = stored(audit_mesh.audit_address, iris.id)
        expect_capture(event.inputs, tensors_of(iris.inputs, iris.raw_input_contents), 64 * 1024, ["features"])
        response = responses[iris.id]
        expect_capture(event.outputs, tensors_of(response.outputs, response.raw_output_contents), 64 * 1024)
        assert all(t.data for t in event.outputs)
    finally:
        write_policy(audit_mesh.etcd_endpoint, "pair", None)
        write_policy(audit_mesh.etcd_endpoint, "iris", None)
