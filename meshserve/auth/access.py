"""Deciding who may do what: authentication from gRPC metadata, authorization by allow rules.

Decisions are cached per (principal, model, action) and per presented token; both
caches are dropped whenever a key or a rule changes in the registry (the router's watch
bumps ``revision``), so a revoked key stops working as soon as the router sees it. A
JWT's principal is cached with the token's expiry and checked again once it has passed,
or as soon as the issuer's key set changes (a key may have left it).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshserve.errors import PermissionDenied, Unauthenticated
from meshserve.protos.meshserve.auth.v1 import auth_pb2

from . import apikeys

if TYPE_CHECKING:
    from .jwt import JwtVerifier

ACTIONS = ("infer", "metadata", "load", "admin", "audit:read")
ANONYMOUS_NAME = "anonymous"
DEV_ACTIONS = frozenset(("infer", "metadata"))
MAX_TOKEN_CACHE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: tuple[str, ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.name == ANONYMOUS_NAME

    @property
    def sticky_name(self) -> str:
        """The name a sticky split keys on: "" for callers without a key (they share no identity)."""
        return "" if self.name == ANONYMOUS_NAME else self.name


ANONYMOUS = Principal(ANONYMOUS_NAME)


class Access:
    """Authentication and authorization over the keys and rules the registry cache holds."""

    def __init__(self, keys: Mapping[str, auth_pb2.ApiKey], rules: Mapping[str, auth_pb2.AccessRule],
                 revision: Callable[[], int], *, dev_mode: bool = False, jwt: JwtVerifier | None = None) -> None:
        self.keys = keys
        self.rules = rules
        self.revision = revision
        self.dev_mode = dev_mode
        self.jwt = jwt
        self._seen = -1
        self._tokens: dict[str, Principal] = {}  # API keys: valid until the registry changes
        self._jwts: dict[str, tuple[Principal, float]] = {}  # JWTs: (principal, expiry in Unix seconds)
        self._jwt_keys = -1  # the key set generation the cached JWTs were checked against
        self._decisions: dict[tuple[Principal, str, str], bool] = {}
        self._malformed = ("the authorization header is malformed: send 'Bearer ms_<id>_<secret>', "
                           "a key from `meshserve keys create`")
        if jwt is not None:
            self._malformed = (f"the authorization header is malformed: send 'Bearer <JWT>', a token from "
                               f"{jwt.issuer!r}, or 'Bearer ms_<id>_<secret>', a key from `meshserve keys create`")

    def _fresh(self) -> None:
        now = self.revision()
        if now != self._seen:
            self._tokens.clear()
            self._jwts.clear()
            self._decisions.clear()
            self._seen = now

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        """The caller: from ``authorization: Bearer <key or JWT>``, else anonymous. Unauthenticated for a bad one."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is None:
            return ANONYMOUS
        self._fresh()
        if not isinstance(header, str):
            raise Unauthenticated("the authorization header is not text: send 'Bearer <key>'")
        found = self._tokens.get(header)
        if found is not None:
            return found
        scheme, _, token = header.partition(" ")
        bearer = scheme.lower() == "bearer"
        token = token.strip()
        parsed = apikeys.parse(token) if bearer else None
        if parsed is None:
            if self.jwt is not None and bearer and token.count(".") == 2:  # header.payload.signature
                return self._jwt_principal(self.jwt, header, token)
            raise Unauthenticated(self._malformed)
        record = self.keys.get(parsed[0])
        if record is None or not apikeys.matches(record, parsed[1]):
            raise Unauthenticated(f"API key {parsed[0]} is unknown or revoked")
        principal = Principal(record.principal, tuple(record.roles))
        if len(self._tokens) < MAX_TOKEN_CACHE:
            self._tokens[header] = principal
        return principal

    def _jwt_principal(self, verifier: JwtVerifier, header: str, token: str) -> Principal:
        keys = verifier.key_generation()
        if keys != self._jwt_keys:
            self._jwts.clear()
            self._jwt_keys = keys
        now = time.time()
        cached = self._jwts.get(header)
        if cached is not None:
            if now < cached[1]:
                return cached[0]
            del self._jwts[header]  # expired: checked again below, and refused past the leeway
        principal, expires = verifier.verify_until(token)
        if now < expires:
            if len(self._jwts) >= MAX_TOKEN_CACHE:
                for stale in [h for h, (_, e) in self._jwts.items() if e <= now]:
                    del self._jwts[stale]
            if len(self._jwts) < MAX_TOKEN_CACHE:
                self._jwts[header] = (principal, expires)
        return principal

    def allowed(self, principal: Principal, model: str, action: str) -> bool:
        self._fresh()
        key = (principal, model, action)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(principal, model, action)
            if len(self._decisions) < MAX_TOKEN_CACHE:
                self._decisions[key] = decision
        return decision

    def _decide(self, principal: Principal, model: str, action: str) -> bool:
        if self.dev_mode and principal.anonymous and action in DEV_ACTIONS:
            return True
        for rule in self.rules.values():
            who = (rule.principal and rule.principal == principal.name) or (rule.role and rule.role in principal.roles)
            if who and action in rule.actions and any(fnmatch.fnmatchcase(model, p) for p in rule.models):
                return True
        return False

    def check(self, principal: Principal, model: str, action: str) -> None:
        """Raise Unauthenticated (anonymous) or PermissionDenied unless ``principal`` may do ``action`` on ``model``."""
        if self.allowed(principal, model, action):
            return
        if principal.anonymous:
            raise Unauthenticated(f"{action} on {model!r} needs an API key: send 'authorization: Bearer <key>' "
                                  "(create one with `meshserve keys create`)")
        raise PermissionDenied(f"principal {principal.name!r} may not {action} on {model!r}: no access rule "
                               "allows it (see `meshserve policy list`)")
