"""JWT bearer tokens from an external issuer, checked against its public keys.

A token is accepted when it is signed by a key of the configured set (a JWKS file, or a
PEM public key) with an allowed asymmetric algorithm, names the configured issuer and
audience, has an ``exp`` that has not passed and no ``nbf`` still to come (both with a
small leeway), and names a principal. Each key is bound to one algorithm when the set is
loaded, so a token cannot choose how its key is read (no ``none``, no HS256 over a public
key's text).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

from meshserve.errors import Unauthenticated

from .access import ANONYMOUS_NAME, Principal

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_LEEWAY_S = 30.0
MAX_PRINCIPAL_CHARS = 256
_QUOTED_CHARS = 60  # values quoted from a token (kid, iss, aud) are cut to this in messages


class KeySetError(ValueError):
    """The key set file cannot be read, or holds no key a JWT may be checked against."""


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "...'"


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_algorithms(algorithms: Sequence[str]) -> tuple[str, ...]:
    if not algorithms:
        raise ValueError("give at least one JWT algorithm")
    known = get_default_algorithms()
    for alg in algorithms:
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise ValueError(f"JWT algorithm {alg!r} is not allowed: only asymmetric algorithms (RS256, ES256, "
                             "EdDSA ...) can be checked against an issuer's public keys")
        if alg not in known:
            raise ValueError(f"unknown JWT algorithm {alg!r}; known: {', '.join(sorted(known))}")
    return tuple(algorithms)


def _pem_key(path: Path, data: bytes) -> jwt.PyJWK:
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeySetError(f"{path} is neither a JWKS (JSON) nor a PEM public key file: {e}") from None
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        raise KeySetError(f"{path} holds a {type(public).__name__}: use an RSA, EC or Ed25519 public key")
    return jwt.PyJWK(jwk)


def _jwks_keys(path: Path, text: str) -> list[jwt.PyJWK]:
    try:
        document = json.loads(text)
    except ValueError as e:
        raise KeySetError(f"{path} is not valid JSON: {e}") from None
    if isinstance(document, dict) and "kty" in document:
        document = {"keys": [document]}  # a single JWK
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeySetError(f'{path} is not a JWKS: expected {{"keys": [<JWK>, ...]}}')
    keys = []
    for n, entry in enumerate(entries, 1):
        kid = entry.get("kid") if isinstance(entry, dict) else None
        where = f"key {n}" + (f" (kid {kid!r})" if kid else "") + f" of {path}"
        if not isinstance(entry, dict):
            raise KeySetError(f"{where} is not a JSON object")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key, published beside the signing keys
        if entry.get("kty") == "oct":
            raise KeySetError(f"{where} is a shared secret (kty 'oct'): give the issuer's public keys only")
        if any(part in entry for part in ("d", "p", "q")):
            raise KeySetError(f"{where} holds private key material: give the issuer's public keys only")
        try:
            keys.append(jwt.PyJWK(entry))
        except jwt.PyJWTError as e:
            raise KeySetError(f"{where} cannot be used: {e}") from None
    return keys


def load_keys(path: Path, algorithms: Sequence[str] = DEFAULT_ALGORITHMS) -> list[jwt.PyJWK]:
    """The public keys in a JWKS or PEM file whose algorithm is allowed; KeySetError when there are none."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeySetError(f"cannot read the JWT key set {path}: {e.strerror or e}") from None
    if data.lstrip().startswith(b"{"):
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise KeySetError(f"{path} is not UTF-8 text") from None
        found = _jwks_keys(path, text)
    else:
        found = [_pem_key(path, data)]
    usable = [k for k in found if k.algorithm_name in algorithms]
    for key in found:
        if key not in usable:
            log.warning("JWT key %s of %s is for %s, which is not allowed (%s): ignored",
                        key.key_id or "(no kid)", path, key.algorithm_name, ", ".join(algorithms))
    if not usable:
        raise KeySetError(f"{path} holds no signing key for the allowed algorithms ({', '.join(algorithms)})")
    return usable


