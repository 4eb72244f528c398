"""``meshserve audit``: query, follow, verify and export the audit trail.

    meshserve audit query --model iris --since 1h       # a table of matching calls
    meshserve audit query --status NOT_FOUND --json     # one JSON object per line
    meshserve audit tail                                # new calls as they are recorded
    meshserve audit verify                              # check the hash chain
    meshserve audit export --output trail.jsonl         # every matching record

Calls carry ``$MESHSERVE_API_KEY``; the audit service shows the calls of the models the
key may ``audit:read``, and ``verify`` needs ``audit:read`` on ``*``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ParamSpec, TextIO, TypeVar

import grpc
import typer
from google.protobuf import json_format
from rich.text import Text

from meshserve.cli.audit_policy import policy_app
from meshserve.cli.common import (
    API_KEY_ENV,
    AUDIT,
    UserError,
    channel,
    cli_errors,
    console,
    describe_rpc_error,
    fail,
    mesh_address,
)
from meshserve.cli.text import Table, plain
from meshserve.errors import from_rpc_error
from meshserve.protos.meshserve.audit.v1 import audit_pb2, audit_pb2_grpc

EXPORT_PAGE = 10_000

audit_app = typer.Typer(help="Query, follow, verify and export the audit trail.", no_args_is_help=True)
audit_app.add_typer(policy_app, name="policy")



def _audit(given: str) -> str:
    return mesh_address(AUDIT, given)


AuditOption = Annotated[str, typer.Option(
    "--audit", envvar=AUDIT.env, callback=_audit,
    help="audit service host:port (default: the audit service of the mesh `meshserve up` runs)")]
ModelOpt = Annotated[str, typer.Option("--model", help="only calls to this model")]
VersionOpt = Annotated[str, typer.Option("--version", help="only calls served by this version")]
PrincipalOpt = Annotated[str, typer.Option("--principal", help="only calls by this caller")]
StatusOpt = Annotated[str, typer.Option("--status", help="only calls ending with this gRPC status (OK, NOT_FOUND...)")]
SinceOpt = Annotated[str, typer.Option("--since", help="calls started at or after: ISO 8601 or 10m, 2h, 1d ago")]
UntilOpt = Annotated[str, typer.Option("--until", help="calls started before: ISO 8601 or 10m, 2h, 1d ago")]
RequestIdOpt = Annotated[str, typer.Option("--request-id", help="only the call(s) with this request id")]
TraceIdOpt = Annotated[str, typer.Option(
    "--trace-id", help="only the calls of this trace (32 hex digits, as a tracing backend shows it)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object per line instead of a table")]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

P = ParamSpec("P")
R = TypeVar("R")


def parse_time(text: str, now_s: float | None = None) -> int:
    """Unix nanoseconds for ISO 8601 (local time when no offset is given) or a span ago like ``10m``."""
    if not text:
        return 0
    now = time.time() if now_s is None else now_s
    match = _RELATIVE.match(text.strip())
    if match:
        return int((now - float(match.group(1)) * _UNIT_S[match.group(2)]) * 1e9)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"cannot read time {text!r}: use ISO 8601 (2026-11-05T14:30) or a span ago (30s, 10m, 2h, 1d)"
                        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1e9)


def audit_errors(command: Callable[P, R]) -> Callable[P, R]:
    """One line on stderr and exit 1 for an unreachable audit service or a refused request.

    Every call goes through :func:`channel`, so it carries ``$MESHSERVE_API_KEY``: reading
    the trail needs a key allowed ``audit:read`` (except on a dev-mode audit service).
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except grpc.RpcError as e:
            error = from_rpc_error(e)
            target = str(kwargs.get("audit", ""))  # as resolved by the option
            if error.code == grpc.StatusCode.UNAVAILABLE:
                fail(f"cannot reach the audit service at {target} (is it running?): {error.message}")
            if error.code == grpc.StatusCode.UNAUTHENTICATED and not os.environ.get(API_KEY_ENV, "").strip():
                fail(f"{error.code.name}: {error.message}; set {API_KEY_ENV} to a key allowed audit:read "
                     f"(from the audit service at {target})")
            fail(describe_rpc_error(e, target, AUDIT))

    return cli_errors(wrapper)


def _request(model: str, version: str, principal: str, status: str, since: str, until: str, request_id: str,
             limit: int, follow: bool = False, trace_id: str = "") -> audit_pb2.QueryRequest:
    trace_id = trace_id.strip().lower()
    if trace_id and not re.fullmatch(r"[0-9a-f]{32}", trace_id):
        raise UserError(f"--trace-id {trace_id!r} is not a trace id: 32 hexadecimal digits")
    return audit_pb2.QueryRequest(
        model=model, version=version, principal=principal, status=status, since_unix_nanos=parse_time(since),
        until_unix_nanos=parse_time(until), request_id=request_id, limit=limit, follow=follow, trace_id=trace_id,
    )


