"""A service's life: its parts started in order and stopped in reverse, in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from meshserve.errors import MeshError
from meshserve.grpcutil.server import write_announce_file

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...

    def announcement(self) -> dict[str, str]:
        """What a supervisor needs to find the service: its addresses and ids."""
        ...


class Parts:
    """The parts of one service, each stopped (in reverse order of start) by :meth:`stop`.

    A service starts a part, then says how it stops: ``parts.on_stop("registry cache",
    cache.stop)``; a start that fails half way stops only the parts already started.
    Loops that run as long as the service go in one :class:`asyncio.TaskGroup`
    (:meth:`background`): :meth:`stop` cancels them before stopping any part, and one that
    crashes cancels the task that started the service, so the service stops (and its
    supervisor restarts it) rather than running on without that loop; :meth:`stop` then
    raises the crash. A part whose stop raises is logged and the other parts still stop.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._parts = contextlib.AsyncExitStack()
        self._loops = contextlib.AsyncExitStack()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def on_stop(self, part: str, stop: Callable[[], Awaitable[object] | object]) -> None:
        """Call ``stop`` (a function or coroutine function) when the service stops."""
        self._parts.push_async_callback(self._stop_part, part, stop)

    async def background(self, loop: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``loop`` until the service stops."""
        if self._group is None:
            self._group = await self._loops.enter_async_context(asyncio.TaskGroup())
        task = self._group.create_task(loop, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """Cancel the loops, then stop every part started, the last first."""
        crashed: BaseExceptionGroup[BaseException] | None = None
        if self._group is not None:
            for task in self._tasks:
                task.cancel()
            self._group = None
            try:
                await self._loops.aclose()
            except BaseExceptionGroup as e:  # a loop crashed before: stop the parts, then say so
                crashed = e
        await self._parts.aclose()
        if crashed is not None:
            raise crashed

    async def _stop_part(self, part: str, stop: Callable[[], Awaitable[object] | object]) -> None:
        try:
            result = stop()
            if inspect.isawaitable(result):
                await result
        except Exception:  # the other parts still stop
            log.exception("%s: stopping its %s failed", self.service, part)


async def run_until_signalled(service: Service, name: str, announce_file: Path | None) -> None:
    """Start ``service``, announce it, wait for SIGTERM or SIGINT, then stop it gracefully.

    A service that cannot start (a port in use, etcd not answering...) logs why in one
    line and exits with status 1, after stopping what it had started.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        try:
            await service.start()
        except (MeshError, OSError) as e:
            log.error("%s cannot start: %s", name, e)
            raise SystemExit(1) from None
        write_announce_file(announce_file, **service.announcement())
        await stopping.wait()
        log.info("stopping %s", name)
    finally:
        await service.stop()
