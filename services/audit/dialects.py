"""The two SQL engines the audit store runs on: what differs between them, and nothing else."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from .schema import Types


class StoreError(RuntimeError):
    """The database cannot be opened or used; the message says which and why."""


class Dialect(ABC):
    """Connection, placeholders and transaction statements of one SQL engine."""

    name: str
    types: Types
    begin_write = "BEGIN"
    begin_read = "BEGIN"
    lock_head = ""  # appended to the chain-head SELECT in a write transaction
    lock_migrations = ""  # run first in the migration transaction, when the engine needs it

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def connect(self) -> Any:
        """A DB-API connection in autocommit mode (the store issues BEGIN and COMMIT itself)."""

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders turned into this engine's."""
        return text

    def broken(self, conn: Any) -> bool:
        """Whether ``conn`` is lost and must be replaced."""
        return False

    def describe(self) -> str:
        return self.url


class SqliteDialect(Dialect):
    name = "sqlite"
    types = Types(blob="BLOB", auto_id="INTEGER PRIMARY KEY AUTOINCREMENT")
    begin_write = "BEGIN IMMEDIATE"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = url.removeprefix("sqlite:///")
        if not self.path:
            raise StoreError(f"database {url!r} names no file: use sqlite:///PATH")

    def connect(self) -> Any:
        if self.path != ":memory:" and not Path(self.path).resolve().parent.is_dir():
            raise StoreError(f"cannot open SQLite database {self.path!r}: its directory does not exist")
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the events it holds are acked to JetStream.
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {e}") from e
        return conn


class PostgresDialect(Dialect):
    name = "postgresql"
    types = Types(blob="BYTEA", auto_id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    lock_head = " FOR UPDATE"
    lock_migrations = "SELECT pg_advisory_xact_lock(726175646974)"

    def connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to PostgreSQL at {self.describe()}: {e}") from e

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def describe(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self.url)
        except Exception:  # noqa: BLE001 - only for a log line
            return "postgresql://..."
        user, host, port, db = (info.get(k, "") for k in ("user", "host", "port", "dbname"))
        return f"postgresql://{user}@{host}:{port or 5432}/{db}"


def dialect_for(url: str) -> Dialect:
    """The dialect for a database URL (``sqlite:///...`` or ``postgresql://...``)."""
    if url.startswith("sqlite:///"):
        return SqliteDialect(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(url)
    raise StoreError(f"unsupported database {url!r}: use sqlite:///PATH or postgresql://user@host:port/db")
