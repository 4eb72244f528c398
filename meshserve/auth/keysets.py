"""A JWT issuer's public keys: from a file or a JWKS URL, refreshed without a restart.

A :class:`KeySet` holds the keys tokens are checked against and refreshes them

- on a schedule, every ``refresh_s``: a file is looked at (and read when its size,
  modification time or inode changed), a URL is fetched;
- when a token names a key id the set does not hold, at most once every
  ``min_refresh_s``, so tokens with made-up key ids cannot make a service hammer the
  issuer.

Reading a local file is quick, so it happens in the caller, and a token signed with a
key just added to the file is accepted by the call that first names it. Fetching a URL
(with PyJWT's :class:`jwt.PyJWKClient`) never happens in the caller: it runs in a
background thread, one fetch at a time. Calls meanwhile are checked against the keys
held; a call naming a key id the set does not hold yet is refused at once (it never waits
for the fetch) and one made after the fetch finds the new key.

A set that cannot be used (a half-written file, an unreachable URL, a document with no
usable key) is not taken: the keys held stay in use, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

log = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_REFRESH_S = 60.0
DEFAULT_MIN_REFRESH_S = 10.0
FETCH_TIMEOUT_S = 5.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class KeySetError(ValueError):
    """The key set cannot be read, or holds no key a JWT may be checked against."""


# -- parsing -------------------------------------------------------------------------------


def _pem_key(where: str, data: bytes) -> jwt.PyJWK:
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise KeySetError(f"{where} is neither a JWKS (JSON) nor a PEM public key file: {e}") from None
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        raise KeySetError(f"{where} holds a {type(public).__name__}: use an RSA, EC or Ed25519 public key")
    return jwt.PyJWK(jwk)


def parse_jwks(where: str, document: Any) -> list[jwt.PyJWK]:
    """The signing keys of a JWKS document (or of a single JWK); KeySetError for what must not be in one."""
    if isinstance(document, dict) and "kty" in document:
        document = {"keys": [document]}  # a single JWK
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeySetError(f'{where} is not a JWKS: expected {{"keys": [<JWK>, ...]}}')
    keys = []
    for n, entry in enumerate(entries, 1):
        kid = entry.get("kid") if isinstance(entry, dict) else None
        at = f"key {n}" + (f" (kid {kid!r})" if kid else "") + f" of {where}"
        if not isinstance(entry, dict):
            raise KeySetError(f"{at} is not a JSON object")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key, published beside the signing keys
        if entry.get("kty") == "oct":
            raise KeySetError(f"{at} is a shared secret (kty 'oct'): give the issuer's public keys only")
        if any(part in entry for part in ("d", "p", "q")):
            raise KeySetError(f"{at} holds private key material: give the issuer's public keys only")
        try:
            keys.append(jwt.PyJWK(entry))
        except jwt.PyJWTError as e:
            raise KeySetError(f"{at} cannot be used: {e}") from None
    return keys


def _usable(where: str, found: Sequence[jwt.PyJWK], algorithms: Sequence[str]) -> list[jwt.PyJWK]:
    usable = [k for k in found if k.algorithm_name in algorithms]
    for key in found:
        if key not in usable:
            log.warning("JWT key %s of %s is for %s, which is not allowed (%s): ignored",
                        key.key_id or "(no kid)", where, key.algorithm_name, ", ".join(algorithms))
    if not usable:
        raise KeySetError(f"{where} holds no signing key for the allowed algorithms ({', '.join(algorithms)})")
    return usable


def keys_in(where: str, data: bytes, algorithms: Sequence[str] = DEFAULT_ALGORITHMS) -> list[jwt.PyJWK]:
    """The usable public keys in the bytes of a JWKS or PEM file; KeySetError when there are none."""
    if not data.lstrip().startswith(b"{"):
        return _usable(where, [_pem_key(where, data)], algorithms)
    try:
        document = json.loads(data.decode())
    except UnicodeDecodeError:
        raise KeySetError(f"{where} is not UTF-8 text") from None
    except ValueError as e:
        raise KeySetError(f"{where} is not valid JSON: {e}") from None
    return _usable(where, parse_jwks(where, document), algorithms)


def load_keys(path: Path, algorithms: Sequence[str] = DEFAULT_ALGORITHMS) -> list[jwt.PyJWK]:
    """The public keys in a JWKS or PEM file whose algorithm is allowed; KeySetError when there are none."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeySetError(f"cannot read the JWT key set {path}: {e.strerror or e}") from None
    return keys_in(str(path), data, algorithms)


# -- where keys come from ------------------------------------------------------------------

Read = tuple[str, list[jwt.PyJWK]]  # (digest of what was read, its keys)


class KeySource(Protocol):
    where: str
    remote: bool  # read in a background thread (network I/O), never in the caller

    def read(self, last_digest: str) -> Read | None:
        """The keys, or None when nothing changed since ``last_digest``; KeySetError when unusable."""


class StaticKeys:
    """Keys given once (tests, embedding): never read again."""

    remote = False

    def __init__(self, keys: Sequence[jwt.PyJWK]) -> None:
        self.where = "the keys given at start-up"
        self._keys = list(keys)

    def read(self, last_digest: str) -> Read | None:
        return None if last_digest else ("static", self._keys)


