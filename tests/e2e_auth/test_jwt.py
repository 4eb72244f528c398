"""JWT bearer tokens through a real router (outside dev mode), Python runtime and etcd."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, copy_model, router_process, rpc_error, runtime_process
from jwt.algorithms import RSAAlgorithm

from e2e_auth.helpers import allow, put
from meshserve.auth import apikeys
from meshserve.local.etcd import EtcdServer
from meshserve.local.process import ManagedProcess
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc
from meshserve.registry import keys

ISSUER = "https://login.e2e.example"
AUDIENCE = "meshserve-e2e"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IRIS = build_request("iris", {"features": IRIS_ROWS[:1]})
Router = tuple[ManagedProcess, oip_grpc.GRPCInferenceServiceStub]


def token(sub: str, *, key: Any = KEY, kid: str = "e2e-1", exp_in_s: int = 300, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + exp_in_s, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def bearer(credential: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {credential}"),)


@pytest.fixture(scope="module")
def key_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "e2e-1"}]}))
    return path


@pytest.fixture(scope="module")
def router(etcd: EtcdServer, key_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """A Python runtime serving iris, and a router that requires a key or a JWT (no dev mode)."""
    repository = tmp_path_factory.mktemp("jwt-models")
    copy_model(EXAMPLES / "iris", repository, "iris")
    folder = tmp_path_factory.mktemp("jwt-mesh")
    jwt_flags = ["--no-dev-mode", "--jwt-keys", str(key_set), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]
    with runtime_process(repository, etcd.endpoint, folder), \
            router_process(etcd.endpoint, folder, *jwt_flags) as (proc, address), \
            grpc.insecure_channel(address) as channel:
        yield proc, oip_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def stub(router: Router) -> oip_grpc.GRPCInferenceServiceStub:
    return router[1]


def infer(stub: oip_grpc.GRPCInferenceServiceStub, credential: str) -> dict[str, Any]:
    return decode_response(stub.ModelInfer(IRIS, timeout=10, metadata=bearer(credential)))


def refused(call: Callable[[], object], code: grpc.StatusCode, words: str) -> grpc.RpcError:
    error = rpc_error(call)
    assert error.code() == code, error
    assert words in error.details(), error.details()
    return error


def test_the_router_says_which_issuer_it_accepts(router: Router) -> None:
    logged = router[0].log_path.read_text()
    assert f"accepting JWT bearer tokens from issuer '{ISSUER}' for audience '{AUDIENCE}'" in logged


def test_a_valid_jwt_may_infer_beside_api_keys(etcd: EtcdServer, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    allow(etcd.endpoint, "jwt-e2e-alice", principal="jwt-alice")
    outputs = assert_eventually(lambda: infer(stub, token("jwt-alice")), timeout=60, retry_on=(grpc.RpcError,))
    assert outputs  # iris answered
    api_key, record = apikeys.create("jwt-e2e-keyholder", [])
    put(etcd.endpoint, keys.api_key_key(record.key_id), record)
    allow(etcd.endpoint, "jwt-e2e-keyholder", principal="jwt-e2e-keyholder")
    assert assert_eventually(lambda: infer(stub, api_key), retry_on=(grpc.RpcError,))


def test_roles_in_the_jwt_match_role_rules(etcd: EtcdServer, stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    allow(etcd.endpoint, "jwt-e2e-scorers", role="jwt-scorers")
    assert assert_eventually(lambda: infer(stub, token("jwt-carol", roles=["jwt-scorers"])), timeout=60,
                             retry_on=(grpc.RpcError,))
    assert assert_eventually(lambda: infer(stub, token("jwt-dave", roles="other jwt-scorers")),
                             retry_on=(grpc.RpcError,))


def test_expired_or_wrongly_signed_jwts_are_unauthenticated(etcd: EtcdServer,
                                                            stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    allow(etcd.endpoint, "jwt-e2e-erin", principal="jwt-erin")
    assert_eventually(lambda: infer(stub, token("jwt-erin")), timeout=60, retry_on=(grpc.RpcError,))
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    refused(lambda: infer(stub, token("jwt-erin", exp_in_s=-120)), unauthenticated, "JWT expired at")
    refused(lambda: infer(stub, token("jwt-erin", key=STRANGER)), unauthenticated, "signature does not verify")
    refused(lambda: infer(stub, token("jwt-erin", kid="rotated")), unauthenticated, "key id 'rotated' is not in")
    refused(lambda: infer(stub, token("jwt-erin", aud="another-mesh")), unauthenticated, f"expected '{AUDIENCE}'")
    refused(lambda: infer(stub, "not-a-key"), unauthenticated, "'Bearer <JWT>'")


def test_a_jwt_principal_without_a_rule_is_permission_denied(etcd: EtcdServer,
                                                             stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    allow(etcd.endpoint, "jwt-e2e-frank", principal="jwt-frank")
    assert_eventually(lambda: infer(stub, token("jwt-frank")), timeout=60, retry_on=(grpc.RpcError,))  # iris is up
    refused(lambda: infer(stub, token("jwt-mallory", roles=["nobody"])), grpc.StatusCode.PERMISSION_DENIED,
            "principal 'jwt-mallory' may not infer on 'iris'")


def test_a_router_refuses_to_start_with_half_a_jwt_configuration(key_set: Path, tmp_path: Path) -> None:
    half = ["--jwt-keys", str(key_set), "--jwt-issuer", ISSUER]
    gone = ["--jwt-keys", str(tmp_path / "gone.json"), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]
    for flags, words in ((half, "needs --jwt-issuer and --jwt-audience"), (gone, "cannot read the JWT key set")):
        done = subprocess.run([sys.executable, "-m", "meshserve.services.router", "--port", "0",
                               "--etcd-endpoint", "127.0.0.1:1", "--etcd-wait-s", "1", *flags],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and words in done.stderr, done.stderr
