"""JWT bearer tokens from an external issuer, checked against its public keys.

A token is accepted when it is signed by a key of the configured set (a JWKS file or
URL, or a PEM public key; see :mod:`meshserve.auth.keysets`, which keeps it fresh) with
an allowed asymmetric algorithm, names the configured issuer and audience, has an
``exp`` that has not passed and no ``nbf`` still to come (both with a small leeway), and
names a principal. Each key is bound to one algorithm when the set is loaded, so a token
cannot choose how its key is read (no ``none``, no HS256 over a public key's text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from meshserve.errors import Unauthenticated

from .access import ANONYMOUS_NAME, Principal
from .keysets import (
    DEFAULT_ALGORITHMS,
    DEFAULT_MIN_REFRESH_S,
    DEFAULT_REFRESH_S,
    FileKeys,
    KeySet,
    KeySetError,
    StaticKeys,
    load_keys,
)

__all__ = ["DEFAULT_ALGORITHMS", "JwtVerifier", "KeySet", "KeySetError", "load_keys"]

log = logging.getLogger(__name__)

DEFAULT_LEEWAY_S = 30.0
MAX_PRINCIPAL_CHARS = 256
_QUOTED_CHARS = 60  # values quoted from a token (kid, iss, aud) are cut to this in messages


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
    """Checks JWT bearer tokens from one issuer, for one audience, against that issuer's public keys.

    ``keys``: a :class:`KeySet` (refreshed as it says), or keys given once.
    """

    def __init__(self, keys: KeySet | Sequence[jwt.PyJWK], *, issuer: str, audience: str,
                 algorithms: Sequence[str] = DEFAULT_ALGORITHMS, principal_claim: str = "sub",
                 roles_claim: str = "roles", leeway_s: float = DEFAULT_LEEWAY_S) -> None:
        if not issuer or not audience:
            raise ValueError("a JWT verifier needs both an issuer and an audience")
        self.algorithms = _check_algorithms(algorithms)
        if not isinstance(keys, KeySet):
            usable = [k for k in keys if k.algorithm_name in self.algorithms]
            if not usable:
                raise ValueError(f"no key for the allowed JWT algorithms ({', '.join(self.algorithms)})")
            keys = KeySet(StaticKeys(usable))
            keys.load()
        self.key_set = keys
        self.issuer = issuer
        self.audience = audience
        self.principal_claim = principal_claim
        self.roles_claim = roles_claim
        self.leeway_s = leeway_s

    @classmethod
    def from_file(cls, path: Path, *, issuer: str, audience: str, algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
                  principal_claim: str = "sub", roles_claim: str = "roles", leeway_s: float = DEFAULT_LEEWAY_S,
                  refresh_s: float = DEFAULT_REFRESH_S, min_refresh_s: float = DEFAULT_MIN_REFRESH_S) -> JwtVerifier:
        """A verifier over the keys of a JWKS or PEM file, read again when it changes (KeySetError if it has none)."""
        key_set = KeySet(FileKeys(path, _check_algorithms(algorithms)), refresh_s=refresh_s,
                         min_refresh_s=min_refresh_s)
        key_set.load()
        return cls(key_set, issuer=issuer, audience=audience, algorithms=algorithms,
                   principal_claim=principal_claim, roles_claim=roles_claim, leeway_s=leeway_s)

    @property
    def keys(self) -> tuple[jwt.PyJWK, ...]:
        """The keys tokens are checked against now."""
        return self.key_set.keys

    def key_generation(self) -> int:
        """How many times the keys changed (after a scheduled refresh, when one is due): caches key on it."""
        self.key_set.maybe_refresh()
        return self.key_set.generation

    def _candidates(self, alg: str, kid: str | None) -> list[jwt.PyJWK]:
        return [k for k in self.key_set.keys if k.algorithm_name == alg and (kid is None or k.key_id == kid)]

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
        self.key_set.maybe_refresh()
        candidates = self._candidates(alg, kid)
        if not candidates and self.key_set.refresh_for_unknown_key():
            candidates = self._candidates(alg, kid)  # the file held a new key
        if not candidates:
            raise self._unknown_key(alg, kid)
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

    def _unknown_key(self, alg: str, kid: str | None) -> Unauthenticated:
        keys = self.key_set
        what = (f"JWT key id {_quote(kid)} is not in the router's key set for {alg}" if kid is not None
                else f"the router has no {alg} key for JWTs")
        if keys.fetching:
            return Unauthenticated(f"{what} (issuer {self.issuer!r}) yet: the set is being fetched again from "
                                   f"{keys.source.where}; retry in a moment")
        age = keys.age_s()
        read = f"read {age:.0f} s ago" if age is not None else "not read yet"
        return Unauthenticated(f"{what} (issuer {self.issuer!r}): the set was {read} from {keys.source.where}; "
                               f"it is read again every {keys.refresh_s:g} s, and at most every "
                               f"{keys.min_refresh_s:g} s for a key it does not hold")

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
