"""``meshserve keys`` and ``meshserve policy``: API keys and the allow rules routers enforce (kept in etcd)."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Annotated

import aetcd
import typer
from google.protobuf.message import Message

from meshserve.auth import apikeys
from meshserve.auth.access import ACTIONS, ANONYMOUS_NAME
from meshserve.cli.common import EtcdOption, cli_errors, console
from meshserve.cli.text import Table
from meshserve.errors import InvalidArgument, NotFound
from meshserve.names import check_model_name
from meshserve.protos.meshserve.auth.v1 import auth_pb2
from meshserve.registry import keys
from meshserve.registry.etcd import read_records, with_etcd

keys_app = typer.Typer(help="API keys: create (printed once), list, revoke.", no_args_is_help=True)
policy_app = typer.Typer(help="Allow rules: who may do what on which models (deny by default).",
                         no_args_is_help=True)


def _when(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _delete(etcd: str, key: bytes, what: str) -> None:
    async def delete(client: aetcd.Client) -> None:
        if not await client.delete(key):
            raise NotFound(f"no {what} in etcd at {etcd}")
    with_etcd(etcd, delete)


def _store(etcd: str, key: bytes, record: Message | None) -> None:
    """Write ``record`` at ``key``, or remove what is there when it is None."""
    async def store(client: aetcd.Client) -> None:
        if record is None:
            await client.delete(key)
        else:
            await client.put(key, record.SerializeToString())
    with_etcd(etcd, store)


@keys_app.command("create")
@cli_errors
def create_key(
    principal: Annotated[str, typer.Option(help="who the key speaks for")],
    role: Annotated[list[str] | None, typer.Option(help="a role of the principal (repeatable)")] = None,
    description: Annotated[str, typer.Option(help="a note for `keys list`")] = "",
    etcd: EtcdOption = "",
) -> None:
    """Create a key for PRINCIPAL and print it once: etcd keeps only a salted hash."""
    token, record = apikeys.create(principal, role or [], description)
    _store(etcd, keys.api_key_key(record.key_id), record)
    console.print(f"key {record.key_id} for principal {principal!r}"
                  + (f" (roles: {', '.join(record.roles)})" if record.roles else "") + ". It is shown only now:")
    console.print(token, markup=False, soft_wrap=True)
    console.print("Send it as: authorization: Bearer <key>   (grpcurl -H 'authorization: Bearer <key>' ...)")


@keys_app.command("list")
@cli_errors
def list_keys(etcd: EtcdOption = "") -> None:
    """List the keys (never their secrets)."""
    found = with_etcd(etcd, lambda c: read_records(c, keys.API_KEYS, keys.parse_api_key_key, auth_pb2.ApiKey))
    table = Table("key id", "principal", "roles", "created", "description", title="API keys")
    for k in sorted(found.values(), key=lambda k: (k.principal, k.created_unix_ms)):
        table.add_row(k.key_id, k.principal, ", ".join(k.roles) or "-", _when(k.created_unix_ms), k.description or "-")
    console.print(table)


@keys_app.command("revoke")
@cli_errors
def revoke_key(key_id: Annotated[str, typer.Argument(help="the key id (`keys list`)")],
               etcd: EtcdOption = "") -> None:
    """Revoke a key: every router refuses it within a second."""
    _delete(etcd, keys.api_key_key(key_id), f"key {key_id!r}")
    console.print(f"key {key_id} revoked")


@policy_app.command("allow")
@cli_errors
def allow(
    models: Annotated[str, typer.Option(help="model name patterns, comma-separated (e.g. 'iris,fraud-*' or '*')")],
    actions: Annotated[str, typer.Option(help=f"comma-separated, of: {', '.join(ACTIONS)}")],
    principal: Annotated[str, typer.Option(help=f"a principal, or {ANONYMOUS_NAME!r} for callers without a key")] = "",
    role: Annotated[str, typer.Option(help="a role instead of a principal")] = "",
    etcd: EtcdOption = "",
) -> None:
    """Add an allow rule; every router applies it within a second."""
    if bool(principal) == bool(role):
        raise InvalidArgument("give exactly one of --principal and --role")
    if principal and principal != ANONYMOUS_NAME:
        apikeys.check_name("principal", principal)
    if role:
        apikeys.check_name("role", role)
    wanted = [a.strip() for a in actions.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in ACTIONS]
    if unknown or not wanted:
        raise InvalidArgument(f"unknown action {', '.join(unknown) or '(none given)'}; actions: {', '.join(ACTIONS)}")
    patterns = [m.strip() for m in models.split(",") if m.strip()]
    if not patterns:
        raise InvalidArgument("give at least one model pattern")
    rule = auth_pb2.AccessRule(id=secrets.token_hex(6), principal=principal, role=role, models=patterns,
                               actions=wanted, created_unix_ms=int(time.time() * 1000))
    _store(etcd, keys.access_rule_key(rule.id), rule)
    console.print(_rules_table([rule]))


def _rules_table(rules: list[auth_pb2.AccessRule]) -> Table:
    table = Table("rule", "who", "models", "actions", "created", title="allow rules")
    for r in sorted(rules, key=lambda r: r.created_unix_ms):
        table.add_row(r.id, f"principal {r.principal}" if r.principal else f"role {r.role}", ", ".join(r.models),
                      ", ".join(r.actions), _when(r.created_unix_ms))
    return table


@policy_app.command("list")
@cli_errors
def list_rules(etcd: EtcdOption = "") -> None:
    """List the allow rules (anything they do not allow is denied)."""
    found = with_etcd(etcd, lambda c: read_records(c, keys.ACCESS_RULES, keys.parse_access_rule_key,
                                                   auth_pb2.AccessRule))
    console.print(_rules_table(list(found.values())))


@policy_app.command("rm")
@cli_errors
def remove_rule(rule_id: Annotated[str, typer.Argument(help="the rule id (`policy list`)")],
                etcd: EtcdOption = "") -> None:
    """Remove an allow rule."""
    _delete(etcd, keys.access_rule_key(rule_id), f"rule {rule_id!r}")
    console.print(f"rule {rule_id} removed")


@policy_app.command("rate")
@cli_errors
def set_rate(
    principal: Annotated[str, typer.Option(help=f"a principal, or {ANONYMOUS_NAME!r}")],
    calls_per_second: Annotated[float, typer.Option(min=0, help="sustained rate; 0 removes the limit")],
    burst: Annotated[int, typer.Option(min=1, help="calls allowed at once above the rate")] = 10,
    etcd: EtcdOption = "",
) -> None:
    """Limit PRINCIPAL's ModelInfer calls across all routers; over it, calls get RESOURCE_EXHAUSTED.

    The live routers share the rate and burst evenly: spread the principal's calls over them.
    """
    if principal != ANONYMOUS_NAME:
        apikeys.check_name("principal", principal)
    limit = auth_pb2.RateLimit(principal=principal, calls_per_second=calls_per_second, burst=burst)
    _store(etcd, keys.rate_limit_key(principal), limit if calls_per_second else None)
    console.print(f"{principal}: {f'{calls_per_second:g} calls/s, burst {burst}' if calls_per_second else 'no limit'}")


@policy_app.command("model-limits")
@cli_errors
def set_model_limits(
    model: Annotated[str, typer.Argument(help="model name")],
    max_request_bytes: Annotated[int, typer.Option(min=0, help="largest request (0: no limit)")] = 0,
    max_elements: Annotated[int, typer.Option(min=0, help="most tensor elements in one request")] = 0,
    max_batch: Annotated[int, typer.Option(min=0, help="largest first dimension of an input")] = 0,
    etcd: EtcdOption = "",
) -> None:
    """Set what one request to MODEL may carry (all zero removes the limits)."""
    check_model_name(model)
    limits = auth_pb2.ModelLimits(model=model, max_request_bytes=max_request_bytes, max_elements=max_elements,
                                  max_batch=max_batch)
    _store(etcd, keys.model_limits_key(model), limits if max_request_bytes or max_elements or max_batch else None)
    console.print(f"{model}: max request bytes {max_request_bytes or '-'}, max elements {max_elements or '-'}, "
                  f"max batch {max_batch or '-'}")