def _claim(payload: dict[str, Any], name: str) -> Any:
    """A claim, or a dotted path into nested claims ("realm_access.roles")."""
    if name in payload:
        return payload[name]
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class JwtVerifier:
    """Checks JWT bearer tokens from one issuer, for one audience, against that issuer's public keys."""

    def __init__(self, keys: Sequence[jwt.PyJWK], *, issuer: str, audience: str,
                 algorithms: Sequence[str] = DEFAULT_ALGORITHMS, principal_claim: str = "sub",
                 roles_claim: str = "roles", leeway_s: float = DEFAULT_LEEWAY_S) -> None:
        if not issuer or not audience:
            raise ValueError("a JWT verifier needs both an issuer and an audience")
        self.algorithms = _check_algorithms(algorithms)
        self.keys = [k for k in keys if k.algorithm_name in self.algorithms]
        if not self.keys:
            raise ValueError(f"no key for the allowed JWT algorithms ({', '.join(self.algorithms)})")
        self.issuer = issuer
        self.audience = audience
        self.principal_claim = principal_claim
        self.roles_claim = roles_claim
        self.leeway_s = leeway_s

    @classmethod
    def from_file(cls, path: Path, *, issuer: str, audience: str, algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
                  principal_claim: str = "sub", roles_claim: str = "roles",
                  leeway_s: float = DEFAULT_LEEWAY_S) -> JwtVerifier:
        """A verifier over the keys of a JWKS or PEM file (KeySetError if it has none to use)."""
        return cls(load_keys(path, _check_algorithms(algorithms)), issuer=issuer, audience=audience,
                   algorithms=algorithms, principal_claim=principal_claim, roles_claim=roles_claim,
                   leeway_s=leeway_s)

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; Unauthenticated, saying what is wrong, otherwise."""
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Principal, float]:
        """The principal a valid token names and the Unix time the token expires."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"the bearer token is not a well-formed JWT ({e})") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise Unauthenticated(f"JWT algorithm {_quote(alg)} is not accepted; "
                                  f"accepted: {', '.join(self.algorithms)}")
        candidates = [k for k in self.keys if k.algorithm_name == alg and (kid is None or k.key_id == kid)]
        if not candidates:
            if kid is not None:
                raise Unauthenticated(f"JWT key id {_quote(kid)} is not in the router's key set for {alg} "
                                      f"(issuer {self.issuer!r}): if the issuer rotated its keys, "
                                      "restart the router with the new set")
            raise Unauthenticated(f"the router has no {alg} key for JWTs from {self.issuer!r}")
        for key in candidates:
            try:
                payload = jwt.decode(token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                     leeway=self.leeway_s, options={"require": ["exp", "iss", "aud"]})
            except jwt.InvalidSignatureError:
                continue  # another key of the set (no kid) may have signed it
            except jwt.PyJWTError as e:
                raise self._refusal(token, e) from None
            return self._principal(payload), float(payload["exp"])
        raise Unauthenticated(f"JWT signature does not verify with the key set of issuer {self.issuer!r}"
                              + (f" (kid {_quote(kid)})" if kid is not None else ""))

    def _refusal(self, token: str, error: jwt.PyJWTError) -> Unauthenticated:
        # Claims are read again only to word the message: the signature has been checked by now.
        try:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            claims = {}
        now = time.time()
        if isinstance(error, jwt.MissingRequiredClaimError):
            if error.claim == "exp":
                return Unauthenticated("JWT has no 'exp' claim: the router accepts only tokens that expire")
            return Unauthenticated(f"JWT has no {error.claim!r} claim (expected {self._expected(error.claim)!r})")
        if isinstance(error, jwt.ExpiredSignatureError) and isinstance(claims.get("exp"), int | float):
            exp = float(claims["exp"])
            return Unauthenticated(f"JWT expired at {_when(exp)} ({now - exp:.0f} s ago): "
                                   f"get a new token from {self.issuer!r}")
        if isinstance(error, jwt.ImmatureSignatureError):
            start = next((claims[c] for c in ("nbf", "iat")
                          if isinstance(claims.get(c), int | float) and claims[c] > now), None)
            when = f" before {_when(float(start))} (in {float(start) - now:.0f} s)" if start is not None else " yet"
            return Unauthenticated(f"JWT is not valid{when}: check the clocks of the issuer and the router")
        if isinstance(error, jwt.InvalidIssuerError):
            return Unauthenticated(f"JWT issuer {_quote(claims.get('iss'))} is not the expected {self.issuer!r}")
        if isinstance(error, jwt.InvalidAudienceError):
            return Unauthenticated(f"JWT audience {_quote(claims.get('aud'))} does not include "
                                   f"the expected {self.audience!r}")
        return Unauthenticated(f"JWT refused: {error}")

    def _expected(self, claim: str) -> str:
        return {"iss": self.issuer, "aud": self.audience}.get(claim, "a value")

    def _principal(self, payload: dict[str, Any]) -> Principal:
        name = _claim(payload, self.principal_claim)
        if not isinstance(name, str) or not name:
            raise Unauthenticated(f"JWT has no {self.principal_claim!r} claim naming the principal "
                                  "(a non-empty string)")
        if name == ANONYMOUS_NAME or len(name) > MAX_PRINCIPAL_CHARS:
            raise Unauthenticated(f"JWT principal {_quote(name)} is reserved or longer than "
                                  f"{MAX_PRINCIPAL_CHARS} characters")
        roles = _claim(payload, self.roles_claim)
        if roles is None:
            return Principal(name)
        if isinstance(roles, str):
            return Principal(name, tuple(roles.split()))
        if isinstance(roles, list) and all(isinstance(r, str) for r in roles):
            return Principal(name, tuple(roles))
        raise Unauthenticated(f"JWT claim {self.roles_claim!r} must be a list of strings or a space-separated "
                              "string of roles")
