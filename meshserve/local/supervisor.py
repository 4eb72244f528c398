"""Keeping the local mesh up: a child that dies is reported and started again, with back-off.

``meshserve up`` runs :meth:`Supervisor.run` in its main thread. When a child exits,
the supervisor reports which one, how it ended and the tail of its log, then restarts
it after a back-off (0.5 s, doubling up to 30 s; a child that stayed up a minute starts
again from 0.5 s). A child that exits 5 times within a minute is crash-looping: it is
given up on and reported, and the rest of the mesh stays up (a mesh without one runtime
still serves the other runtimes' models, and routers ride out an etcd or NATS outage);
``meshserve up`` then exits with status 1 when stopped.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from meshserve.children import describe_exit
from meshserve.local.process import ManagedProcess, ProcessFailed, tail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that died is started again."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    # A child up this long when it dies is restarted after first_delay_s again.
    reset_after_s: float = 60.0
    # This many exits within crash_window_s: the child is given up on.
    crash_limit: int = 5
    crash_window_s: float = 60.0


class Supervised(Protocol):
    """What the supervisor watches: :class:`~meshserve.local.mesh.LocalMesh` is one."""

    def processes(self) -> dict[str, ManagedProcess]: ...

    def restart(self, name: str) -> None: ...


@dataclass(frozen=True)
class Exited:
    """A child ended; it is restarted in ``restart_in_s`` seconds (None: given up on)."""

    name: str
    pid: int
    how: str
    log_tail: str
    restart_in_s: float | None
    exits: int  # exits within the crash window, this one included


@dataclass(frozen=True)
class RestartFailed:
    """Starting a child again failed; tried again in ``restart_in_s`` seconds (None: given up on)."""

    name: str
    error: str
    restart_in_s: float | None
    exits: int


@dataclass(frozen=True)
class Restarted:
    name: str
    pid: int
    restarts: int  # restarts of this child so far


Event = Exited | RestartFailed | Restarted


@dataclass
class _Track:
    failures: int = 0  # exits since the child last stayed up reset_after_s
    exits: collections.deque[float] = field(default_factory=collections.deque)
    restart_at: float | None = None
    restarts: int = 0
    given_up: bool = False


class Supervisor:
    """Restarts the children of ``mesh`` that die, telling ``report`` what it sees and does."""

    def __init__(self, mesh: Supervised, report: Callable[[Event], None], policy: RestartPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mesh = mesh
        self.report = report
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self._tracks: dict[str, _Track] = collections.defaultdict(_Track)

    @property
    def given_up(self) -> list[str]:
        """The children given up on (crash-looping), in the order they were."""
        return [name for name, track in self._tracks.items() if track.given_up]

    def run(self, interval_s: float = 0.2) -> None:
        """Watch forever (until KeyboardInterrupt or another exception)."""
        while True:
            self.check()
            time.sleep(interval_s)

    def check(self) -> None:
        """One round: note the children that died, restart those whose back-off is over."""
        for name, process in self.mesh.processes().items():
            track = self._tracks[name]
            if track.given_up or track.restart_at is not None or process.alive():
                continue
            now = self.clock()
            delay = self._schedule(track, now, up_s=now - process.started_at)
            self.report(Exited(name, process.pid, describe_exit(process.returncode), tail(process.log_path),
                               delay, len(track.exits)))
        for name, track in list(self._tracks.items()):
            if track.restart_at is not None and self.clock() >= track.restart_at:
                self._restart(name, track)

    def _schedule(self, track: _Track, now: float, up_s: float) -> float | None:
        """Note an exit; the back-off before the next start, or None to give up."""
        policy = self.policy
        if up_s >= policy.reset_after_s:
            track.failures = 0
        track.exits.append(now)
        while track.exits and track.exits[0] < now - policy.crash_window_s:
            track.exits.popleft()
        if len(track.exits) >= policy.crash_limit:
            track.given_up, track.restart_at = True, None
            return None
        delay: float = min(policy.first_delay_s * 2.0 ** track.failures, policy.max_delay_s)
        track.failures += 1
        track.restart_at = now + delay
        return delay

    def _restart(self, name: str, track: _Track) -> None:
        track.restart_at = None
        try:
            self.mesh.restart(name)
        except Exception as e:  # counted as one more exit; it never takes the supervisor down
            if not isinstance(e, ProcessFailed):
                log.debug("restarting %s failed", name, exc_info=True)
            delay = self._schedule(track, self.clock(), up_s=0.0)
            self.report(RestartFailed(name, str(e), delay, len(track.exits)))
            return
        track.restarts += 1
        self.report(Restarted(name, self.mesh.processes()[name].pid, track.restarts))
