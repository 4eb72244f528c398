"""Keys and allow rules on a router outside dev mode, with real etcd, runtime, NATS and audit trail."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from e2e.helpers import IRIS_ROWS, assert_eventually, rpc_error

from e2e_auth.helpers import keyed_mesh, meshserve, new_key
from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2 as oip
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

IRIS = build_request("iris", {"features": IRIS_ROWS[:1]})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with keyed_mesh(tmp_path_factory.mktemp("auth-mesh")) as running:
        yield running


@pytest.fixture(scope="module")
def stub(mesh: LocalMesh) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(mesh.router_address) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def infer(stub: oip_grpc.GRPCInferenceServiceStub, metadata: tuple[tuple[str, str], ...] = (),
          request: oip.ModelInferRequest = IRIS) -> oip.ModelInferResponse:
    return stub.ModelInfer(request, timeout=10, metadata=metadata)


@pytest.fixture(scope="module")
def auditor(mesh: LocalMesh) -> str:
    """A key allowed to read the whole audit trail."""
    token = new_key(mesh, "auditor", "auditors")
    done = meshserve(mesh, "policy", "allow", "--role", "auditors", "--models", "*", "--actions", "audit:read")
    assert done.returncode == 0, done.stderr
    return token


def audited(mesh: LocalMesh, request_id: str, auditor: str) -> audit_pb2.CallEvent:
    def find() -> audit_pb2.CallEvent:
        with grpc.insecure_channel(mesh.audit_address) as channel:
            found = [r.record.event for r in audit_pb2_grpc.AuditServiceStub(channel).Query(
                audit_pb2.QueryRequest(request_id=request_id, limit=10), timeout=10, metadata=bearer(auditor))]
        assert found, request_id
        return found[0]
    return assert_eventually(find, timeout=15)


def test_anonymous_calls_are_refused_and_audited(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub,
                                                  auditor: str) -> None:
    request = build_request("iris", {"features": IRIS_ROWS[:1]}, request_id=f"anon-{time.time_ns()}")
    error = rpc_error(lambda: infer(stub, request=request))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "needs an API key" in error.details() and "meshserve keys create" in error.details()
    event = audited(mesh, request.id, auditor)
    assert (event.principal, event.status_code) == ("anonymous", grpc.StatusCode.UNAUTHENTICATED.value[0])
    for call in (lambda: stub.ModelMetadata(oip.ModelMetadataRequest(name="iris"), timeout=5),
                 lambda: stub.ModelReady(oip.ModelReadyRequest(name="iris"), timeout=5)):
        assert rpc_error(call).code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5).models == []  # sees nothing


@pytest.mark.parametrize("header", [
    "Bearer nope", "Basic dXNlcjpwYXNz", "Bearer ms_0123456789abcdef_" + "A" * 43, "bearer", "Bearer " + "x" * 5000,
    "Bearer ms_../../etc_" + "A" * 43,
])
def test_forged_authorization_values_are_unauthenticated(stub: oip_grpc.GRPCInferenceServiceStub,
                                                         header: str) -> None:
    error = rpc_error(lambda: infer(stub, (("authorization", header),)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert "ms_" in error.details() or "unknown or revoked" in error.details()


def test_a_key_without_a_rule_is_permission_denied(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub,
                                                   auditor: str) -> None:
    token = new_key(mesh, "mallory")
    request = build_request("iris", {"features": IRIS_ROWS[:1]}, request_id=f"denied-{time.time_ns()}")
    error = assert_eventually(lambda: _refused(lambda: infer(stub, bearer(token), request),
                                               grpc.StatusCode.PERMISSION_DENIED))
    assert "principal 'mallory' may not infer on 'iris'" in error.details()
    event = audited(mesh, request.id, auditor)
    assert (event.principal, event.status_code) == ("mallory", grpc.StatusCode.PERMISSION_DENIED.value[0])


def test_rules_allow_by_principal_and_by_role(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    alice = new_key(mesh, "alice")
    bob = new_key(mesh, "bob", "analysts")
    assert meshserve(mesh, "policy", "allow", "--principal", "alice", "--models", "iris*",
                     "--actions", "infer,metadata").returncode == 0
    assert meshserve(mesh, "policy", "allow", "--role", "analysts", "--models", "text-*",
                     "--actions", "infer").returncode == 0
    assert_eventually(lambda: infer(stub, bearer(alice)), retry_on=(grpc.RpcError,))
    text = build_request("text-features", {"text": np.array([b"great"], dtype=object)})
    assert_eventually(lambda: infer(stub, bearer(bob), text), retry_on=(grpc.RpcError,))
    assert rpc_error(lambda: infer(stub, bearer(alice), text)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error(lambda: infer(stub, bearer(bob))).code() == grpc.StatusCode.PERMISSION_DENIED
    index = stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=5, metadata=bearer(alice))
    assert {m.name for m in index.models} == {"iris"}
    listed = meshserve(mesh, "models", key=alice)
    assert listed.returncode == 0 and " iris " in listed.stdout and "text-features" not in listed.stdout
    refused = meshserve(mesh, "infer", "text-features", "--json", '{"text": ["great"]}', key=alice)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr


def test_a_revoked_key_stops_working_within_a_second(mesh: LocalMesh,
                                                     stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    token = new_key(mesh, "carol")
    key_id = token.split("_")[1]
    assert meshserve(mesh, "policy", "allow", "--principal", "carol", "--models", "iris",
                     "--actions", "infer").returncode == 0
    assert_eventually(lambda: infer(stub, bearer(token)), retry_on=(grpc.RpcError,))
    assert meshserve(mesh, "keys", "revoke", key_id).returncode == 0
    revoked = time.monotonic()
    error = assert_eventually(lambda: _refused(lambda: infer(stub, bearer(token)), grpc.StatusCode.UNAUTHENTICATED),
                              timeout=1.0, interval=0.02)
    assert time.monotonic() - revoked < 1.0
    assert "unknown or revoked" in error.details()
    listed = meshserve(mesh, "keys", "list")
    assert key_id not in listed.stdout and "carol" not in listed.stdout


def test_policy_commands_refuse_bad_rules(mesh: LocalMesh) -> None:
    for args, words in ((("--principal", "a", "--role", "b"), "exactly one of"),
                        (("--principal", "a", "--actions", "fly"), "unknown action fly"),
                        (("--principal", "../x"), "invalid principal")):
        full = ["policy", "allow", "--models", "*", "--actions", "infer", *args]
        if "--actions" in args:
            full = ["policy", "allow", "--models", "*", *args]
        done = meshserve(mesh, *full)
        assert done.returncode != 0 and words in done.stderr, (args, done.stderr)


def _refused(call: Callable[[], object], code: grpc.StatusCode) -> grpc.RpcError:
    error = rpc_error(call)
    assert error.code() == code, error
    return error


def test_rate_and_model_limits(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    token = new_key(mesh, "dave")
    assert meshserve(mesh, "policy", "allow", "--principal", "dave", "--models", "iris",
                     "--actions", "infer").returncode == 0
    assert meshserve(mesh, "policy", "rate", "--principal", "dave", "--calls-per-second", "2",
                     "--burst", "3").returncode == 0
    assert meshserve(mesh, "policy", "model-limits", "iris", "--max-batch", "4").returncode == 0
    time.sleep(1.0)  # the limits reach the router's watch, and dave's bucket is full
    codes = []
    for _ in range(6):
        try:
            infer(stub, bearer(token))
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code().name)
            assert "over its rate limit of 2 calls/s" in e.details()
    assert codes[:3] == ["OK"] * 3 and "RESOURCE_EXHAUSTED" in codes[3:], codes
    time.sleep(1.5)
    big = build_request("iris", {"features": np.repeat(IRIS_ROWS[:1], 5, axis=0)})
    error = rpc_error(lambda: infer(stub, bearer(token), big))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch of 5" in error.details()
    assert meshserve(mesh, "policy", "rate", "--principal", "dave", "--calls-per-second", "0").returncode == 0
    assert meshserve(mesh, "policy", "model-limits", "iris").returncode == 0
