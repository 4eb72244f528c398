"""The audit store's tables, as numbered migrations rendered for each SQL dialect."""

from __future__ import annotations

from dataclasses import dataclass

from .chain import GENESIS_HASH
from .events import COLUMNS, INTEGER_COLUMNS


@dataclass(frozen=True)
class Types:
    """The few type names that differ between dialects."""

    blob: str
    auto_id: str


def _column_defs() -> str:
    return ",\n".join(
        f"  {name} {'BIGINT' if name in INTEGER_COLUMNS else 'TEXT'} NOT NULL"
        + (" UNIQUE" if name == "event_id" else "")
        for name in COLUMNS
    )


_V1 = [
    f"""CREATE TABLE records (
  sequence BIGINT PRIMARY KEY,
{_column_defs()},
  event {{blob}} NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL,
  stored_unix_nanos BIGINT NOT NULL
)""",
    "CREATE INDEX records_model ON records (model, sequence)",
    "CREATE INDEX records_principal ON records (principal, sequence)",
    "CREATE INDEX records_request_id ON records (request_id)",
    "CREATE INDEX records_start ON records (start_unix_nanos)",
    """CREATE TABLE chain_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  last_sequence BIGINT NOT NULL,
  hash TEXT NOT NULL
)""",
    f"INSERT INTO chain_head (id, last_sequence, hash) VALUES (1, 0, '{GENESIS_HASH}')",  # noqa: S608 - a constant
    """CREATE TABLE quarantine (
  id {auto_id},
  subject TEXT NOT NULL,
  data {blob} NOT NULL,
  error TEXT NOT NULL,
  received_unix_nanos BIGINT NOT NULL
)""",
]

# Numbered migrations, applied in order, each once (schema_version records which ran).
MIGRATIONS: list[tuple[int, list[str]]] = [(1, _V1)]


def migrations(types: Types) -> list[tuple[int, list[str]]]:
    """Every migration with the dialect's type names filled in."""
    return [(number, [s.format(blob=types.blob, auto_id=types.auto_id) for s in statements])
            for number, statements in MIGRATIONS]
