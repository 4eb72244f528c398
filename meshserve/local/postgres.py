"""A throwaway PostgreSQL server on loopback for tests: initdb into a temp dir, start, stop.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres``
system user (``runuser -u postgres --``) in a temporary directory owned by it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from meshserve.local.process import ProcessFailed, free_port, tail

SUPERUSER = "postgres"


def postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return Path(candidates[-1]).parent if candidates else None


def unavailable_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here (None when it can)."""
    if postgres_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' system user to run PostgreSQL as"
    return None


class PostgresServer:
    """A private cluster on 127.0.0.1, trust authentication, superuser ``postgres``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.root: Path | None = None
        self._as_root = os.geteuid() == 0

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run(self, argv: list[str], timeout: float = 60.0) -> None:
        if self._as_root:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ProcessFailed(f"{Path(argv[0 if not self._as_root else 4]).name} failed ({done.returncode}): "
                                f"{done.stderr.strip() or done.stdout.strip()}\n{tail(self.log_path)}")

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise ProcessFailed(reason)
        bindir = postgres_bindir()
        assert bindir is not None
        # Our own directory under /tmp: pytest's are private to their owner, which postgres is not.
        self.root = Path(tempfile.mkdtemp(prefix="meshserve-pg-"))
        if self._as_root:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        self._run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])
        for attempt in range(3):
            self.port = free_port(self.host)
            options = f"-h {self.host} -p {self.port} -k {self.root} -F -c max_connections=50"
            try:
                self._run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.log_path), "-o", options,
                           "-w", "-t", "30", "start"])
                return
            except ProcessFailed:
                if attempt == 2:
                    raise

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        if self.root is None:
            return
        bindir = postgres_bindir()
        if bindir is not None and (self.root / "data" / "postmaster.pid").exists():
            self._run([str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