def _records(audit: str, request: audit_pb2.QueryRequest, timeout: float | None) -> Iterator[audit_pb2.AuditRecord]:
    with channel(audit) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        for response in stub.Query(request, timeout=timeout):
            yield response.record


def _all_pages(audit: str, request: audit_pb2.QueryRequest) -> Iterator[audit_pb2.AuditRecord]:
    with channel(audit) as ch:
        stub = audit_pb2_grpc.AuditServiceStub(ch)
        while True:
            token = ""
            for response in stub.Query(request, timeout=60.0):
                token = response.next_page_token or token
                yield response.record
            if not token:
                return
            request.page_token = token


def record_json(record: audit_pb2.AuditRecord) -> str:
    return json.dumps(json_format.MessageToDict(record, preserving_proto_field_name=True), separators=(",", ":"))


def _status_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


def record_row(record: audit_pb2.AuditRecord) -> list[str]:
    e = record.event
    started = datetime.fromtimestamp(e.start_unix_nanos / 1e9, UTC).astimezone()
    version = f"{e.requested_version or '-'}→{e.resolved_version or '-'}"
    return [str(record.sequence), started.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.principal, e.model, version,
            _status_name(e.status_code), f"{e.duration_nanos / 1e6:.2f}", e.input_digest[:12] or "-",
            e.output_digest[:12] or "-", e.request_id]


def tail_line(record: audit_pb2.AuditRecord) -> Text:
    """One record as one line of ``audit tail``: its fields escaped, so none can break the line or reorder it."""
    return plain("  ".join(record_row(record)))


def records_table(records: list[audit_pb2.AuditRecord]) -> Table:
    table = Table("seq", "time", "principal", "model", "version", "status", "ms", "input", "output", "request id",
                  title="audit trail")
    for record in records:
        table.add_row(*record_row(record))
    return table


@audit_app.command()
@audit_errors
def query(model: ModelOpt = "", version: VersionOpt = "", principal: PrincipalOpt = "", status: StatusOpt = "",
          since: SinceOpt = "", until: UntilOpt = "", request_id: RequestIdOpt = "", trace_id: TraceIdOpt = "",
          limit: Annotated[int, typer.Option("--limit", help="at most this many records (max 10000)")] = 100,
          as_json: JsonOpt = False, audit: AuditOption = "") -> None:
    """Recorded calls matching every filter, oldest first."""
    request = _request(model, version, principal, status, since, until, request_id, limit, trace_id=trace_id)
    records = list(_records(audit, request, timeout=60.0))
    if as_json:
        for record in records:
            print(record_json(record))
    else:
        console.print(records_table(records))


@audit_app.command()
@audit_errors
def tail(model: ModelOpt = "", version: VersionOpt = "", principal: PrincipalOpt = "", status: StatusOpt = "",
         limit: Annotated[int, typer.Option("--limit", help="recent records shown before following")] = 10,
         as_json: JsonOpt = False, audit: AuditOption = "") -> None:
    """The most recent matching calls, then each new one as it is recorded, until Ctrl-C."""
    request = _request(model, version, principal, status, "", "", "", limit, follow=True)
    try:
        for record in _records(audit, request, timeout=None):
            if as_json:
                print(record_json(record), flush=True)
            else:
                console.print(tail_line(record), soft_wrap=True)
    except KeyboardInterrupt:
        return


@audit_app.command()
@audit_errors
def verify(audit: AuditOption = "",
           timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the check")] = 600.0) -> None:
    """Check the hash chain; names the first record that was altered, inserted or removed (exit 1)."""
    with channel(audit) as ch:
        response = audit_pb2_grpc.AuditServiceStub(ch).Verify(audit_pb2.VerifyRequest(), timeout=timeout)
    if response.ok:
        console.print(f"[bold green]OK[/]: {response.records_checked} records, head hash {response.head_hash}")
        return
    fail(f"record {response.first_bad_sequence} does not fit the chain: {response.problem} "
         f"({response.records_checked} records checked before it, by the audit service at {audit})")


@audit_app.command()
@audit_errors
def export(model: ModelOpt = "", version: VersionOpt = "", principal: PrincipalOpt = "", status: StatusOpt = "",
           since: SinceOpt = "", until: UntilOpt = "", request_id: RequestIdOpt = "", trace_id: TraceIdOpt = "",
           output: Annotated[Path | None, typer.Option("--output", "-o", help="write here, not to stdout")] = None,
           audit: AuditOption = "") -> None:
    """Every matching record as JSON lines, paging through the whole trail."""
    request = _request(model, version, principal, status, since, until, request_id, EXPORT_PAGE, trace_id=trace_id)
    out: TextIO = output.open("w") if output else sys.stdout
    try:
        count = 0
        for record in _all_pages(audit, request):
            out.write(record_json(record) + "\n")
            count += 1
    finally:
        if output:
            out.close()
    if output:
        console.print(f"exported {count} records to {output}")
