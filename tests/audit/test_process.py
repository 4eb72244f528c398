"""The audit service as a process: killed mid-load and restarted, failing fast, and the CLI against it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from typer.testing import CliRunner

from meshserve.cli.main import app
from meshserve.local.nats import NatsServer
from meshserve.local.process import ManagedProcess, start_service
from meshserve.services.audit.store import Incoming, Store

from .helpers import encode, eventually, execute, make_event, publish


def audit_process(folder: Path, name: str, nats_url: str, database: str) -> tuple[ManagedProcess, str]:
    proc, info = start_service(name, "meshserve.services.audit", [
        "--port", "0", "--nats-url", nats_url, "--database", database, "--ack-wait-s", "1", "--batch-size", "100",
        "--dev-mode"], folder, timeout=30)
    return proc, str(info["address"])


@pytest.mark.slow
async def test_killed_mid_load_and_restarted_every_event_stored_once(nats_server: NatsServer, tmp_path: Path,
                                                                    sqlite_url: str) -> None:
    total = 5000
    first, _ = audit_process(tmp_path, "audit-1", nats_server.url, sqlite_url)
    second: ManagedProcess | None = None
    nc = await nats.connect(nats_server.url)
    try:
        async def subscribed() -> None:
            names = [c.name for c in await _consumers(nc)]
            assert "audit-store" in names

        await eventually(subscribed, within=20)
        events = [make_event(i) for i in range(total)]
        await publish(nc.jetstream(), events)  # all queued at once: the consumer is busy when it dies

        async def some_stored() -> None:
            assert _count(sqlite_url) >= 300

        await eventually(some_stored, within=20)
        first.kill(signal.SIGKILL)
        first.stop()
        second, _ = audit_process(tmp_path, "audit-2", nats_server.url, sqlite_url)

        async def all_stored() -> None:
            assert _count(sqlite_url) == total

        await eventually(all_stored, within=30)
        await asyncio.sleep(1.5)  # past ack_wait: a late redelivery would show up now
        rows = execute(sqlite_url, "SELECT COUNT(*), COUNT(DISTINCT event_id), MIN(sequence), MAX(sequence) "
                                   "FROM records")
        assert rows[0] == (total, total, 1, total)
        stored_ids = {r[0] for r in execute(sqlite_url, "SELECT event_id FROM records")}
        assert stored_ids == {e.event_id for e in events}
    finally:
        await nc.close()
        first.stop()
        if second is not None:
            second.stop()
    store = Store.open(sqlite_url)
    try:
        assert store.verify().ok
    finally:
        store.close()


async def _consumers(nc: Any) -> list[Any]:
    try:
        return list(await nc.jetstream().consumers_info("MESHSERVE_AUDIT"))
    except Exception:
        return []


def _count(url: str) -> int:
    try:
        return int(execute(url, "SELECT COUNT(*) FROM records")[0][0])
    except Exception:
        return 0


def test_an_unusable_database_stops_the_service_at_once(tmp_path: Path) -> None:
    proc = ManagedProcess("audit", [sys.executable, "-m", "meshserve.services.audit", "--port", "0",
                                    "--database", "sqlite:////no/such/dir/audit.db"], tmp_path / "audit.log")
    proc.start()
    assert proc.proc is not None
    assert proc.proc.wait(30) == 1
    proc.stop()
    assert "directory does not exist" in (tmp_path / "audit.log").read_text()


@pytest.fixture
def running_audit(nats_server: NatsServer, tmp_path: Path, sqlite_url: str) -> Iterator[tuple[str, str]]:
    """A prefilled SQLite trail served by an audit service process: (address, database url)."""
    store = Store.open(sqlite_url)
    store.ingest([Incoming(encode(make_event(i)), "s") for i in range(12)])
    store.close()
    proc, address = audit_process(tmp_path, "audit", nats_server.url, sqlite_url)
    yield address, sqlite_url
    proc.stop()


runner = CliRunner()


def test_cli_query_verify_export(running_audit: tuple[str, str], tmp_path: Path) -> None:
    address, url = running_audit
    table = runner.invoke(app, ["audit", "query", "--model", "iris", "--audit", address])
    assert table.exit_code == 0, table.output
    assert "iris" in table.stdout and "mtcars" not in table.stdout

    lines = runner.invoke(app, ["audit", "query", "--status", "NOT_FOUND", "--json", "--audit", address])
    assert lines.exit_code == 0, lines.output
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [r["event"]["request_id"] for r in records] == ["req-4", "req-9"]
    assert records[0]["sequence"] == "5" and records[0]["event"]["status_code"] == 5

    ok = runner.invoke(app, ["audit", "verify", "--audit", address])
    assert ok.exit_code == 0 and "OK: 12 records" in ok.stdout

    out = tmp_path / "trail.jsonl"
    exported = runner.invoke(app, ["audit", "export", "--output", str(out), "--audit", address])
    assert exported.exit_code == 0, exported.output
    assert [json.loads(line)["sequence"] for line in out.read_text().splitlines()] == [str(i) for i in range(1, 13)]
    stdout_export = runner.invoke(app, ["audit", "export", "--principal", "user1", "--audit", address])
    assert len(stdout_export.stdout.splitlines()) == 6

    execute(url, "UPDATE records SET principal = 'mallory' WHERE sequence = 7")
    bad = runner.invoke(app, ["audit", "verify", "--audit", address])
    assert bad.exit_code == 1
    assert "record 7 does not fit the chain" in bad.output and "column principal" in bad.output


def test_cli_errors_are_one_line(running_audit: tuple[str, str]) -> None:
    address, _ = running_audit
    bad = runner.invoke(app, ["audit", "query", "--status", "MAYBE", "--audit", address])
    assert bad.exit_code == 1
    assert "INVALID_ARGUMENT: unknown status 'MAYBE'" in bad.output
    when = runner.invoke(app, ["audit", "query", "--since", "yesterday-ish", "--audit", address])
    assert when.exit_code == 1 and "cannot read time 'yesterday-ish'" in when.output
    gone = runner.invoke(app, ["audit", "verify", "--audit", "127.0.0.1:1"])
    assert gone.exit_code == 1 and "cannot reach the audit service at 127.0.0.1:1" in gone.output
