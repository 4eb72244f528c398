"""JWT key sets refreshed without a restart: a key file that changes, and a JWKS URL on a loopback HTTP server."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e.helpers import assert_eventually
from e2e_auth.helpers import JwksServer
from jwt.algorithms import RSAAlgorithm
from pydantic import ValidationError

from meshserve.auth.access import Access, Principal
from meshserve.auth.jwt import JwtVerifier
from meshserve.auth.jwt_settings import verifier_from_settings
from meshserve.auth.keysets import FileKeys, KeySet
from meshserve.errors import Unauthenticated
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.services.router.settings import RouterSettings

ISSUER = "https://issuer.example"
AUDIENCE = "meshserve"
OLD = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEW = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RULES = {"r1": auth_pb2.AccessRule(id="r1", principal="alice", models=["iris"], actions=["infer"])}


def jwks(*keys: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    return {"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid} for kid, key in keys]}


def replace(path: Path, document: dict[str, Any] | bytes) -> None:
    """Write the key set as an issuer's tooling would: aside, then renamed over the old file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    os.replace(tmp, path)


def token(kid: str, key: rsa.RSAPrivateKey, sub: str = "alice") -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300}, key,
                      algorithm="RS256", headers={"kid": kid})


def refused(verifier: JwtVerifier, credential: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(credential)
    assert len(caught.value.message) < 400, caught.value.message
    return caught.value.message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    replace(path, jwks(("old", OLD)))
    return path


def file_verifier(path: Path, clock: Clock, *, refresh_s: float = 60, min_refresh_s: float = 10) -> JwtVerifier:
    key_set = KeySet(FileKeys(path), refresh_s=refresh_s, min_refresh_s=min_refresh_s, clock=clock)
    key_set.load()
    return JwtVerifier(key_set, issuer=ISSUER, audience=AUDIENCE)


# -- a key file ----------------------------------------------------------------------------


def test_a_token_signed_with_a_key_added_to_the_file_is_accepted_by_its_first_call(key_file: Path) -> None:
    verifier = file_verifier(key_file, Clock())
    assert verifier.verify(token("old", OLD)).name == "alice"
    replace(key_file, jwks(("old", OLD), ("new", NEW)))
    assert verifier.verify(token("new", NEW)).name == "alice"  # an unknown kid: the file is read again at once
    assert verifier.key_set.reads == 2 and verifier.key_set.generation == 2


def test_a_token_with_an_unknown_kid_reads_the_file_once_not_once_per_call(key_file: Path) -> None:
    clock = Clock()
    verifier = file_verifier(key_file, clock, min_refresh_s=10)
    for _ in range(50):
        assert "not in the router's key set" in refused(verifier, token(uuid.uuid4().hex, NEW))
    assert verifier.key_set.reads == 2  # the start-up read and one refresh
    clock.now += 10
    refused(verifier, token(uuid.uuid4().hex, NEW))
    assert verifier.key_set.reads == 3


def test_a_key_removed_from_the_file_is_refused_after_the_next_scheduled_read(key_file: Path) -> None:
    clock = Clock()
    verifier = file_verifier(key_file, clock, refresh_s=5)
    access = Access({}, RULES, lambda: 0, jwt=verifier)
    old = (("authorization", f"Bearer {token('old', OLD)}"),)
    assert access.authenticate(old) == Principal("alice")
    replace(key_file, jwks(("new", NEW)))
    assert access.authenticate(old) == Principal("alice")  # cached, and not read again before the schedule
    clock.now += 5
    with pytest.raises(Unauthenticated, match="key id 'old' is not in the router's key set"):
        access.authenticate(old)  # the cached principal went with the key set it was checked against
    assert verifier.verify(token("new", NEW)).name == "alice"


def test_a_half_written_file_keeps_the_keys_held(key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    verifier = file_verifier(key_file, clock, min_refresh_s=0)
    whole = json.dumps(jwks(("old", OLD), ("new", NEW))).encode()
    with caplog.at_level(logging.WARNING, logger="meshserve.auth.keysets"):
        key_file.write_bytes(whole[: len(whole) // 2])
        refused(verifier, token("new", NEW))
        assert verifier.verify(token("old", OLD)).name == "alice"
        clock.now += 61
        assert verifier.verify(token("old", OLD)).name == "alice"
    assert [r.getMessage() for r in caplog.records if "keeping the 1 JWT keys held" in r.getMessage()]
    key_file.write_bytes(whole)  # the writer finishes
    assert verifier.verify(token("new", NEW)).name == "alice"


# -- a JWKS URL ----------------------------------------------------------------------------


def url_verifier(url: str, *, refresh_s: float = 300, min_refresh_s: float = 30) -> JwtVerifier:
    verifier = verifier_from_settings(RouterSettings(jwt_jwks_url=url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
                                                     jwt_refresh_s=refresh_s, jwt_refresh_min_s=min_refresh_s))
    assert verifier is not None
    return verifier


def accepted(verifier: JwtVerifier, credential: str) -> None:
    assert verifier.verify(credential).name == "alice"


def test_a_new_key_published_at_the_url_is_fetched_on_its_unknown_kid() -> None:
    with JwksServer(jwks(("old", OLD))) as issuer:
        verifier = url_verifier(issuer.url, min_refresh_s=0.2)
        assert issuer.fetches == 1  # at start-up
        accepted(verifier, token("old", OLD))
        issuer.document = jwks(("old", OLD), ("new", NEW))
        refused(verifier, token("new", NEW))  # not waited for: the fetch goes on in the background
        assert_eventually(lambda: accepted(verifier, token("new", NEW)), retry_on=(Unauthenticated,))
        assert 2 <= issuer.fetches <= 3


def test_unknown_kids_fetch_the_url_once_not_once_per_call() -> None:
    with JwksServer(jwks(("old", OLD))) as issuer:
        verifier = url_verifier(issuer.url, min_refresh_s=30)
        for _ in range(50):
            refused(verifier, token(uuid.uuid4().hex, NEW))
        assert_eventually(lambda: _fetched(issuer, 2))
        time.sleep(0.3)
        assert issuer.fetches == 2  # one refresh for the fifty calls
        accepted(verifier, token("old", OLD))


def _fetched(issuer: JwksServer, n: int) -> None:
    assert issuer.fetches == n


def test_a_slow_issuer_never_holds_a_call() -> None:
    with JwksServer(jwks(("old", OLD))) as issuer:
        verifier = url_verifier(issuer.url, min_refresh_s=0)
        issuer.delay_s = 2.0
        issuer.document = jwks(("old", OLD), ("new", NEW))
        started = time.monotonic()
        message = refused(verifier, token("new", NEW))
        assert "being fetched again" in message and "retry in a moment" in message, message
        accepted(verifier, token("old", OLD))  # known keys are checked meanwhile
        assert time.monotonic() - started < 0.5
        assert_eventually(lambda: accepted(verifier, token("new", NEW)), timeout=10, retry_on=(Unauthenticated,))


def test_an_unreachable_url_at_start_up_leaves_the_service_up_and_refuses_jwts() -> None:
    with JwksServer(jwks(("old", OLD))) as issuer:
        url = issuer.url
    verifier = url_verifier(url, min_refresh_s=30)  # nothing listens there now
    assert verifier.keys == ()
    assert url in refused(verifier, token("old", OLD))
    assert_eventually(lambda: _not_fetching(verifier))
    assert "not read yet" in refused(verifier, token("old", OLD))  # and not fetched again before 30 s


def _not_fetching(verifier: JwtVerifier) -> None:
    assert not verifier.key_set.fetching


def test_jwks_url_settings() -> None:
    with pytest.raises(ValidationError, match="either --jwt-keys or --jwt-jwks-url"):
        RouterSettings(jwt_keys=Path("k.json"), jwt_jwks_url="https://login.example/jwks", jwt_issuer=ISSUER,
                       jwt_audience=AUDIENCE)
    with pytest.raises(ValidationError, match="--jwt-jwks-url needs --jwt-issuer and --jwt-audience"):
        RouterSettings(jwt_jwks_url="https://login.example/jwks")
    with pytest.raises(ValidationError, match="use https://"):
        RouterSettings(jwt_jwks_url="http://login.example/jwks", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    with pytest.raises(ValidationError, match="not an https:// URL"):
        RouterSettings(jwt_jwks_url="file:///etc/passwd", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert RouterSettings(jwt_jwks_url="https://login.example/jwks", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
