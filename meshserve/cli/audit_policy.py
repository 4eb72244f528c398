"""``meshserve audit policy``: how the mesh audits each model (kept in etcd)."""

from __future__ import annotations

from typing import Annotated

import aetcd
import typer
from google.protobuf import json_format

from meshserve.cli.common import EtcdOption, cli_errors, console
from meshserve.cli.text import Table
from meshserve.names import check_model_name
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.registry import keys
from meshserve.registry.etcd import read_records, with_etcd

policy_app = typer.Typer(help="Per-model audit policy: payload capture, redaction, strict mode.",
                         no_args_is_help=True)



def _read(etcd: str, model: str) -> dict[str, audit_pb2.AuditPolicy]:
    async def read(client: aetcd.Client) -> dict[str, audit_pb2.AuditPolicy]:
        policies = await read_records(client, keys.AUDIT_POLICIES, keys.parse_audit_policy_key,
                                      audit_pb2.AuditPolicy)
        return {m: p for m, p in policies.items() if not model or m == model}
    return with_etcd(etcd, read)


def _write(etcd: str, model: str, policy: audit_pb2.AuditPolicy | None) -> None:
    async def write(client: aetcd.Client) -> None:
        if policy is None:
            await client.delete(keys.audit_policy_key(model))
        else:
            await client.put(keys.audit_policy_key(model), policy.SerializeToString())
    with_etcd(etcd, write)


def _table(policies: dict[str, audit_pb2.AuditPolicy]) -> Table:
    table = Table(title="audit policies")
    for column in ("model", "capture payloads", "max payload bytes", "redacted inputs", "strict"):
        table.add_column(column)
    for model, p in sorted(policies.items()):
        table.add_row(model, "yes" if p.capture_payloads else "no", str(p.max_payload_bytes or "router default"),
                      ", ".join(p.redact_inputs) or "-", "yes" if p.strict else "no")
    return table


@policy_app.command("set")
@cli_errors
def set_policy(
    model: Annotated[str, typer.Argument(help="model name")],
    capture: Annotated[bool, typer.Option(help="store tensors, not only their digests")] = False,
    max_payload_bytes: Annotated[int, typer.Option(min=0, help="largest tensor stored (0: router default)")] = 0,
    redact: Annotated[list[str] | None, typer.Option(help="an input never stored (repeatable)")] = None,
    strict: Annotated[bool, typer.Option(help="refuse calls whose event cannot be durably queued")] = False,
    etcd: EtcdOption = "",
) -> None:
    """Set MODEL's audit policy; routers apply it within a second."""
    check_model_name(model)
    policy = audit_pb2.AuditPolicy(capture_payloads=capture, max_payload_bytes=max_payload_bytes,
                                   redact_inputs=redact or [], strict=strict)
    _write(etcd, model, policy)
    console.print(_table({model: policy}))


@policy_app.command("show")
@cli_errors
def show_policy(
    model: Annotated[str, typer.Argument(help="only this model")] = "",
    json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    etcd: EtcdOption = "",
) -> None:
    """Show the audit policies set (models without one are audited with digests only)."""
    policies = _read(etcd, model)
    if json:
        for name, p in sorted(policies.items()):
            console.print_json(data={"model": name, **json_format.MessageToDict(p)})
    else:
        console.print(_table(policies))


@policy_app.command("clear")
@cli_errors
def clear_policy(model: Annotated[str, typer.Argument(help="model name")], etcd: EtcdOption = "") -> None:
    """Remove MODEL's policy: back to digests only, not strict."""
    _write(etcd, check_model_name(model), None)
    console.print(f"audit policy of {model!r} cleared")
