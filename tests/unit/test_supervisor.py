"""The supervisor's restarts, back-off and giving up, on real child processes (short delays to keep it quick)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from meshserve.local.process import ManagedProcess
from meshserve.local.supervisor import Event, Exited, Restarted, RestartFailed, RestartPolicy, Supervisor

POLICY = RestartPolicy(first_delay_s=0.1, max_delay_s=0.4, reset_after_s=1.0, crash_limit=5, crash_window_s=30.0)


class Children:
    """Named child processes, each started again from the same command (a :class:`Supervised`)."""

    def __init__(self, folder: Path, **commands: list[str]) -> None:
        self.commands = commands
        self.folder = folder
        self.started: dict[str, list[int]] = {name: [] for name in commands}
        self._processes: dict[str, ManagedProcess] = {}
        for name in commands:
            self.restart(name)

    def processes(self) -> dict[str, ManagedProcess]:
        return dict(self._processes)

    def restart(self, name: str) -> None:
        if name in self._processes:
            self._processes[name].stop()
        process = ManagedProcess(name, self.commands[name], self.folder / f"{name}.log")
        process.start()
        self._processes[name] = process
        self.started[name].append(process.pid)

    def stop(self) -> None:
        for process in self._processes.values():
            process.stop(grace=1)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


class Watch:
    """A supervisor over ``children`` and the events it reported, each with the time it came."""

    def __init__(self, children: Children) -> None:
        self.events: list[tuple[float, Event]] = []
        self.supervisor = Supervisor(children, lambda event: self.events.append((time.monotonic(), event)), POLICY)

    def run(self, seconds: float, until: Callable[[Event], bool] | None = None) -> list[Event]:
        """Rounds for at most ``seconds`` (or until an event matches ``until``): the events of those rounds."""
        first = len(self.events)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervisor.check()
            if until is not None and any(until(e) for _, e in self.events[first:]):
                break
            time.sleep(0.02)
        return [e for _, e in self.events[first:]]


def given_up(event: Event) -> bool:
    return isinstance(event, Exited | RestartFailed) and event.restart_in_s is None


def restarted(event: Event) -> bool:
    return isinstance(event, Restarted)


def test_a_crash_looping_child_is_restarted_with_back_off_then_given_up_on(tmp_path: Path) -> None:
    children = Children(tmp_path, crasher=python("import sys; print('bad config'); sys.exit(3)"),
                        steady=python("import time; time.sleep(60)"))
    try:
        watch = Watch(children)
        events = watch.run(20.0, until=given_up)
        exits = [e for e in events if isinstance(e, Exited)]
        assert [e.name for e in exits] == ["crasher"] * 5
        assert exits[0].how == "exited with status 3" and "bad config" in exits[0].log_tail
        # 0.1 s doubling, at most 0.4 s; the fifth exit within the window: given up.
        assert [e.restart_in_s for e in exits] == [0.1, 0.2, 0.4, 0.4, None]
        assert [e.exits for e in exits] == [1, 2, 3, 4, 5]
        assert [e.restarts for e in events if isinstance(e, Restarted)] == [1, 2, 3, 4]
        timed = [(at, e) for at, e in watch.events if isinstance(e, Exited | Restarted)]
        for (exited_at, exit), (restarted_at, _) in zip(timed[::2], timed[1::2], strict=False):
            assert isinstance(exit, Exited) and exit.restart_in_s is not None
            assert restarted_at - exited_at >= exit.restart_in_s
        assert len(set(children.started["crasher"])) == 5
        # Given up on: never started again. The other child was never touched.
        assert watch.run(1.0) == []
        assert watch.supervisor.given_up == ["crasher"]
        assert len(children.started["crasher"]) == 5
        assert children.started["steady"] == [children.processes()["steady"].pid]
        assert children.processes()["steady"].alive()
    finally:
        children.stop()


def test_a_child_that_stayed_up_starts_its_back_off_again(tmp_path: Path) -> None:
    flag = tmp_path / "crash-now"
    # Runs until the flag file appears, then removes it and exits with status 1.
    code = (f"import os, sys, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
            f"os.remove({str(flag)!r}); sys.exit(1)")
    children = Children(tmp_path, flaky=python(code))
    try:
        watch = Watch(children)
        delays = []
        for _ in range(3):
            flag.touch()
            delays += [e.restart_in_s for e in watch.run(10.0, until=restarted) if isinstance(e, Exited)]
        assert delays == [0.1, 0.2, 0.4]
        time.sleep(POLICY.reset_after_s)  # up long enough: the next exit starts the back-off again
        flag.touch()
        assert [e.restart_in_s for e in watch.run(10.0, until=restarted) if isinstance(e, Exited)] == [0.1]
        assert len(children.started["flaky"]) == 5
    finally:
        children.stop()


def test_a_child_that_cannot_start_again_is_retried_then_given_up_on(tmp_path: Path) -> None:
    children = Children(tmp_path, once=python("import sys; sys.exit(0)"))

    def fail(name: str) -> None:
        raise OSError("no such binary")

    children.restart = fail  # type: ignore[method-assign]
    try:
        events = Watch(children).run(10.0, until=given_up)
        assert isinstance(events[0], Exited) and events[0].how == "exited with status 0"
        failed = [e for e in events if isinstance(e, RestartFailed)]
        assert [e.restart_in_s for e in failed] == [0.2, 0.4, 0.4, None]
        assert all("no such binary" in e.error for e in failed)
    finally:
        children.stop()
