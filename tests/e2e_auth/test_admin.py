"""Who may change routes, aliases and pipelines: the router outside dev mode, with real etcd, runtime and audit.

Changes go through the router only (``meshserve alias``, ``route`` and ``pipeline`` call it),
which needs the ``admin`` action on the model or pipeline name.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e.helpers import assert_eventually, rpc_error

from e2e_auth.helpers import keyed_mesh, meshserve, new_key
from meshserve import routes
from meshserve.local.mesh import LocalMesh
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as pb
from meshserve.protos.meshserve.registry.v1.registry_pb2_grpc import RegistryServiceStub
from meshserve.registry import keys
from meshserve.registry.etcd import connect

PIPELINE = """
name: {name}
inputs: [{{name: text, datatype: BYTES, shape: [-1]}}]
steps: [{{name: features, model: text-features, inputs: {{text: inputs.text}}}}]
outputs: [{{name: pos, from: features.pos}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with keyed_mesh(tmp_path_factory.mktemp("admin-mesh")) as running:
        yield running


def allow(mesh: LocalMesh, principal: str, models: str, actions: str) -> None:
    done = meshserve(mesh, "policy", "allow", "--principal", principal, "--models", models, "--actions", actions)
    assert done.returncode == 0, done.stderr


def pipeline_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(PIPELINE.format(name=name))
    return str(path)


def stored(mesh: LocalMesh) -> tuple[tuple[pb.Route, int], bytes | None]:
    """iris's route with its key's revision, and the stored pipeline 'words', straight from etcd."""
    async def read() -> tuple[tuple[pb.Route, int], bytes | None]:
        client = await connect(mesh.etcd_endpoint, wait=3, credentials=mesh.etcd_credentials("operator"))
        try:
            found = await client.get(keys.pipeline_key("words"))
            return await routes.read_route(client, "iris"), found.value if found is not None else None
        finally:
            await client.close()
    return asyncio.run(read())


@pytest.fixture(scope="module")
def auditor(mesh: LocalMesh) -> str:
    """A key that may read the whole audit trail."""
    key = new_key(mesh, "auditor")
    allow(mesh, "auditor", "*", "audit:read")
    return key


def audited(mesh: LocalMesh, auditor: str, request_id: str) -> audit_pb2.CallEvent:
    def find() -> audit_pb2.CallEvent:
        with grpc.insecure_channel(mesh.audit_address) as channel:
            found = [r.record.event for r in audit_pb2_grpc.AuditServiceStub(channel).Query(
                audit_pb2.QueryRequest(request_id=request_id, limit=10), timeout=10,
                metadata=[("authorization", f"Bearer {auditor}")])]
        assert found, request_id
        return found[0]
    return assert_eventually(find, timeout=15, retry_on=(AssertionError, grpc.RpcError))


def set_alias(mesh: LocalMesh, key: str, request_id: str) -> pb.UpdateRouteResponse:
    """`meshserve alias set iris stable 1` as a gRPC call with a request id of ours, to find its audit event."""
    request = pb.UpdateRouteRequest(model="iris", set_alias=pb.UpdateRouteRequest.SetAlias(alias="stable", version="1"))
    metadata = [("x-request-id", request_id)] + ([("authorization", f"Bearer {key}")] if key else [])
    with grpc.insecure_channel(mesh.router_address) as channel:
        response: pb.UpdateRouteResponse = RegistryServiceStub(channel).UpdateRoute(request, timeout=10,
                                                                                     metadata=metadata)
        return response


def test_callers_without_a_key_are_unauthenticated(mesh: LocalMesh, tmp_path: Path, auditor: str) -> None:
    before = stored(mesh)
    for args in (("alias", "set", "iris", "stable", "1"), ("route", "set", "iris", "--default", "1"),
                 ("route", "clear", "iris"), ("pipeline", "apply", pipeline_file(tmp_path, "words")),
                 ("pipeline", "rm", "words")):
        done = meshserve(mesh, *args)
        assert done.returncode == 1, (args, done.stdout)
        assert "UNAUTHENTICATED" in done.stderr and "API key" in done.stderr, (args, done.stderr)
        assert "MESHSERVE_API_KEY" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert stored(mesh) == before
    request_id = f"anon-admin-{time.time_ns()}"
    error = rpc_error(lambda: set_alias(mesh, "", request_id))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    event = audited(mesh, auditor, request_id)
    assert (event.method, event.model, event.principal) == ("UpdateRoute", "iris", "anonymous")
    assert event.status_code == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_a_key_without_admin_is_permission_denied_and_nothing_changes(mesh: LocalMesh, tmp_path: Path,
                                                                      auditor: str) -> None:
    mallory = new_key(mesh, "mallory")
    allow(mesh, "mallory", "*", "infer,metadata")  # may call everything, change nothing
    before = stored(mesh)
    for args, what in ((("alias", "set", "iris", "stable", "1"), "change the route of 'iris'"),
                       (("route", "set", "iris", "--default", "1"), "change the route of 'iris'"),
                       (("pipeline", "apply", pipeline_file(tmp_path, "words")), "apply the pipeline 'words'")):
        done = assert_eventually(lambda args=args: _failed(meshserve(mesh, *args, key=mallory), "PERMISSION_DENIED"))
        assert f"principal 'mallory' may not {what}" in done.stderr, done.stderr
        assert "--actions admin" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert stored(mesh) == before
    shown = meshserve(mesh, "route", "show", key=mallory)  # reading needs metadata only
    assert shown.returncode == 0, shown.stderr
    request_id = f"denied-admin-{time.time_ns()}"
    assert rpc_error(lambda: set_alias(mesh, mallory, request_id)).code() == grpc.StatusCode.PERMISSION_DENIED
    event = audited(mesh, auditor, request_id)
    assert (event.method, event.principal) == ("UpdateRoute", "mallory")
    assert event.status_code == grpc.StatusCode.PERMISSION_DENIED.value[0]


def test_a_rule_granting_admin_lets_changes_through(mesh: LocalMesh, tmp_path: Path, auditor: str) -> None:
    alice = new_key(mesh, "alice")
    allow(mesh, "alice", "iris", "admin")
    done = assert_eventually(lambda: _succeeded(meshserve(mesh, "alias", "set", "iris", "stable", "1", key=alice)))
    assert "stable -> 1" in done.stdout
    done = meshserve(mesh, "route", "set", "iris", "--default", "stable", key=alice)
    assert done.returncode == 0, done.stderr
    route, _ = stored(mesh)[0]
    assert (dict(route.aliases), route.default_version) == ({"stable": "1"}, "stable")
    # admin on iris is not admin on anything else
    refused = meshserve(mesh, "alias", "set", "iris-rf", "stable", "1", key=alice)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr, refused.stderr
    request_id = f"admin-{time.time_ns()}"
    assert set_alias(mesh, alice, request_id).route.aliases["stable"] == "1"
    event = audited(mesh, auditor, request_id)
    assert (event.method, event.model, event.principal, event.status_code) == ("UpdateRoute", "iris", "alice", 0)
    assert meshserve(mesh, "route", "clear", "iris", key=alice).returncode == 0
    assert meshserve(mesh, "alias", "rm", "iris", "stable", key=alice).returncode == 0
    assert stored(mesh)[0] == (pb.Route(model="iris"), 0)


def test_a_pipeline_needs_admin_on_its_name_and_infer_on_its_steps(mesh: LocalMesh, tmp_path: Path) -> None:
    bob = new_key(mesh, "bob")
    allow(mesh, "bob", "words", "admin,infer,metadata")
    file = pipeline_file(tmp_path, "words")
    done = assert_eventually(lambda: _failed(meshserve(mesh, "pipeline", "apply", file, key=bob),
                                             "PERMISSION_DENIED"))
    assert "may not infer on 'text-features'" in done.stderr, done.stderr
    assert stored(mesh)[1] is None
    allow(mesh, "bob", "text-features", "infer")
    done = assert_eventually(lambda: _succeeded(meshserve(mesh, "pipeline", "apply", file, key=bob)))
    assert "features" in done.stdout and stored(mesh)[1] is not None
    shown = meshserve(mesh, "pipeline", "show", key=bob)
    assert shown.returncode == 0 and "words" in shown.stdout, shown.stderr
    eve = new_key(mesh, "eve")
    assert_eventually(lambda: _failed(meshserve(mesh, "pipeline", "rm", "words", key=eve), "PERMISSION_DENIED"))
    done = meshserve(mesh, "pipeline", "rm", "words", key=bob)
    assert done.returncode == 0 and "removed" in done.stdout, done.stderr
    assert stored(mesh)[1] is None


def _failed(done: subprocess.CompletedProcess[str], code: str) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 1 and code in done.stderr, done.stderr
    return done


def _succeeded(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr
    return done
