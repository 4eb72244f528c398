"""Children end with the process that started them, however it ends, whichever thread started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshserve.children import describe_exit, ending_with_parent

# Starts a child from a thread that ends at once, prints the child's PID, then waits. The
# child starts a grandchild (in its process group) and writes the grandchild's PID to its log.
PARENT = textwrap.dedent('''
    import sys, threading, time
    from pathlib import Path
    from meshserve.local.process import ManagedProcess

    CHILD = "import subprocess, time; print(subprocess.Popen(['sleep', '120']).pid, flush=True); time.sleep(120)"
    started = []

    def start():
        child = ManagedProcess("child", [sys.executable, "-c", CHILD], Path(sys.argv[1]) / "child.log")
        child.start()
        started.append(child.pid)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    print(started[0], flush=True)
    time.sleep(120)
''')


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_and_its_group_are_killed_with_their_parent_even_by_sigkill(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids.append(int(parent.stdout.readline()))
        log = tmp_path / "child.log"
        deadline = time.monotonic() + 10
        while not log.exists() or not log.read_text().strip():
            assert time.monotonic() < deadline, "the child did not start its grandchild"
            time.sleep(0.05)
        pids.append(int(log.read_text().split()[0]))
        time.sleep(0.3)
        assert all(running(pid) for pid in pids), "the child died with the thread that started it"
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while left := [pid for pid in pids if running(pid)]:
            assert time.monotonic() < deadline, f"{left} outlived their parent by 5 s (child, grandchild: {pids})"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_missing_program_is_not_found_before_anything_starts() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        ending_with_parent(["no-such-program", "--flag"])
    argv = ending_with_parent([sys.executable, "-c", "pass"], nice=5)
    assert argv[-3:] == [sys.executable, "-c", "pass"] and argv[-6:-3] == ["nice", "-n", "5"]


def test_how_a_child_ended_in_words() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "was killed by signal 9 (SIGKILL)"
    assert describe_exit(None) == "closed its pipe"
