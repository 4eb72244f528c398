"""Child processes that end with the process that started them, and how a child ended, in words.

Linux's ``PR_SET_PDEATHSIG`` has the kernel send a signal to a child when its parent
dies, however it dies (SIGKILL included). Children are started through util-linux's
``setpriv --pdeathsig KILL`` (util-linux is essential on Debian), which sets it and execs
the program: setting it in a ``preexec_fn`` instead would run Python between fork and
exec in a process with threads, which can crash the child.

The signal fires when the *thread* that forked the child ends, not the process: fork from
a thread that lives as long as the process (the main thread, an event loop's thread, or
:mod:`meshserve.local.process`'s spawner thread). It is not inherited by grandchildren:
each process that starts children does this itself (``meshserve up`` for the services,
the R runtime for its Rscript workers; Triton's Python-backend stubs watch Triton and exit
with it).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)


@functools.cache
def _setpriv() -> str | None:
    found = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if found is None and sys.platform.startswith("linux"):
        log.warning("no setpriv (util-linux): child processes may outlive this one if it is killed")
    return found


def ending_with_parent(argv: Sequence[str], *, nice: int = 0) -> list[str]:
    """``argv`` run so that the child is SIGKILLed when the thread that starts it ends (``nice``: lower priority).

    Raises FileNotFoundError, as starting it would, when the program does not exist.
    """
    program = shutil.which(argv[0])
    if program is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if (setpriv := _setpriv()) else []
    if nice:
        prefix += ["nice", "-n", str(nice)]
    return [*prefix, program, *argv[1:]]


def describe_exit(returncode: int | None) -> str:
    """'exited with status 3', 'was killed by signal 9 (SIGKILL)' (None: 'closed its pipe')."""
    if returncode is None:
        return "closed its pipe"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"