class FileKeys:
    """A JWKS or PEM file, read again when it changes (size, modification time or inode)."""

    remote = False

    def __init__(self, path: Path, algorithms: Sequence[str] = DEFAULT_ALGORITHMS) -> None:
        self.path = path
        self.where = str(path)
        self.algorithms = tuple(algorithms)
        self._signature: tuple[int, ...] = ()

    def read(self, last_digest: str) -> Read | None:
        try:
            s = os.stat(self.path)
            signature = (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)
            if signature == self._signature:
                return None
            self._signature = signature  # before reading: a change while it is read is seen next time
            data = self.path.read_bytes()
        except OSError as e:
            self._signature = ()
            raise KeySetError(f"cannot read the JWT key set {self.path}: {e.strerror or e}") from None
        digest = hashlib.sha256(data).hexdigest()
        return None if digest == last_digest else (digest, keys_in(self.where, data, self.algorithms))


def check_jwks_url(url: str) -> str:
    """``url`` if a JWKS may be fetched from it: https, or http on loopback only; ValueError otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ValueError(f"JWKS URL {url!r} is not an https:// URL")
    if parsed.scheme == "http" and parsed.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"JWKS URL {url!r}: keys fetched in plain text could be swapped on the way; use https:// "
                         "(http:// is accepted on loopback only)")
    return url


class UrlKeys:
    """A JWKS document fetched from the issuer's URL (``jwks_uri``) with PyJWT's client."""

    remote = True

    def __init__(self, url: str, algorithms: Sequence[str] = DEFAULT_ALGORITHMS, *,
                 timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.where = check_jwks_url(url)
        self.algorithms = tuple(algorithms)
        # Caching, scheduling and rate limits are the key set's; the client only fetches (no redirects).
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout_s)

    def read(self, last_digest: str) -> Read | None:
        try:
            document = self._client.fetch_data()
        except (jwt.PyJWKClientError, ValueError, OSError) as e:
            raise KeySetError(f"cannot fetch the JWT key set from {self.where}: {e}") from None
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
        if digest == last_digest:
            return None
        return digest, _usable(self.where, parse_jwks(self.where, document), self.algorithms)


# -- the refreshing set ----------------------------------------------------------------------


class KeySet:
    """The keys in use, refreshed on a schedule and on unknown key ids (see the module's docstring)."""

    def __init__(self, source: KeySource, *, refresh_s: float = DEFAULT_REFRESH_S,
                 min_refresh_s: float = DEFAULT_MIN_REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.min_refresh_s = min_refresh_s
        self.reads = 0  # times the source was read or fetched
        self.generation = 0  # times the keys changed
        self._clock = clock
        self._keys: tuple[jwt.PyJWK, ...] = ()
        self._digest = ""
        self._read_at: float | None = None
        self._next_scheduled = 0.0
        self._next_unknown = 0.0
        self._fetching = threading.Event()
        self._warned = ""

    @property
    def keys(self) -> tuple[jwt.PyJWK, ...]:
        return self._keys

    @property
    def fetching(self) -> bool:
        """Whether a background fetch is under way."""
        return self._fetching.is_set()

    def age_s(self) -> float | None:
        """Seconds since the source was last read successfully (None: never)."""
        return None if self._read_at is None else self._clock() - self._read_at

    def load(self, *, required: bool = True) -> None:
        """The first read, in the caller (at start-up).

        KeySetError when the source holds no usable key and the keys are ``required``;
        otherwise a warning, and the set is tried again every ``min_refresh_s``.
        """
        self._next_scheduled = self._clock() + self.refresh_s
        if required:
            self._apply(self._read_source())
        else:
            self._read_and_apply()

    def maybe_refresh(self) -> None:
        """Refresh when the schedule says so (cheap otherwise: one clock reading)."""
        now = self._clock()
        if now >= self._next_scheduled:
            self._refresh(now)

    def refresh_for_unknown_key(self) -> bool:
        """A token named a key the set does not hold: refresh, unless one did within ``min_refresh_s``.

        True when the set was read again here and may hold the key now (a file); a fetch
        (a URL) goes on in the background, and this returns False.
        """
        now = self._clock()
        if now < self._next_unknown:
            return False
        self._next_unknown = now + self.min_refresh_s
        return self._refresh(now)

    def _refresh(self, now: float) -> bool:
        self._next_scheduled = now + self.refresh_s
        if not self.source.remote:
            return self._read_and_apply()
        if self._fetching.is_set():
            return False
        self._fetching.set()
        threading.Thread(target=self._fetch, name="jwks-fetch", daemon=True).start()
        return False

    def _fetch(self) -> None:
        try:
            self._read_and_apply()
        except Exception:  # the keys held stay in use whatever happens here
            log.exception("fetching the JWT key set from %s failed", self.source.where)
        finally:
            self._fetching.clear()

    def _read_source(self) -> Read | None:
        self.reads += 1
        read = self.source.read(self._digest)
        self._read_at = self._clock()
        return read

    def _read_and_apply(self) -> bool:
        try:
            read = self._read_source()
        except KeySetError as e:
            # Tried again sooner than the schedule, once a caller asks or min_refresh_s has passed.
            self._next_scheduled = min(self._next_scheduled, self._clock() + self.min_refresh_s)
            if str(e) != self._warned:
                self._warned = str(e)
                log.warning("%s: keeping the %d JWT keys held", e, len(self._keys))
            return False
        return self._apply(read)

    def _apply(self, read: Read | None) -> bool:
        self._warned = ""
        if read is None:
            return False
        digest, keys = read
        had = {k.key_id for k in self._keys}
        self._keys, self._digest = tuple(keys), digest
        self.generation += 1
        if self.generation > 1:
            now = {k.key_id for k in keys}
            log.info("JWT key set from %s changed: %d keys (added %s; removed %s)", self.source.where, len(keys),
                     _kids(now - had), _kids(had - now))
        return True


def _kids(kids: set[str | None]) -> str:
    named = sorted(str(k) for k in kids)
    if not named:
        return "none"
    return ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
