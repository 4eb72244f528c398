"""Query filters: checked and translated from a QueryRequest, and turned into SQL."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from meshserve.errors import InvalidArgument
from meshserve.names import check_request_id
from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .events import STATUS_CODES

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
_TOKEN_PREFIX = "seq:"  # noqa: S105 - a page token, not a secret
_WILDCARDS = frozenset("*?[")


def like_pattern(pattern: str) -> str:
    """A LIKE pattern (escape ``\\``) matching every name the shell-style ``pattern`` matches, maybe more.

    ``*`` and ``?`` translate exactly; a ``[...]`` class and whatever follows it become
    ``%``. SQLite's LIKE also ignores ASCII case. The servicer checks every row it returns
    against the access rules themselves, so matching more only costs rows read.
    """
    out: list[str] = []
    for char in pattern:
        if char == "[":
            out.append("%")
            break
        if char in "%_\\":
            out.append("\\" + char)
        else:
            out.append({"*": "%", "?": "_"}.get(char, char))
    return "".join(out)


@dataclass(frozen=True)
class Filter:
    """Every condition a record must meet; None or "" means any."""

    model: str = ""
    version: str = ""
    principal: str = ""
    status_code: int | None = None
    since_unix_nanos: int = 0
    until_unix_nanos: int = 0
    request_id: str = ""
    trace_id: str = ""
    # Shell-style patterns of the models the caller may read; None: every model.
    readable: tuple[str, ...] | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        """SQL conditions (``?`` placeholders) and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("model", self.model), ("resolved_version", self.version),
                              ("principal", self.principal), ("request_id", self.request_id),
                              ("trace_id", self.trace_id)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.status_code is not None:
            clauses.append("status_code = ?")
            params.append(self.status_code)
        if self.since_unix_nanos:
            clauses.append("start_unix_nanos >= ?")
            params.append(self.since_unix_nanos)
        if self.until_unix_nanos:
            clauses.append("start_unix_nanos < ?")
            params.append(self.until_unix_nanos)
        if self.readable is not None:
            names = [p for p in self.readable if not _WILDCARDS.intersection(p)]
            likes = [like_pattern(p) for p in self.readable if _WILDCARDS.intersection(p)]
            alternatives = ["model = ?"] * len(names) + ["model LIKE ? ESCAPE '\\'"] * len(likes)
            clauses.append(f"({' OR '.join(alternatives)})" if alternatives else "1 = 0")
            params += [*names, *likes]
        return clauses, params


def encode_page_token(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{sequence}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The sequence a page token continues after; InvalidArgument when it is not one of ours."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        if not text.startswith(_TOKEN_PREFIX):
            raise ValueError(text)
        sequence = int(text.removeprefix(_TOKEN_PREFIX))
        if sequence < 0:
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            f"page_token {token!r} is malformed: pass back a next_page_token exactly as a Query returned it"
        ) from None
    return sequence


def parse_request(request: audit_pb2.QueryRequest) -> tuple[Filter, int, int]:
    """(filter, sequence to continue after, page size) for a request; InvalidArgument on a bad filter."""
    status_code: int | None = None
    if request.status:
        name = request.status.strip().upper()
        if name not in STATUS_CODES:
            raise InvalidArgument(
                f"unknown status {request.status!r}; use a gRPC status name: {', '.join(STATUS_CODES)}"
            )
        status_code = STATUS_CODES[name]
    if request.limit < 0:
        raise InvalidArgument(f"limit must be positive (or 0 for the default {DEFAULT_LIMIT}); got {request.limit}")
    if request.limit > MAX_LIMIT:
        raise InvalidArgument(f"limit {request.limit} is over the maximum {MAX_LIMIT}: page with page_token")
    if request.since_unix_nanos < 0 or request.until_unix_nanos < 0:
        raise InvalidArgument("since_unix_nanos and until_unix_nanos must not be negative")
    if request.since_unix_nanos and request.until_unix_nanos and request.since_unix_nanos > request.until_unix_nanos:
        raise InvalidArgument(
            f"since ({request.since_unix_nanos}) is after until ({request.until_unix_nanos}): the range is empty"
        )
    flt = Filter(
        model=request.model, version=request.version, principal=request.principal, status_code=status_code,
        since_unix_nanos=request.since_unix_nanos, until_unix_nanos=request.until_unix_nanos,
        request_id=check_request_id(request.request_id, "request_id filter"), trace_id=request.trace_id.strip().lower(),
    )
    return flt, decode_page_token(request.page_token), request.limit or DEFAULT_LIMIT
