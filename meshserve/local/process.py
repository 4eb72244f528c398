"""A child process we started, watched and stopped by its PID, and ended with us however we end.

Every child is started by one long-lived spawner thread with ``PR_SET_PDEATHSIG``
(:mod:`meshserve.children`): the kernel SIGKILLs it when this process dies, SIGKILL
included. The spawner thread matters: the signal fires when the *thread* that forked
the child ends, and callers start children from short-lived threads too (a thread pool
starting replicas side by side). Each child leads a process group of its own, which the
:mod:`~meshserve.local.sentinel` SIGKILLs once we are gone: the grandchildren in it
(Triton's Python-backend stubs) go at once too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from meshserve.children import ending_with_parent
from meshserve.local.sentinel import Sentinel

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


class _Spawner:
    """The one thread that forks every child, alive as long as this process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="meshserve-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except Exception as e:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(e)


_spawner = _Spawner()
_sentinel = Sentinel()


class ManagedProcess:
    """One child process with its output in a log file, killed with this process however it ends."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None, nice: int = 0) -> None:
        self.name = name
        self.nice = nice
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # time.monotonic() of the last start
        self._group_ended = False
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended (negative: the signal that killed it), else None."""
        return self.proc.poll() if self.proc is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **(self.env or {})}
        log_file, argv = self._log, ending_with_parent(self.argv, nice=self.nice)
        # Its own session: a Ctrl-C meant for us does not reach it (we stop children in order).
        self.proc = _spawner.run(lambda: subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=self.cwd, start_new_session=True,
        ))
        self.started_at, self._group_ended = time.monotonic(), False
        _sentinel.watch(self.proc.pid)  # it leads its own process group (a new session)
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
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the child, then kills what is left of its group.

        What is left: grandchildren that did not end with it (Triton's Python-backend stubs
        after Triton crashed).
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it", self.name, self.proc.pid, grace)
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and not self._group_ended:
            self._group_ended = True
            with contextlib.suppress(ProcessLookupError, PermissionError):  # none left, mostly
                os.killpg(self.proc.pid, signal.SIGKILL)
            _sentinel.forget(self.proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None


class Service:
    """A meshserve service (``python -m module``) that announces itself and can be started again.

    The service is given ``--announce-file <folder>/<name>.json``; its other flags (``--port
    0`` ...) come in ``args``. After :meth:`start`, :attr:`process` is the child and
    :attr:`info` what it announced (its address...). :meth:`pin` fixes a flag's value for
    the next start (a restart on the port the first start was given).
    """

    def __init__(self, name: str, module: str, args: Sequence[str], folder: Path, *,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.announce = folder / f"{name}.json"
        self.log_path = log_path or folder / f"{name}.log"
        self.env = env
        self.process: ManagedProcess | None = None
        self.info: dict[str, Any] = {}

    def pin(self, flag: str, value: object) -> None:
        """Pass ``flag value`` from the next start on (replacing the flag's value when given)."""
        if flag in self.args:
            self.args[self.args.index(flag) + 1] = str(value)
        else:
            self.args += [flag, str(value)]

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until it announces itself; one that does not come up is stopped first."""
        self.announce.unlink(missing_ok=True)
        process = ManagedProcess(
            self.name, [sys.executable, "-m", self.module, "--announce-file", str(self.announce), *self.args],
            self.log_path, env=self.env)
        process.start()
        self.process = process
        try:
            self.info = process.wait_announce(self.announce, timeout=timeout)
        except BaseException:
            process.stop(grace=2)
            raise

    def stop(self, grace: float = 5.0) -> None:
        if self.process is not None:
            self.process.stop(grace)


def start_service(name: str, module: str, args: Sequence[str], folder: Path, *, timeout: float = 60.0,
                  env: dict[str, str] | None = None,
                  log_path: Path | None = None) -> tuple[ManagedProcess, dict[str, Any]]:
    """Start a meshserve service (``python -m module``) and wait until it announces itself.

    The service is given ``--announce-file <folder>/<name>.json``; its other flags (``--port
    0`` ...) come in ``args``. Returns the process and what it announced (its address...);
    a service that does not come up is stopped before the error is raised.
    """
    service = Service(name, module, args, folder, env=env, log_path=log_path)
    service.start(timeout)
    assert service.process is not None
    return service.process, service.info
