"""Running a service in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Protocol

from meshserve.grpcutil.server import write_announce_file

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float = ...) -> None: ...

    def announcement(self) -> dict[str, str]:
        """What a supervisor needs to find the service: its addresses and ids."""
        ...


async def run_until_signalled(service: Service, name: str, announce_file: Path | None) -> None:
    """Start ``service``, announce it, wait for SIGTERM or SIGINT, then stop it gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await service.start()
        write_announce_file(announce_file, **service.announcement())
        await stopping.wait()
        log.info("stopping %s", name)
    finally:
        await service.stop()
