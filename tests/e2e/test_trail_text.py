"""A trail that cannot be forged on screen, through a real router, audit service and the `meshserve` command.

Request ids that are not visible ASCII are refused (and the refusal audited without
them); names with control or bidi characters are printed escaped by `audit query` and
`audit tail`; refusals of unknown keys are audited with the model the caller asked for.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid

import grpc
import pytest

from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

from .helpers import IRIS_ROWS, assert_eventually, rpc_error

FORGED = "x\n2026-12-02 INJECTED"
UNKNOWN_KEY = (("authorization", "Bearer ms_0123456789abcdef_" + "A" * 43),)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def iris(request_id: str = "", model: str = "iris") -> oip.ModelInferRequest:
    return build_request(model, {"features": IRIS_ROWS[:1]}, request_id=request_id)


def events(mesh: LocalMesh, **filters: object) -> list[audit_pb2.CallEvent]:
    with grpc.insecure_channel(mesh.audit_address) as channel:
        return [r.record.event for r in audit_pb2_grpc.AuditServiceStub(channel).Query(
            audit_pb2.QueryRequest(limit=1000, **filters), timeout=10)]  # type: ignore[arg-type]


def meshserve(mesh: LocalMesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshserve.cli.main", *args, "--audit", mesh.audit_address],
                          capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "250"})


def test_a_request_id_with_a_newline_is_refused_and_audited_without_it(mesh: LocalMesh, router: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    since = time.time_ns()
    refused = rpc_error(lambda: stub.ModelInfer(iris(FORGED), timeout=10))
    assert refused.code() == INVALID, refused
    assert "visible ASCII" in refused.details() and repr(FORGED) in refused.details()
    header = rpc_error(lambda: stub.ModelInfer(iris(), timeout=10, metadata=(("x-request-id", "two words"),)))
    assert header.code() == INVALID and "x-request-id header" in header.details()
    ok = f"ok-{uuid.uuid4().hex}"
    assert stub.ModelInfer(iris(ok), timeout=10).id == ok

    # In a stream the refused request gets an error response, and the stream goes on.
    answers = list(stub.ModelStreamInfer(iter([iris(FORGED), iris(ok)]), timeout=10))
    assert "visible ASCII" in answers[0].error_message and answers[1].infer_response.id == ok
    stream = rpc_error(lambda: list(stub.ModelStreamInfer(iter([iris()]), timeout=10,
                                                          metadata=(("x-request-id", "two words"),))))
    assert stream.code() == INVALID and "x-request-id header" in stream.details()

    def refusals() -> list[audit_pb2.CallEvent]:
        found = [e for e in events(mesh, model="iris", status="INVALID_ARGUMENT", since_unix_nanos=since)
                 if "request id" in e.status_message or "x-request-id" in e.status_message]
        assert {e.method for e in found} == {"ModelInfer", "ModelStreamInfer"} and len(found) == 4, found
        return found
    for event in assert_eventually(refusals, timeout=15):
        assert event.request_id == event.event_id  # the refused id is not kept, not even escaped
        assert "\n" not in event.status_message and "two words" not in event.request_id

    # The audit service refuses it as a filter too.
    done = meshserve(mesh, "audit", "query", "--request-id", FORGED)
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr and "request_id filter" in done.stderr
    assert f"from the audit service at {mesh.audit_address}" in " ".join(done.stderr.split())


def _tail_until(mesh: LocalMesh, model: str, wanted: str, timeout: float = 30.0) -> str:
    """What `meshserve audit tail --model MODEL` prints until a line holds ``wanted`` (then it is stopped)."""
    proc = subprocess.Popen([sys.executable, "-m", "meshserve.cli.main", "audit", "tail", "--model", model,
                             "--audit", mesh.audit_address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "250"})
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while wanted.encode() not in out and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                out += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out.decode()


def test_a_model_name_with_a_bidi_override_is_printed_escaped(mesh: LocalMesh, router: grpc.Channel) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"iris{tag}\u202egnp.exe"  # shows as "iris<tag>exe.png" when printed raw
    shown = f"iris{tag}\\u202egnp.exe"
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    assert rpc_error(lambda: stub.ModelInfer(iris(f"bidi-{tag}", model=name), timeout=10)).code() == INVALID
    recorded = assert_eventually(lambda: events(mesh, request_id=f"bidi-{tag}")[0], timeout=15,
                                 retry_on=(IndexError,))
    assert recorded.model == name

    table = meshserve(mesh, "audit", "query", "--model", name)
    assert table.returncode == 0, table.stderr
    assert shown in table.stdout and "\u202e" not in table.stdout
    assert [line for line in table.stdout.splitlines() if f"bidi-{tag}" in line] != []
    exact = meshserve(mesh, "audit", "query", "--model", name, "--json")
    assert exact.returncode == 0 and f"bidi-{tag}" in exact.stdout and "\\u202e" in exact.stdout  # JSON's escape

    tailed = _tail_until(mesh, name, shown)
    assert shown in tailed and "\u202e" not in tailed
    line = next(line for line in tailed.splitlines() if shown in line)
    assert f"bidi-{tag}" in line and "INVALID_ARGUMENT" in line  # one record, one line


@pytest.mark.parametrize("method", ["ModelInfer", "ModelStreamInfer"])
def test_a_refused_unknown_key_is_audited_with_the_model(mesh: LocalMesh, router: grpc.Channel, method: str) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(router)
    request_id = f"unknown-key-{uuid.uuid4().hex}"
    request = iris(request_id)
    request.model_version = "1"
    if method == "ModelInfer":
        refused = rpc_error(lambda: stub.ModelInfer(request, timeout=10, metadata=UNKNOWN_KEY))
    else:
        refused = rpc_error(lambda: list(stub.ModelStreamInfer(iter([request]), timeout=10, metadata=UNKNOWN_KEY)))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown or revoked" in refused.details()
    event = assert_eventually(lambda: events(mesh, request_id=request_id)[0], timeout=15, retry_on=(IndexError,))
    assert (event.method, event.model, event.requested_version) == (method, "iris", "1")
    assert event.status_code == grpc.StatusCode.UNAUTHENTICATED.value[0] and event.principal == "anonymous"
