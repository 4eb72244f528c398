"""A watcher that kills our children's process groups once we are gone, grandchildren included.

``PR_SET_PDEATHSIG`` ends each child with us, but not what the child started itself:
Triton's Python-backend stubs, for one, only notice Triton is gone after a while
(about 2 s measured here). Each child leads a process group of its own, which its own
children share unless they leave it. The sentinel is a tiny process (this file, run by
path with the standard library only) that we tell each group as it starts and ends, over
a pipe: when the pipe closes, because we ended however we ended, it SIGKILLs every group
still listed, then exits. Started on the first child; one per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import IO

log = logging.getLogger(__name__)


class Sentinel:
    """Our side of the sentinel: :meth:`watch` a group when its leader starts, :meth:`forget` it once reaped."""

    def __init__(self) -> None:
        self._groups: set[int] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def watch(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)
            self._tell(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)
            self._tell(b"-%d\n" % pgid)

    def _tell(self, line: bytes) -> None:
        try:
            self._send(line)
        except OSError as e:  # the children still end with us (PDEATHSIG); their own children may not
            log.warning("the process-group sentinel is not running: %s", e)

    def _send(self, line: bytes) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._write(line)
                return
            except BrokenPipeError:  # it died (someone killed it): a new one is told every group
                self._proc.wait()
        if self._groups:
            self._proc = subprocess.Popen(  # no PDEATHSIG: it must outlive us, by the time it takes to kill
                [sys.executable, "-I", "-S", __file__], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                start_new_session=True)  # its own session: a Ctrl-C meant for us does not reach it
            self._write(b"".join(b"+%d\n" % pgid for pgid in sorted(self._groups)))

    def _write(self, data: bytes) -> None:
        assert self._proc is not None
        stdin: IO[bytes] | None = self._proc.stdin
        assert stdin is not None
        stdin.write(data)
        stdin.flush()


def _kill_groups_when_the_pipe_closes() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:  # until the end of input: the process that started us is gone
        pgid = int(line[1:])
        if line.startswith(b"+"):
            groups.add(pgid)
        else:
            groups.discard(pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    _kill_groups_when_the_pipe_closes()
