"""JWT key sets rotated while routers run (outside dev mode): a key file replaced, and a JWKS URL that changes.

A real etcd, a Python runtime serving iris and two routers: one reading the issuer's keys
from a file, one fetching them from a JWKS URL served by a loopback HTTP server.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e.helpers import EXAMPLES, IRIS_ROWS, assert_eventually, copy_model, router_process, rpc_error, runtime_process
from jwt.algorithms import RSAAlgorithm

from e2e_auth.helpers import JwksServer, allow
from meshserve.local.etcd import EtcdServer
from meshserve.oip import build_request, decode_response
from meshserve.protos.inference import grpc_service_pb2_grpc as oip_grpc

ISSUER = "https://login.rotation.example"
AUDIENCE = "meshserve-rotation"
FIRST = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECOND = rsa.generate_private_key(public_exponent=65537, key_size=2048)
IRIS = build_request("iris", {"features": IRIS_ROWS[:1]})
PRINCIPAL = "jwt-rotation-alice"


def jwks(*keys: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    return {"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid} for kid, key in keys]}


def token(kid: str, key: rsa.RSAPrivateKey) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": PRINCIPAL, "iat": now, "exp": now + 300}, key,
                      algorithm="RS256", headers={"kid": kid})


def infer(stub: oip_grpc.GRPCInferenceServiceStub, credential: str) -> dict[str, Any]:
    return decode_response(stub.ModelInfer(IRIS, timeout=10, metadata=(("authorization", f"Bearer {credential}"),)))


def unauthenticated(stub: oip_grpc.GRPCInferenceServiceStub, credential: str) -> str:
    error = rpc_error(lambda: infer(stub, credential))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    return str(error.details())


def jwt_flags(*flags: str) -> list[str]:
    return ["--no-dev-mode", "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE, *flags]


@pytest.fixture(scope="module")
def mesh(etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    repository = tmp_path_factory.mktemp("jwt-rotation-models")
    copy_model(EXAMPLES / "iris", repository, "iris")
    folder = tmp_path_factory.mktemp("jwt-rotation")
    key_file = folder / "issuer-jwks.json"
    key_file.write_text(json.dumps(jwks(("first", FIRST))))
    allow(etcd.endpoint, "jwt-rotation-alice", principal=PRINCIPAL)
    with JwksServer(jwks(("first", FIRST))) as issuer, runtime_process(repository, etcd.endpoint, folder), \
            router_process(etcd.endpoint, folder, *jwt_flags("--jwt-keys", str(key_file), "--jwt-refresh-s", "1",
                                                            "--jwt-refresh-min-s", "1")) as (_, by_file), \
            router_process(etcd.endpoint, folder, *jwt_flags("--jwt-jwks-url", issuer.url,
                                                            "--jwt-refresh-min-s", "2")) as (_, by_url), \
            grpc.insecure_channel(by_file) as file_channel, grpc.insecure_channel(by_url) as url_channel:
        file_stub = oip_grpc.GRPCInferenceServiceStub(file_channel)
        url_stub = oip_grpc.GRPCInferenceServiceStub(url_channel)
        for stub in (file_stub, url_stub):  # iris is up, the rule is seen
            assert_eventually(lambda s=stub: infer(s, token("first", FIRST)), timeout=60, retry_on=(grpc.RpcError,))
        yield {"key_file": key_file, "issuer": issuer, "file": file_stub, "url": url_stub}


def test_a_key_added_to_the_file_is_accepted_at_once_and_a_removed_one_refused_soon(mesh: dict[str, Any]) -> None:
    stub, key_file = mesh["file"], mesh["key_file"]
    tmp = Path(f"{key_file}.tmp")
    tmp.write_text(json.dumps(jwks(("first", FIRST), ("second", SECOND))))
    os.replace(tmp, key_file)  # as an issuer's tooling would: aside, then renamed
    assert infer(stub, token("second", SECOND))  # its first call: the unknown kid read the file again
    tmp.write_text(json.dumps(jwks(("second", SECOND))))
    os.replace(tmp, key_file)
    # Within the refresh interval (1 s here) the first key is gone, cached principals with it.
    details = assert_eventually(lambda: unauthenticated(stub, token("first", FIRST)), timeout=10)
    assert "key id 'first' is not in the router's key set" in details, details
    assert infer(stub, token("second", SECOND))


def test_made_up_kids_fetch_the_jwks_url_once_not_once_per_call(mesh: dict[str, Any]) -> None:
    stub, issuer = mesh["url"], mesh["issuer"]
    time.sleep(2.1)  # past the refresh limit of anything before
    before = issuer.fetches
    for _ in range(30):
        unauthenticated(stub, token(uuid.uuid4().hex, SECOND))
    time.sleep(0.5)
    assert issuer.fetches == before + 1, (before, issuer.fetches)
    assert infer(stub, token("first", FIRST))  # known keys were never in question


def test_a_key_published_at_the_url_is_accepted_after_the_set_changes(mesh: dict[str, Any]) -> None:
    stub, issuer = mesh["url"], mesh["issuer"]
    before = issuer.fetches
    issuer.document = jwks(("first", FIRST), ("second", SECOND))
    assert_eventually(lambda: infer(stub, token("second", SECOND)), timeout=15, retry_on=(grpc.RpcError,))
    assert issuer.fetches - before <= 4  # one fetch per refresh limit (2 s), however often the caller retried
    assert infer(stub, token("first", FIRST))
