"""What the CLI prints of what peers send: escaped, one line per row, never markup."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from meshserve.cli.audit import record_json, records_table, tail_line
from meshserve.cli.tables import models_table
from meshserve.cli.text import Table, printable
from meshserve.protos.meshserve.audit.v1 import audit_pb2
from meshserve.protos.meshserve.registry.v1 import registry_pb2 as reg

SPOOFED = "iris\u202egnp.exe"


@pytest.mark.parametrize(("raw", "shown"), [
    ("iris", "iris"),
    ("modèle 名前", "modèle 名前"),  # printable letters of any script stay
    (SPOOFED, "iris\\u202egnp.exe"),
    ("a\nb\r\tc", "a\\nb\\r\\tc"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("del\x7f nul\0", "del\\x7f nul\\x00"),
    ("\u2066isolated\u2069 \u200e\u200f \u061c", "\\u2066isolated\\u2069 \\u200e\\u200f \\u061c"),
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("nb\u00a0sp", "nb\\xa0sp"),
    ("tag\U000e0041", "tag\\U000e0041"),
    ("back\\u202e", "back\\\\u202e"),  # typed characters are told apart from an escape
])
def test_printable_escapes_what_a_terminal_would_not_show_as_itself(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_keeps_the_lines_and_backslashes_of_prose() -> None:
    assert printable("one\ntwo\u202e\r 'x\\n'", prose=True) == "one\ntwo\\u202e\\r 'x\\n'"


@given(st.text(max_size=100))
def test_printable_output_is_printable_and_one_line(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert shown == text or "\\" in shown


def render(table: Table, width: int = 250) -> list[str]:
    console = Console(width=width, record=True)
    console.print(table)
    return console.export_text().splitlines()


def test_table_cells_are_escaped_and_never_markup() -> None:
    table = Table("a", "b")
    table.add_row("[bold]x[/bold]", "one\ntwo")
    lines = render(table)
    assert len(lines) == 5  # top border, header, rule, one row, bottom border
    assert "[bold]x[/bold]" in lines[3] and "one\\ntwo" in lines[3]


def _record(model: str, request_id: str = "r-1", principal: str = "alice") -> audit_pb2.AuditRecord:
    return audit_pb2.AuditRecord(sequence=7, event=audit_pb2.CallEvent(
        model=model, request_id=request_id, principal=principal, start_unix_nanos=1_800_000_000 * 10**9,
        status_code=5, requested_version="1\n8 2026-12-02 forged"))


def test_audit_table_and_tail_escape_every_field() -> None:
    record = _record(SPOOFED, principal="eve\u202e")
    lines = render(records_table([record]))
    assert len(lines) == 6  # title, top border, header, rule, one row, bottom border
    assert "iris\\u202egnp.exe" in lines[4] and "eve\\u202e" in lines[4] and "1\\n8 2026-12-02 forged" in lines[4]
    assert "\u202e" not in "".join(lines)
    line = tail_line(record)
    assert "\n" not in line.plain and "\u202e" not in line.plain
    assert "iris\\u202egnp.exe" in line.plain and "NOT_FOUND" in line.plain


def test_json_output_stays_exact() -> None:
    record = _record(SPOOFED)
    assert json.loads(record_json(record))["event"]["model"] == SPOOFED
    assert "\u202e" not in record_json(record)  # JSON escapes it by itself


def test_registry_tables_escape_names_and_reasons() -> None:
    failed = reg.Placement(model=SPOOFED, version="1", runtime_id="r", runtime_kind="python",
                           state=reg.MODEL_STATE_FAILED, reason="bad\u202e\x1b[2J")
    text = "\n".join(render(models_table([failed])))
    assert "iris\\u202egnp.exe" in text and "bad\\u202e\\x1b[2J" in text and "\x1b" not in text
