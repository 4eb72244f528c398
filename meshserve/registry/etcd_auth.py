"""etcd's own users and roles for the mesh: each component may write only its key ranges.

Outside dev mode the registry is not open to whoever reaches etcd's port: etcd runs with
authentication on, and each component connects as its own user (a password in plain
text; under TLS the user named by its certificate, so no password at all):

=================  ==========================================================================
user               may
=================  ==========================================================================
``root``           administer etcd's users and roles (nothing of the mesh uses it day to day)
``operator``       read and write the whole registry: the CLI's keys, rules, limits, audit
                   policies and catalog (changes of routes, aliases and pipelines go through
                   the router's admin API, which checks the caller's key)
``router``         read the registry; write what routers own: routes, pipelines, placement
                   claims, the scaler's leadership, the routers' own records
``audit``          read the registry (keys and rules that decide who may read the trail)
runtime users      write their own runtime record and placements, nothing else: the user
                   of runtime ``ID`` may write ``runtimes/ID`` and ``placements/ID/...``
``runtime``        with ``runtime_ids`` unknown beforehand (a Kubernetes StatefulSet):
                   write any runtime record and placement
=================  ==========================================================================

Every user may also read the registry's root key itself, which services read once to see
that etcd answers. :func:`setup` creates all of this and turns authentication on; it is
idempotent (a mesh restarted on its data directory finds it done).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aetcd
import grpc
from aetcd import rpc

from meshserve.errors import FailedPrecondition, InvalidArgument
from meshserve.registry import keys

log = logging.getLogger(__name__)

ROOT_USER = "root"
OPERATOR = "operator"
ROUTER = "router"
AUDIT = "audit"
SHARED_RUNTIME = "runtime"
LEADER = keys.ROOT + "leader/"
ROUTERS = keys.ROOT + "routers/"

_READ, _WRITE, _READWRITE = rpc.Permission.READ, rpc.Permission.WRITE, rpc.Permission.READWRITE


@dataclass(frozen=True)
class Grant:
    """One permission: ``key`` alone, or every key starting with it when ``prefix``."""

    key: str
    kind: int = _READWRITE
    prefix: bool = True

    def permission(self) -> rpc.Permission:
        key = self.key.encode()
        return rpc.Permission(permType=self.kind, key=key, range_end=prefix_end(key) if self.prefix else b"")


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


_PROBE = Grant(keys.ROOT, _READ, prefix=False)  # every service reads it once to see etcd answer

ROLES: Mapping[str, tuple[Grant, ...]] = {
    OPERATOR: (Grant(keys.ROOT),),
    ROUTER: (Grant(keys.ROOT, _READ), Grant(keys.ROUTES), Grant(keys.PIPELINES), Grant(keys.PLACING),
             Grant(LEADER), Grant(ROUTERS)),
    AUDIT: (Grant(keys.ROOT, _READ),),
    SHARED_RUNTIME: (_PROBE, Grant(keys.RUNTIMES), Grant(keys.PLACEMENTS)),
}


def runtime_grants(runtime_id: str) -> tuple[Grant, ...]:
    """What the user of runtime ``runtime_id`` may do: its own record and placements."""
    return (_PROBE, Grant(keys.RUNTIMES + runtime_id, prefix=False), Grant(f"{keys.PLACEMENTS}{runtime_id}/"))


def grants(role: str) -> tuple[Grant, ...]:
    """The grants of a role: ``operator``, ``router``, ``audit``, ``runtime`` (any runtime's records) or
    ``runtime:ID`` (runtime ID's own); InvalidArgument naming the choices otherwise."""
    if role in ROLES:
        return ROLES[role]
    kind, _, runtime_id = role.partition(":")
    if kind == SHARED_RUNTIME and runtime_id and "/" not in runtime_id:
        return runtime_grants(runtime_id)
    raise InvalidArgument(f"no etcd role {role!r}: use {', '.join(ROLES)} or runtime:<runtime id>")


@dataclass(frozen=True)
class User:
    """A mesh user of etcd: its password (None: named by a TLS certificate instead) and role."""

    name: str
    password: str | None
    role: str


def role_name(user: str) -> str:
    return f"meshserve-{user}"


async def _call(name: str, done: Awaitable[Any]) -> None:
    try:
        await done
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already" in (e.details() or ""):
            return  # made on an earlier start
        raise FailedPrecondition(f"setting up etcd's users failed at {name}: {e.details()}") from e


async def setup(client: aetcd.Client, users: Sequence[User], *, root_password: str) -> None:
    """Create ``users``, each with a role of its own holding its grants, and turn authentication on.

    ``client`` must be connected as root when authentication is on already, else without a user.
    """
    auth = rpc.AuthStub(client.channel)
    md = client.metadata
    planned = [(user, grants(user.role)) for user in users]  # every role checked before anything changes
    status = await auth.AuthStatus(rpc.AuthStatusRequest(), metadata=md)
    for user in (User(ROOT_USER, root_password, "root"), *users):
        options = rpc.UserAddOptions(no_password=user.password is None)
        await _call(f"user {user.name}", auth.UserAdd(rpc.AuthUserAddRequest(
            name=user.name, password=user.password or "", options=options), metadata=md))
    await _call("the root role", auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=ROOT_USER, role="root"),
                                                    metadata=md))
    for user, granted in planned:
        role = role_name(user.name)
        await _call(f"role {role}", auth.RoleAdd(rpc.AuthRoleAddRequest(name=role), metadata=md))
        for grant in granted:
            await _call(f"role {role}", auth.RoleGrantPermission(
                rpc.AuthRoleGrantPermissionRequest(name=role, perm=grant.permission()), metadata=md))
        await _call(f"user {user.name}", auth.UserGrantRole(
            rpc.AuthUserGrantRoleRequest(user=user.name, role=role), metadata=md))
    if not status.enabled:
        await _call("enabling auth", auth.AuthEnable(rpc.AuthEnableRequest(), metadata=md))
        log.info("etcd authentication on: %d mesh users", len(users))
