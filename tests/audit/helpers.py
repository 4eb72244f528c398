"""Helpers for the audit tests: call events, publishing them, polling, tampering with a database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg

from meshserve.audit.stream import SUBJECT
from meshserve.protos.meshserve.audit.v1 import audit_pb2

T = TypeVar("T")
BASE_NANOS = 1_800_000_000 * 10**9
MODELS = ("iris", "mtcars", "simple")


def make_event(i: int, **fields: Any) -> audit_pb2.CallEvent:
    """Event ``i`` of a deterministic mix: models, versions, principals and statuses vary with ``i``."""
    values: dict[str, Any] = {
        "event_id": f"ev-{i:06d}-{uuid.uuid4().hex[:8]}", "request_id": f"req-{i}", "principal": f"user{i % 2}",
        "peer": "ipv4:127.0.0.1:5000", "model": MODELS[i % 3], "requested_version": "" if i % 2 else "1",
        "resolved_version": str(1 + i % 2), "runtime_kind": "python", "runtime_id": "py-1",
        "start_unix_nanos": BASE_NANOS + i * 10**9, "duration_nanos": 1_500_000 + i,
        "status_code": 5 if i % 5 == 4 else 0, "status_message": "model not found" if i % 5 == 4 else "",
        "input_digest": f"{i:064x}", "output_digest": f"{i + 1:064x}", "input_bytes": 100 + i, "output_bytes": 50,
        "method": "ModelInfer", "router_id": "router-1",
    }
    values.update(fields)
    return audit_pb2.CallEvent(**values)


def encode(event: audit_pb2.CallEvent) -> bytes:
    return event.SerializeToString(deterministic=True)


async def publish(js: Any, events: Sequence[audit_pb2.CallEvent], msg_id_suffix: str = "") -> None:
    for event in events:
        await js.publish(SUBJECT, encode(event), headers={"Nats-Msg-Id": event.event_id + msg_id_suffix})


async def eventually(check: Callable[[], Awaitable[T]], within: float = 15.0, interval: float = 0.05) -> T:
    """Await ``check`` until it stops raising AssertionError; its last error after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(interval)


def execute(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the database behind the store's back (``?`` placeholders)."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(sql, params).fetchall()
        conn.close()
        return rows
    with psycopg.connect(url, autocommit=True) as pg:
        cur = pg.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []
