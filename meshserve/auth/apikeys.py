"""API keys: ``ms_<key id>_<secret>``, stored as a salted hash under their id.

The id names the record, so checking a key is one lookup and one hash, never a scan.
Secrets are 32 random bytes: a fast salted SHA-256 is enough (there is nothing to guess
from it), and ``hmac.compare_digest`` keeps the comparison constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from meshserve.errors import InvalidArgument
from meshserve.protos.meshserve.auth.v1 import auth_pb2

PREFIX = "ms"
_TOKEN = re.compile(r"^ms_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$")


def check_name(what: str, name: str) -> str:
    if name == "anonymous" or not _NAME.match(name):
        raise InvalidArgument(f"invalid {what} {name!r}: use up to 128 letters, digits, '_', '.', '@' or '-' "
                              "(and not 'anonymous')")
    return name


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def create(principal: str, roles: list[str], description: str = "") -> tuple[str, auth_pb2.ApiKey]:
    """A new key: (the token to hand to the caller once, the record to store)."""
    check_name("principal", principal)
    for role in roles:
        check_name("role", role)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = auth_pb2.ApiKey(key_id=key_id, principal=principal, roles=roles, salt=salt,
                             hash=_digest(salt, secret), created_unix_ms=int(time.time() * 1000),
                             description=description)
    return f"{PREFIX}_{key_id}_{secret}", record


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = _TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


def matches(record: auth_pb2.ApiKey, secret: str) -> bool:
    return hmac.compare_digest(record.hash, _digest(record.salt, secret))
