"""Versions, aliases and traffic policies through a real router, runtime, etcd and audit trail.

Every change goes through the router (UpdateRoute), as `meshserve alias` and `meshserve
route` send it; this mesh runs in dev mode, where callers without a key may change routes.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e.helpers import assert_eventually, rpc_error

from meshserve import routes
from meshserve.errors import FailedPrecondition, InvalidArgument
from meshserve.local.mesh import LocalMesh
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb

from .helpers import X, allow_role, current, echo, forget_route, grant, set_alias, set_policy, update

MESHSERVE = str(Path(sys.executable).parent / "meshserve")


@pytest.fixture
def stub(mesh: LocalMesh) -> Iterator[oip_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(mesh.router_address) as channel:
        yield oip_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(autouse=True)
def clean_route(mesh: LocalMesh) -> Iterator[None]:
    """Every test starts and ends with echo routed to its latest version, without aliases."""
    forget_route(mesh.etcd_endpoint)
    yield
    forget_route(mesh.etcd_endpoint)


def meshserve(*args: str, router: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MESHSERVE_API_KEY", None)
    return subprocess.run([MESHSERVE, *args, "--router", router], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_explicit_version_latest_and_alias(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    assert echo(stub) == 3 and echo(stub, "1") == 1
    done = meshserve("alias", "set", "echo", "stable", "1", router=mesh.router_address)
    assert done.returncode == 0, done.stderr
    assert "stable -> 1" in done.stdout
    assert echo(stub, "stable") == 1  # the router answers once its own registry view shows the change
    shown = meshserve("route", "show", "echo", router=mesh.router_address)
    assert "stable -> 1" in shown.stdout and "latest ready version" in shown.stdout


def test_route_clear_and_alias_rm(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    for args in (("alias", "set", "echo", "stable", "1"), ("route", "set", "echo", "--default", "stable")):
        done = meshserve(*args, router=mesh.router_address)
        assert done.returncode == 0, done.stderr
    assert echo(stub) == 1
    done = meshserve("route", "clear", "echo", router=mesh.router_address)
    assert done.returncode == 0 and "latest ready version" in done.stdout, done.stderr
    assert echo(stub) == 3 and echo(stub, "stable") == 1  # aliases stay
    assert meshserve("alias", "rm", "echo", "stable", router=mesh.router_address).returncode == 0
    assert current(mesh.etcd_endpoint) == pb.Route(model="echo")  # nothing left: the key is gone
    done = meshserve("alias", "rm", "echo", "stable", router=mesh.router_address)
    assert done.returncode == 1 and "has no alias 'stable'" in done.stderr, done.stderr


def test_unknown_alias_is_not_found_and_names_the_aliases(mesh: LocalMesh,
                                                          stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    update(mesh.router_address, set_alias("stable", "2"))
    error = assert_eventually(lambda: _not_found(stub, "stabel"))
    assert "aliases: stable" in error.details()


def test_refused_changes_leave_the_route_as_it_was(mesh: LocalMesh) -> None:
    update(mesh.router_address, set_alias("stable", "2"))
    before = current(mesh.etcd_endpoint)
    for args, words in (
        (("alias", "set", "echo", "canary", "4"), "version 4 is not ready"),
        (("alias", "set", "echo", "canary", "9"), "no such version or alias"),
        (("route", "set", "echo", "--split", "1=60,2=30"), "sum to 90, not 100"),
        (("route", "set", "echo", "--shadow", "4"), "version 4 is not ready"),
        (("route", "set", "echo", "--split", "1=50,9=50"), "no such version"),
        (("alias", "set", "nosuch", "stable", "1"), "not in the mesh"),
    ):
        done = meshserve(*args, router=mesh.router_address)
        assert done.returncode == 1, (args, done.stdout)
        assert words in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
    with pytest.raises(InvalidArgument):
        routes.parse_split("1=50,1=50")
    with pytest.raises(FailedPrecondition, match="not ready"):
        update(mesh.router_address, set_policy("4", [], "", []))
    # The router checks again what it is sent: not every client is the meshserve command.
    for request, words in (
        (set_policy("", [("1", 60), ("2", 30)]), "sum to 90, not 100"),
        (set_policy("", [("1", 50), ("1", 50)]), "names a version twice"),
        (set_policy("2", [], "x-user"), "sticky assignment only makes sense with a split"),
        (pb.UpdateRouteRequest(model="echo"), "needs a change"),
        (pb.UpdateRouteRequest(model="../echo", set_alias=set_alias("a", "1").set_alias), "invalid model name"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            update(mesh.router_address, request)
    started = time.monotonic()
    done = meshserve("alias", "set", "echo", "canary", "4", "--wait", "1", router=mesh.router_address)
    assert done.returncode == 1 and "version 4 is not ready" in done.stderr, done.stderr
    assert time.monotonic() - started >= 1.0  # waited for version 4, which never becomes ready
    assert current(mesh.etcd_endpoint) == before


def test_weighted_split_within_statistical_bounds(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    update(mesh.router_address, set_policy("", [("1", 70), ("3", 30)], "", []))
    assert_eventually(lambda: _equal(len(_counts(stub, 40).keys() - {1, 3}), 0))
    calls = 600
    counts = _counts(stub, calls)
    assert set(counts) <= {1, 3}
    share = counts[3] / calls
    # p = 0.3, n = 600: one standard deviation is 0.0187; allow 4.5 of them.
    assert 0.216 < share < 0.384, counts


def test_sticky_header_keeps_each_caller_on_one_side(mesh: LocalMesh,
                                                     stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    update(mesh.router_address, set_policy("", [("1", 50), ("2", 50)], "x-user", []))
    assert_eventually(lambda: _equal(echo(stub, metadata=[("x-user", "probe")]) in (1, 2), True))
    sides = {}
    for user in range(40):
        seen = {echo(stub, metadata=[("x-user", f"user-{user}")]) for _ in range(10)}
        assert len(seen) == 1, (user, seen)
        sides[user] = seen.pop()
    assert set(sides.values()) == {1, 2}  # 40 users all on one side: chance 2 ** -39


def test_alias_flip_under_load_drops_no_call(mesh: LocalMesh, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    update(mesh.router_address, set_alias("stable", "1"))
    assert_eventually(lambda: _equal(echo(stub, "stable"), 1))
    answers: list[tuple[float, int]] = []
    failures: list[grpc.RpcError] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                answers.append((time.monotonic(), echo(stub, "stable")))
            except grpc.RpcError as e:
                failures.append(e)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        update(mesh.router_address, set_alias("stable", "2"))
        flipped = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert not failures, failures[:3]
    late_old = [t for t, v in answers if v == 1 and t > flipped + 1.0]
    assert not late_old, f"{len(late_old)} calls still reached version 1 more than 1 s after the flip"
    assert any(v == 2 for _, v in answers)
    assert len(answers) > 50


def test_shadow_calls_keep_responses_and_are_audited(mesh: LocalMesh,
                                                     stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    update(mesh.router_address, set_policy("1", [], "", ["3"]))
    assert_eventually(lambda: _equal(echo(stub), 1))
    request_id = f"shadowed-{time.time_ns()}"
    reply = stub.ModelInfer(build_request("echo", {"x": X}, request_id=request_id), timeout=10)
    assert reply.model_version == "1"

    def audited() -> list[audit_pb2.AuditRecord]:
        records = _query(mesh.audit_address, request_id)
        assert {(r.event.resolved_version, r.event.shadow) for r in records} == {("1", False), ("3", True)}
        return records
    records = assert_eventually(audited, timeout=15)
    shadow = next(r.event for r in records if r.event.shadow)
    assert shadow.parent_request_id == request_id and shadow.status_code == 0


def _query(address: str, request_id: str) -> list[audit_pb2.AuditRecord]:
    with grpc.insecure_channel(address) as channel:
        service = audit_pb2_grpc.AuditServiceStub(channel)
        query = audit_pb2.QueryRequest(model="echo", request_id=request_id, limit=1000)
        return [response.record for response in service.Query(query, timeout=10)]


def _counts(stub: oip_grpc.GRPCInferenceServiceStub, calls: int) -> collections.Counter[int]:
    return collections.Counter(echo(stub) for _ in range(calls))


def _equal(got: object, want: object) -> None:
    assert got == want, got


def _not_found(stub: oip_grpc.GRPCInferenceServiceStub, version: str) -> grpc.RpcError:
    error = rpc_error(lambda: echo(stub, version))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error
    return error


def test_sticky_principal_keeps_each_caller_on_one_side(mesh: LocalMesh,
                                                        stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    tokens = [token for token, _ in (grant(mesh.etcd_endpoint, f"user-{i}", "testers") for i in range(30))]
    allow_role(mesh.etcd_endpoint, "testers", "echo", "infer")
    update(mesh.router_address, set_policy("", [("1", 50), ("2", 50)], "", [], sticky_principal=True))
    assert_eventually(lambda: _equal(echo(stub, metadata=[("authorization", f"Bearer {tokens[0]}")]) in (1, 2), True),
                      retry_on=(AssertionError, grpc.RpcError))
    sides = set()
    for token in tokens:
        seen = {echo(stub, metadata=[("authorization", f"Bearer {token}")]) for _ in range(8)}
        assert len(seen) == 1, seen
        sides |= seen
    assert sides == {1, 2}  # 30 principals all on one side: chance 2 ** -29
    shown = meshserve("route", "show", "echo", router=mesh.router_address)
    assert "principal" in shown.stdout
