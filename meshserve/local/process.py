"""A child process we started, watched and stopped by its PID."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class ProcessFailed(RuntimeError):
    """A child exited or did not become ready; the message carries its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for servers that cannot bind port 0 and report it (etcd).

    Racy by nature: callers retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ManagedProcess:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None, nice: int = 0) -> None:
        self.name = name
        self.nice = nice
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=self.cwd, start_new_session=True,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
        )
        log.debug("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``check`` until it returns a truthy value; fail early if the child exits."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            result = check()
            if result:
                return result
            if not self.alive():
                raise ProcessFailed(f"{self.name} exited before {what}; its log ends with:\n{tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"{self.name} not {what} after {timeout:.0f} s; its log ends with:\n{tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def wait_announce(self, path: Path, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the JSON file a meshserve service writes once it serves."""
        def read() -> dict[str, Any] | None:
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except (OSError, ValueError):
                return None
        result: dict[str, Any] = self.wait_until(read, timeout, "ready")
        return result

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the child (tests use SIGKILL to simulate a crash)."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the child."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it", self.name, self.proc.pid, grace)
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def start_service(name: str, module: str, args: Sequence[str], folder: Path, *, timeout: float = 60.0,
                  env: dict[str, str] | None = None,
                  log_path: Path | None = None) -> tuple[ManagedProcess, dict[str, Any]]:
    """Start a meshserve service (``python -m module``) and wait until it announces itself.

    The service is given ``--announce-file <folder>/<name>.json``; its other flags (``--port
    0`` ...) come in ``args``. Returns the process and what it announced (its address...);
    a service that does not come up is stopped before the error is raised.
    """
    announce = folder / f"{name}.json"
    announce.unlink(missing_ok=True)
    proc = ManagedProcess(name, [sys.executable, "-m", module, "--announce-file", str(announce), *args],
                          log_path or folder / f"{name}.log", env=env)
    proc.start()
    try:
        return proc, proc.wait_announce(announce, timeout=timeout)
    except BaseException:
        proc.stop(grace=2)
        raise
