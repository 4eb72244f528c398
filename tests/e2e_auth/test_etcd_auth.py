"""Outside dev mode etcd has authentication on: no anonymous writes, and each component writes only its key ranges.

Real etcd from a mesh started like ``meshserve up --no-dev-mode`` (plain text: passwords;
under TLS: users named by the mesh certificates). The attack of the hardening issue, an
anonymous ``meshserve policy allow --principal anonymous ...`` against etcd's port, is
refused and opens nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aetcd
import grpc
import numpy as np
import pytest
from e2e.helpers import ROOT, rpc_error

from e2e_auth.helpers import MESHSERVE, keyed_mesh
from meshserve import tls
from meshserve.errors import PermissionDenied, Unauthenticated
from meshserve.local.etcd import EtcdServer
from meshserve.local.mesh import LocalMesh, MeshConfig
from meshserve.oip import build_request
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.registry import keys
from meshserve.registry.etcd import connect
from meshserve.registry.etcd_token import EtcdCredentials
from meshserve.tls import certs

IRIS = {"features": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with keyed_mesh(tmp_path_factory.mktemp("etcd-auth-mesh")) as running:
        yield running


def _writes(endpoint: str, credentials: EtcdCredentials | None, candidates: list[bytes],
            mesh_tls: tls.MeshTls | None = None) -> dict[bytes, bool]:
    """For each key, whether ``credentials`` (or the certificate of ``mesh_tls``) may write it (the write is undone)."""
    async def run() -> dict[bytes, bool]:
        client = await connect(endpoint, wait=5, credentials=credentials, mesh_tls=mesh_tls)
        allowed = {}
        try:
            for key in candidates:
                try:
                    await client.put(key, b"probe")
                except aetcd.ClientError as e:
                    assert "permission denied" in str(e), e
                    allowed[key] = False
                else:
                    await client.delete(key)
                    allowed[key] = True
        finally:
            await client.close()
        return allowed
    return asyncio.run(run())


def _candidates(mesh: LocalMesh) -> dict[str, bytes]:
    ids = mesh.runtime_ids()
    return {
        "api key": keys.api_key_key("probe"), "access rule": keys.access_rule_key("probe"),
        "route": keys.route_key("probe"), "pipeline": keys.pipeline_key("probe"),
        "claim": keys.placing_key("probe", "1"), "catalog": keys.catalog_key("probe"),
        "own runtime": keys.runtime_key(ids["runtime"]),
        "own placement": keys.placement_key("probe", "1", ids["runtime"]),
        "other runtime": keys.runtime_key("someone-else"),
        "other placement": keys.placement_key("probe", "1", "someone-else"),
    }


EXPECTED = {  # user -> the candidates it may write
    "operator": {"api key", "access rule", "route", "pipeline", "claim", "catalog", "own runtime", "own placement",
                 "other runtime", "other placement"},
    "router": {"route", "pipeline", "claim"},
    "audit": set(),
    "runtime": {"own runtime", "own placement"},
}


def test_anonymous_clients_cannot_touch_etcd(mesh: LocalMesh) -> None:
    with pytest.raises(Unauthenticated, match="authentication on"):
        asyncio.run(connect(mesh.etcd_endpoint, wait=2))
    # The attack: open everything to anonymous callers straight through etcd, with no etcd user.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_ETCD_")}
    env["MESHSERVE_ETCD"] = mesh.etcd_endpoint
    done = subprocess.run([MESHSERVE, "policy", "allow", "--principal", "anonymous", "--models", "*",
                           "--actions", "infer,metadata,load,admin,audit:read"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode != 0
    assert "authentication on" in done.stderr and mesh.etcd_endpoint in done.stderr
    # It opened nothing: an anonymous call through the router is still refused.
    with grpc.insecure_channel(mesh.router_address) as channel:
        error = rpc_error(lambda: oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            build_request("iris", IRIS), timeout=5))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("user", sorted(EXPECTED))
def test_each_component_writes_only_its_own_key_ranges(mesh: LocalMesh, user: str) -> None:
    candidates = _candidates(mesh)
    allowed = _writes(mesh.etcd_endpoint, mesh.etcd_credentials(user), list(candidates.values()))
    may = {name for name, key in candidates.items() if allowed[key]}
    assert may == EXPECTED[user]


def test_a_wrong_password_is_refused_at_start_up(mesh: LocalMesh) -> None:
    with pytest.raises(Unauthenticated, match="invalid user ID or password"):
        asyncio.run(connect(mesh.etcd_endpoint, wait=2, credentials=EtcdCredentials("router", "guess")))


def test_under_tls_etcd_users_are_the_mesh_certificates(tmp_path: Path) -> None:
    config = MeshConfig(model_repository=ROOT / "examples" / "models", dev_mode=False, tls=True, audit=False,
                        r_runtime=False, router_port=0, etcd_port=0, data_dir=tmp_path)
    with LocalMesh(config) as running:
        candidates = _candidates(running)
        for user in ("operator", "router", "runtime"):
            allowed = _writes(running.etcd_endpoint, None, list(candidates.values()),
                              tls.from_paths(*running.tls_files(user)))
            assert {name for name, key in candidates.items() if allowed[key]} == EXPECTED[user], user
        # A certificate of the mesh's CA that names no etcd user gets nothing.
        certs.issue(running.tls_dir, "stranger")
        with pytest.raises(PermissionDenied, match="does not let this service read"):
            asyncio.run(connect(running.etcd_endpoint, wait=2, mesh_tls=tls.from_paths(*running.tls_files("stranger"))))


def test_meshserve_secrets_sets_up_users_on_an_etcd_it_did_not_start(private_etcd: EtcdServer, tmp_path: Path) -> None:
    """What a Compose or Kubernetes init job runs: the same users and ranges, passwords made in a folder."""
    command = [MESHSERVE, "secrets", "etcd-users", "--etcd", private_etcd.endpoint, "--root-password-file",
               str(tmp_path / "root.password"), "--password-dir", str(tmp_path), "--user", "router=router",
               "--user", "runtime-a=runtime:python-a"]
    for _ in range(2):  # idempotent: a second run finds everything made
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "etcd-router.password").stat().st_mode & 0o077 == 0
    own, other = keys.runtime_key("python-a"), keys.runtime_key("python-b")
    runtime = EtcdCredentials.from_file("runtime-a", tmp_path / "etcd-runtime-a.password")
    assert _writes(private_etcd.endpoint, runtime, [own, other]) == {own: True, other: False}
    bad = subprocess.run([*command[:-4], "--user", "router=superuser"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode != 0 and "no etcd role 'superuser'" in bad.stderr
