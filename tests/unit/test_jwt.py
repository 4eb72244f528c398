"""JWT bearer tokens: the verifier over JWKS and PEM key files, and Access caching JWT principals."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from meshserve.auth.access import Access, Principal
from meshserve.auth.jwt import JwtVerifier, KeySetError, load_keys
from meshserve.auth.jwt_settings import verifier_from_settings
from meshserve.errors import MAX_MESSAGE_CHARS, Unauthenticated
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.services.router.settings import RouterSettings

ISSUER = "https://issuer.example"
AUDIENCE = "meshserve"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_jwks(path: Path) -> Path:
    keys = [{**RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig"},
            {**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "ec-1"}]
    path.write_text(json.dumps({"keys": keys}))
    return path


@pytest.fixture
def jwks(tmp_path: Path) -> Path:
    return write_jwks(tmp_path / "jwks.json")


@pytest.fixture
def verifier(jwks: Path) -> JwtVerifier:
    return JwtVerifier.from_file(jwks, issuer=ISSUER, audience=AUDIENCE)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "roles": ["scoring", "analysts"],
                            "iat": now, "exp": now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def rsa_token(kid: str | None = "rsa-1", key: Any = RSA_KEY, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="RS256", headers={"kid": kid} if kid else None)


def refused(verifier: JwtVerifier, token: str, *words: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    message = caught.value.message
    assert all(w in message for w in words), message
    assert len(message) < 400, message
    return message


def test_a_valid_token_names_its_principal_and_roles(verifier: JwtVerifier) -> None:
    assert verifier.verify(rsa_token()) == Principal("alice", ("scoring", "analysts"))
    ec_token = jwt.encode(claims(roles="a b  c"), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(ec_token) == Principal("alice", ("a", "b", "c"))
    assert verifier.verify(rsa_token(roles=None)) == Principal("alice")
    principal, expires = verifier.verify_until(rsa_token(exp=2_000_000_000))
    assert (principal.name, expires) == ("alice", 2_000_000_000.0)


def test_a_token_without_a_kid_is_checked_against_the_keys_of_its_algorithm(verifier: JwtVerifier) -> None:
    assert verifier.verify(rsa_token(kid=None)).name == "alice"
    refused(verifier, rsa_token(kid=None, key=OTHER_RSA_KEY), "signature does not verify", ISSUER)


def test_a_pem_public_key_and_custom_claims(tmp_path: Path) -> None:
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(public_pem(EC_KEY))
    verifier = JwtVerifier.from_file(pem, issuer=ISSUER, audience=AUDIENCE, principal_claim="email",
                                     roles_claim="realm_access.roles")
    token = jwt.encode(claims(email="bob@example.com", realm_access={"roles": ["ops"]}), EC_KEY, algorithm="ES256")
    assert verifier.verify(token) == Principal("bob@example.com", ("ops",))
    okp = ed25519.Ed25519PrivateKey.generate()
    pem.write_bytes(public_pem(okp))
    eddsa = JwtVerifier.from_file(pem, issuer=ISSUER, audience=AUDIENCE)
    assert eddsa.verify(jwt.encode(claims(), okp, algorithm="EdDSA")).name == "alice"


def test_expired_tokens_say_when(verifier: JwtVerifier) -> None:
    message = refused(verifier, rsa_token(exp=int(time.time()) - 120), "JWT expired at", "UTC", "s ago", ISSUER)
    assert time.strftime("%Y-%m-%d", time.gmtime(time.time() - 120)) in message
    assert verifier.verify(rsa_token(exp=int(time.time()) - 10)).name == "alice"  # within the leeway


def test_tokens_not_yet_valid(verifier: JwtVerifier) -> None:
    refused(verifier, rsa_token(nbf=int(time.time()) + 600), "not valid before", "clocks")
    refused(verifier, rsa_token(iat=int(time.time()) + 600), "not valid before")
    assert verifier.verify(rsa_token(nbf=int(time.time()) + 10)).name == "alice"  # within the leeway


def test_wrong_or_missing_issuer_and_audience_name_the_expected_one(verifier: JwtVerifier) -> None:
    refused(verifier, rsa_token(iss="https://evil.example"), "'https://evil.example'", f"expected {ISSUER!r}")
    refused(verifier, rsa_token(iss=None), "no 'iss' claim", ISSUER)
    refused(verifier, rsa_token(aud="other-mesh"), "'other-mesh'", f"expected {AUDIENCE!r}")
    refused(verifier, rsa_token(aud=["a", "b"]), f"expected {AUDIENCE!r}")
    refused(verifier, rsa_token(aud=None), "no 'aud' claim", AUDIENCE)
    assert verifier.verify(rsa_token(aud=["other", AUDIENCE])).name == "alice"


def test_exp_is_required(verifier: JwtVerifier) -> None:
    refused(verifier, rsa_token(exp=None), "no 'exp' claim", "tokens that expire")


def test_a_wrong_key_fails_the_signature(verifier: JwtVerifier) -> None:
    refused(verifier, rsa_token(key=OTHER_RSA_KEY), "signature does not verify", "'rsa-1'")
    head, _, signature = rsa_token().split(".")
    forged_body = rsa_token(sub="root").split(".")[1]
    refused(verifier, f"{head}.{forged_body}.{signature}", "signature does not verify")


def test_an_unknown_kid_is_named(verifier: JwtVerifier) -> None:
    refused(verifier, rsa_token(kid="rotated-2"), "key id 'rotated-2' is not in the router's key set", "read again")
    refused(verifier, rsa_token(kid="x" * 500), "is not in the router's key set")  # quoted, and cut short
    # A kid of another algorithm's key does not make the token readable with that key.
    refused(verifier, rsa_token(kid="ec-1"), "key id 'ec-1' is not in the router's key set for RS256")


def test_alg_none_is_refused(verifier: JwtVerifier) -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none")
    refused(verifier, unsigned, "algorithm 'none' is not accepted", "RS256")


def test_hs256_signed_with_the_public_key_text_is_refused(verifier: JwtVerifier, tmp_path: Path) -> None:
    pem = public_pem(RSA_KEY)
    # PyJWT itself refuses to HMAC with PEM text; build the confused token by hand.
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    signature = jwt.utils.base64url_encode(hmac.new(pem, header + b"." + body, hashlib.sha256).digest())
    confused = b".".join((header, body, signature)).decode()
    refused(verifier, confused, "algorithm 'HS256' is not accepted")
    (tmp_path / "issuer.pem").write_bytes(pem)
    refused(JwtVerifier.from_file(tmp_path / "issuer.pem", issuer=ISSUER, audience=AUDIENCE), confused,
            "algorithm 'HS256' is not accepted")
    with pytest.raises(ValueError, match="not allowed"):
        JwtVerifier.from_file(tmp_path / "issuer.pem", issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError, match="not allowed"):
        JwtVerifier.from_file(tmp_path / "issuer.pem", issuer=ISSUER, audience=AUDIENCE, algorithms=["none"])


def test_the_principal_claim_must_name_someone(verifier: JwtVerifier) -> None:
    refused(verifier, rsa_token(sub=None), "no 'sub' claim naming the principal")
    refused(verifier, rsa_token(sub=""), "no 'sub' claim")
    refused(verifier, rsa_token(sub="anonymous"), "reserved")
    refused(verifier, rsa_token(roles={"admin": True}), "'roles' must be a list of strings")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 5000, "eyJhbGciOiJSUzI1NiJ9..", "...."])
def test_garbage_is_not_a_well_formed_jwt(verifier: JwtVerifier, token: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert len(caught.value.message) < 400


TOKEN = rsa_token(exp=2_000_000_000)


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=600), st.binary(min_size=1, max_size=8))
def test_any_corrupted_token_is_unauthenticated(position: int, junk: bytes) -> None:
    verifier = JwtVerifier([jwt.PyJWK({**RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "kid": "rsa-1"})],
                           issuer=ISSUER, audience=AUDIENCE)
    token = TOKEN
    position %= len(token)
    corrupted = token[:position] + junk.decode("latin-1") + token[position + len(junk):]
    try:
        principal = verifier.verify(corrupted)
    except Unauthenticated as e:
        assert len(e.message) <= MAX_MESSAGE_CHARS + 40
    else:
        assert principal.name == "alice"  # base64 padding bits may change without changing the token


def test_key_files_that_cannot_be_used(tmp_path: Path) -> None:
    cases: dict[str, tuple[str | bytes, str]] = {
        "missing.json": ("", "cannot read the JWT key set"),
        "bad.json": ("{not json", "is not valid JSON"),
        "empty.json": ('{"keys": []}', "is not a JWKS"),
        "secret.json": ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "shared secret"),
        "private.json": (json.dumps({"keys": [json.loads(RSAAlgorithm.to_jwk(RSA_KEY))]}), "private key material"),
        "odd.json": ('{"keys": [{"kty": "XYZ", "kid": "k"}]}', "key 1 (kid 'k')"),
        "garbage.pem": (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "PEM public key"),
        "es384.json": (json.dumps({"keys": [ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(),
                                                               as_dict=True)]}), "no signing key for the allowed"),
    }
    for name, (content, words) in cases.items():
        path = tmp_path / name
        if name != "missing.json":
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(KeySetError, match=re.escape(words)):
            load_keys(path)
    signing_and_encryption = {"keys": [{**RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True), "use": "enc"},
                                       ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True)]}
    (tmp_path / "mixed.json").write_text(json.dumps(signing_and_encryption))
    assert [k.algorithm_name for k in load_keys(tmp_path / "mixed.json")] == ["ES256"]


def test_router_settings_refuse_a_half_configuration(jwks: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="--jwt-keys needs --jwt-issuer and --jwt-audience"):
        RouterSettings(jwt_keys=jwks, jwt_issuer=ISSUER)
    with pytest.raises(ValidationError, match="take effect only with --jwt-keys"):
        RouterSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    with pytest.raises(ValidationError, match="cannot read the JWT key set"):
        RouterSettings(jwt_keys=tmp_path / "nope.json", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert verifier_from_settings(RouterSettings()) is None
    built = verifier_from_settings(RouterSettings(jwt_keys=jwks, jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
                                                  jwt_principal_claim="email"))
    assert built is not None and (built.issuer, built.principal_claim, len(built.keys)) == (ISSUER, "email", 2)


RULES = {"r1": auth_pb2.AccessRule(id="r1", principal="alice", models=["iris"], actions=["infer"]),
         "r2": auth_pb2.AccessRule(id="r2", role="analysts", models=["text-*"], actions=["infer"])}


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


class Counting(JwtVerifier):
    calls = 0

    def verify_until(self, token: str) -> tuple[Principal, float]:
        self.calls += 1
        return super().verify_until(token)


def test_access_takes_jwts_under_the_same_rules_as_keys(jwks: Path) -> None:
    access = Access({}, RULES, lambda: 0, jwt=JwtVerifier.from_file(jwks, issuer=ISSUER, audience=AUDIENCE))
    alice = access.authenticate(bearer(rsa_token()))
    assert alice == Principal("alice", ("scoring", "analysts"))
    assert access.allowed(alice, "iris", "infer") and access.allowed(alice, "text-en", "infer")
    bob = access.authenticate(bearer(rsa_token(sub="bob", roles=None)))
    assert not access.allowed(bob, "iris", "infer")
    with pytest.raises(Unauthenticated, match=re.escape(f"'Bearer <JWT>', a token from {ISSUER!r}, or")):
        access.authenticate((("authorization", "Basic dXNlcjpwYXNz"),))
    with pytest.raises(Unauthenticated, match="malformed: send 'Bearer <JWT>'"):
        access.authenticate(bearer("nope"))
    with pytest.raises(Unauthenticated, match="not a well-formed JWT"):
        access.authenticate(bearer("a.b.c"))


def test_access_without_a_verifier_keeps_its_message() -> None:
    access = Access({}, RULES, lambda: 0)
    with pytest.raises(Unauthenticated) as caught:
        access.authenticate(bearer(rsa_token()))
    assert "ms_<id>_<secret>" in caught.value.message and "JWT" not in caught.value.message


def test_a_cached_jwt_principal_is_not_used_past_its_expiry(jwks: Path) -> None:
    verifier = Counting.from_file(jwks, issuer=ISSUER, audience=AUDIENCE, leeway_s=0)
    assert isinstance(verifier, Counting)
    revision = [0]
    access = Access({}, RULES, lambda: revision[0], jwt=verifier)
    expires = int(time.time()) + 1
    token = rsa_token(exp=expires)
    for _ in range(3):
        assert access.authenticate(bearer(token)).name == "alice"
    assert verifier.calls == 1  # cached
    revision[0] += 1
    access.authenticate(bearer(token))
    assert verifier.calls == 2  # a registry change drops the cache
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(Unauthenticated, match="JWT expired at"):
        access.authenticate(bearer(token))
    assert verifier.calls == 3
