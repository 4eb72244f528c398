# ruff: noqa: S608 - SQL is assembled from constant column names; values always go as parameters
"""The audit store: one interface over SQLite or PostgreSQL, writing hash-chained records.

Every method is blocking; the service calls them through ``asyncio.to_thread``. Writes
go through one connection and reads through another, each used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .chain import ChainRow, Verdict, link_hash, verify_rows
from .dialects import Dialect, StoreError, dialect_for
from .events import COLUMNS, BadEvent, columns, decode
from .query import Filter
from .schema import migrations

log = logging.getLogger(__name__)

_INSERT_COLUMNS = ("sequence", *COLUMNS, "event", "prev_hash", "hash", "stored_unix_nanos")
_RECORD_FIELDS = "sequence, event, hash, prev_hash, stored_unix_nanos, model"
_VERIFY_CHUNK = 2000
_ID_CHUNK = 500


@dataclass(frozen=True)
class Incoming:
    """One message from the stream: its bytes exactly as received, and its subject."""

    data: bytes
    subject: str


@dataclass(frozen=True)
class StoredRecord:
    sequence: int
    event: bytes
    hash: str
    prev_hash: str
    stored_unix_nanos: int
    model: str  # the event's model, for checking who may read it


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (subject, error)


@dataclass(frozen=True)
class QuarantinedMessage:
    subject: str
    data: bytes
    error: str
    received_unix_nanos: int


class _Connection:
    """One connection, its lock, and reconnection after the server dropped it."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.lock = threading.Lock()
        self._conn: Any = dialect.connect()

    @contextlib.contextmanager
    def transaction(self, begin: str) -> Iterator[Any]:
        with self.lock:
            if self._conn is None or self.dialect.broken(self._conn):
                self._conn = self.dialect.connect()
            conn = self._conn
            conn.execute(begin)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Store:
    """The trail: ingest events in batches, query them, verify the chain."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._writer = _Connection(dialect)
        try:
            self._migrate()
            self._reader = _Connection(dialect)
        except Exception:
            self._writer.close()
            raise

    @classmethod
    def open(cls, url: str) -> Store:
        """Open (creating and migrating if needed) the database at ``url``; StoreError if unusable."""
        try:
            return cls(dialect_for(url))
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"cannot use database {dialect_for(url).describe()}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    def _q(self, text: str) -> str:
        return self.dialect.sql(text)

    def _migrate(self) -> None:
        with self._writer.transaction(self.dialect.begin_write) as conn:
            if self.dialect.lock_migrations:
                conn.execute(self.dialect.lock_migrations)
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                         "(version INTEGER PRIMARY KEY, applied_unix_nanos BIGINT NOT NULL)")
            done = {row[0] for row in conn.execute("SELECT version FROM schema_version").fetchall()}
            for number, statements in migrations(self.dialect.types):
                if number in done:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(self._q("INSERT INTO schema_version (version, applied_unix_nanos) VALUES (?, ?)"),
                             (number, time.time_ns()))
                log.info("applied audit store migration %d (%s)", number, self.dialect.name)

    def schema_version(self) -> int:
        with self._reader.transaction(self.dialect.begin_read) as conn:
            return int(conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # ---- writing

    def ingest(self, messages: Sequence[Incoming]) -> IngestResult:
        """Store a batch in one transaction: new events chained, duplicates skipped, bad ones quarantined."""
        result = IngestResult()
        now = time.time_ns()
        accepted: dict[str, tuple[Any, bytes]] = {}
        quarantine: list[tuple[str, bytes, str, int]] = []
        for message in messages:
            try:
                event = decode(message.data)
            except BadEvent as e:
                quarantine.append((message.subject, message.data, str(e), now))
                result.quarantined.append((message.subject, str(e)))
                continue
            if event.event_id in accepted:
                result.duplicates += 1
            else:
                accepted[event.event_id] = (event, message.data)
        with self._writer.transaction(self.dialect.begin_write) as conn:
            head = conn.execute(self._q("SELECT last_sequence, hash FROM chain_head WHERE id = 1"
                                        + self.dialect.lock_head)).fetchone()
            sequence, prev_hash = int(head[0]), str(head[1])
            existing = self._existing(conn, list(accepted))
            rows: list[tuple[Any, ...]] = []
            for event_id, (event, data) in accepted.items():
                if event_id in existing:
                    result.duplicates += 1
                    continue
                sequence += 1
                digest = link_hash(prev_hash, data)
                rows.append((sequence, *columns(event), data, prev_hash, digest, now))
                prev_hash = digest
            cur = conn.cursor()
            if rows:
                marks = ", ".join("?" * len(_INSERT_COLUMNS))
                cur.executemany(self._q(f"INSERT INTO records ({', '.join(_INSERT_COLUMNS)}) VALUES ({marks})"), rows)
                conn.execute(self._q("UPDATE chain_head SET last_sequence = ?, hash = ? WHERE id = 1"),
                             (sequence, prev_hash))
            if quarantine:
                cur.executemany(self._q("INSERT INTO quarantine (subject, data, error, received_unix_nanos) "
                                        "VALUES (?, ?, ?, ?)"), quarantine)
        result.stored = len(rows)
        return result

    def _existing(self, conn: Any, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(event_ids), _ID_CHUNK):
            chunk = event_ids[i:i + _ID_CHUNK]
            marks = ", ".join("?" * len(chunk))
            sql = self._q(f"SELECT event_id FROM records WHERE event_id IN ({marks})")
            found.update(row[0] for row in conn.execute(sql, chunk).fetchall())
        return found

    # ---- reading

    def ping(self) -> None:
        """Raise when the database does not answer (for the database_connected gauge)."""
        with self._reader.transaction(self.dialect.begin_read) as conn:
            conn.execute("SELECT 1").fetchone()

    def head(self) -> tuple[int, str]:
        """(last sequence, its hash) according to the chain head."""
        with self._reader.transaction(self.dialect.begin_read) as conn:
            row = conn.execute("SELECT last_sequence, hash FROM chain_head WHERE id = 1").fetchone()
        return int(row[0]), str(row[1])

    def query(self, flt: Filter, after: int = 0, limit: int = 100, *, upto: int | None = None,
              newest: bool = False) -> list[StoredRecord]:
        """Matching records with ``after < sequence <= upto``, oldest first (the newest ``limit`` if ``newest``)."""
        clauses, params = flt.where()
        clauses.append("sequence > ?")
        params.append(after)
        if upto is not None:
            clauses.append("sequence <= ?")
            params.append(upto)
        order = "DESC" if newest else "ASC"
        sql = (f"SELECT {_RECORD_FIELDS} FROM records WHERE {' AND '.join(clauses)} "
               f"ORDER BY sequence {order} LIMIT ?")
        with self._reader.transaction(self.dialect.begin_read) as conn:
            rows = conn.execute(self._q(sql), [*params, limit]).fetchall()
        records = [StoredRecord(int(r[0]), bytes(r[1]), str(r[2]), str(r[3]), int(r[4]), str(r[5])) for r in rows]
        return records[::-1] if newest else records

    def quarantined(self) -> list[QuarantinedMessage]:
        with self._reader.transaction(self.dialect.begin_read) as conn:
            rows = conn.execute(
                "SELECT subject, data, error, received_unix_nanos FROM quarantine ORDER BY id").fetchall()
        return [QuarantinedMessage(str(r[0]), bytes(r[1]), str(r[2]), int(r[3])) for r in rows]

    def verify(self) -> Verdict:
        """Walk the whole chain in one consistent snapshot; the first record that does not fit."""
        select = self._q(f"SELECT sequence, event, prev_hash, hash, {', '.join(COLUMNS)} FROM records "
                         "WHERE sequence > ? ORDER BY sequence LIMIT ?")
        with self._reader.transaction(self.dialect.begin_read) as conn:
            head = conn.execute("SELECT last_sequence, hash FROM chain_head WHERE id = 1").fetchone()

            def rows() -> Iterator[ChainRow]:
                after = -(2**62)
                while True:
                    chunk = conn.execute(select, (after, _VERIFY_CHUNK)).fetchall()
                    for r in chunk:
                        yield ChainRow(int(r[0]), bytes(r[1]), str(r[2]), str(r[3]), tuple(r[4:]))
                    if len(chunk) < _VERIFY_CHUNK:
                        return
                    after = int(chunk[-1][0])

            if head is None:
                return Verdict(False, 0, 1, "the chain_head row is missing")
            return verify_rows(rows(), int(head[0]), str(head[1]))
