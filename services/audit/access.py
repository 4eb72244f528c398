"""Who may read the audit trail: ``audit:read``, checked against the API keys and rules in etcd.

The service keeps keys and rules in a watch-fed :class:`RegistryCache`, as routers do,
and decides with the same :class:`Access`: decisions are cached, and any change to a key
or rule drops the caches, so a revoked key is refused within moments of its removal and
a call costs no etcd round trip.

- Query with a model filter needs ``audit:read`` on that model.
- Query without one returns the calls of the models the caller may read, and is refused
  when no rule lets the caller read any model.
- Verify reads every record, so it needs ``audit:read`` on ``"*"``.

Without etcd nothing can be checked: every Query and Verify is refused, unless the
service runs in dev mode, where callers without a key may read the whole trail (with
etcd, callers with a key still get what their rules say).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshserve.auth.access import ANONYMOUS, Access, Principal
from meshserve.auth.jwt import JwtVerifier
from meshserve.errors import FailedPrecondition, MeshError, PermissionDenied, Unauthenticated
from meshserve.registry.cache import RegistryCache

log = logging.getLogger(__name__)

AUDIT_READ = "audit:read"
EVERY_MODEL = "*"
Metadata = Sequence[tuple[str, str | bytes]]

NO_ETCD = ("the audit service has no --etcd-endpoint, so it cannot check who may read the trail (audit:read): "
           "start it with --etcd-endpoint (or, for local development only, --dev-mode)")
_SEND_KEY = ("send 'authorization: Bearer <key>' (MESHSERVE_API_KEY for the CLI; "
             "create one with `meshserve keys create`)")


@dataclass(frozen=True)
class Reader:
    """An authorized caller of Query, and the models whose calls it may read."""

    principal: Principal
    # Shell-style patterns of the readable models (for the SQL filter); None: every model.
    patterns: tuple[str, ...] | None
    # The exact check for one model, None when every model is readable.
    access: Access | None = field(default=None, repr=False)

    def may_read(self, model: str) -> bool:
        return self.access is None or self.access.allowed(self.principal, model, AUDIT_READ)


class AuditAccess:
    """Authentication and ``audit:read`` for Query and Verify; logs every refusal."""

    def __init__(self, cache: RegistryCache | None, *, dev_mode: bool = False, jwt: JwtVerifier | None = None) -> None:
        self.cache = cache
        self.dev_mode = dev_mode
        # Dev mode is handled here, not by Access: its dev mode covers infer and metadata only.
        self.access = (Access(cache.api_keys, cache.access_rules, lambda: cache.auth_revision, jwt=jwt)
                       if cache is not None else None)
        self._seen = -1
        self._patterns: dict[Principal, tuple[str, ...]] = {}

    def reader(self, metadata: Metadata, model: str) -> Reader:
        """Who may run a Query with this model filter ("" for none), and what it may see; raises a MeshError."""
        principal = self._authenticate(metadata, "Query")
        try:
            if self._reads_everything(principal):
                return Reader(principal, None)
            assert self.access is not None  # without etcd every caller is anonymous, and reads all or nothing
            if model:
                self.access.check(principal, model, AUDIT_READ)
                return Reader(principal, None)  # the model filter already keeps the rest out
            patterns = self._readable(principal)
            if not patterns:
                raise self._nothing_readable(principal)
            if any(set(p) == {"*"} for p in patterns):
                return Reader(principal, None)
            return Reader(principal, patterns, self.access)
        except MeshError as e:
            self._refused("Query", principal.name, e)
            raise

    def verifier(self, metadata: Metadata) -> Principal:
        """Who may run Verify (``audit:read`` on "*"); raises a MeshError."""
        principal = self._authenticate(metadata, "Verify")
        if self._reads_everything(principal):
            return principal
        assert self.access is not None
        if self.access.allowed(principal, EVERY_MODEL, AUDIT_READ):
            return principal
        error: MeshError
        if principal.anonymous:
            error = Unauthenticated(f"Verify reads every record and needs {AUDIT_READ} on '*' with an API key: "
                                    + _SEND_KEY)
        else:
            error = PermissionDenied(f"principal {principal.name!r} may not verify the audit trail: Verify reads "
                                     f"every record and needs {AUDIT_READ} on '*' (see `meshserve policy list`)")
        self._refused("Verify", principal.name, error)
        raise error

    def _authenticate(self, metadata: Metadata, method: str) -> Principal:
        try:
            if self.access is None:
                if not self.dev_mode:
                    raise FailedPrecondition(NO_ETCD)
                return ANONYMOUS  # no keys to check: every caller reads as one without a key
            return self.access.authenticate(metadata)
        except MeshError as e:
            self._refused(method, ANONYMOUS.name, e)
            raise

    def _reads_everything(self, principal: Principal) -> bool:
        return self.dev_mode and principal.anonymous

    def _readable(self, principal: Principal) -> tuple[str, ...]:
        """The model patterns of every rule granting ``principal`` audit:read, cached until a key or rule changes."""
        assert self.cache is not None
        if self.cache.auth_revision != self._seen:
            self._patterns.clear()
            self._seen = self.cache.auth_revision
        found = self._patterns.get(principal)
        if found is None:
            found = tuple(sorted({
                pattern for rule in self.cache.access_rules.values()
                if AUDIT_READ in rule.actions
                and ((rule.principal and rule.principal == principal.name)
                     or (rule.role and rule.role in principal.roles))
                for pattern in rule.models
            }))
            self._patterns[principal] = found
        return found

    @staticmethod
    def _nothing_readable(principal: Principal) -> MeshError:
        if principal.anonymous:
            return Unauthenticated(f"reading the audit trail needs an API key allowed {AUDIT_READ}: " + _SEND_KEY)
        return PermissionDenied(
            f"principal {principal.name!r} may not {AUDIT_READ} any model: no access rule allows it (see "
            f"`meshserve policy list`; `meshserve policy allow --principal {principal.name} --models 'iris*' "
            f"--actions {AUDIT_READ}` would allow it for iris*)"
        )

    @staticmethod
    def _refused(method: str, principal: str, error: MeshError) -> None:
        log.warning("refused %s to principal %r (%s): %s", method, principal, error.code.name, error.message)
