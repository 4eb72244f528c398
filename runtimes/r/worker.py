"""One long-lived ``Rscript`` worker process and the two pipes that carry its frames."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
from pathlib import Path
from typing import IO

from meshserve.children import describe_exit, ending_with_parent
from meshserve.errors import Internal

from . import protocol

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).parent / "R" / "worker.R"


class WorkerDied(Exception):
    """The worker process ended (or closed its pipe) before it answered."""


class RWorker:
    """A running worker: send a framed request, read one framed answer."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.WriteTransport,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._reader = reader
        self._writer = writer
        self.killed = False
        """True once the pool killed it (a timeout), so its death is not reported as a crash."""

    @classmethod
    async def spawn(cls, rscript: str, log_file: IO[bytes] | int, start_timeout_s: float) -> RWorker:
        """Start ``Rscript worker.R`` and wait until it answers a ping."""
        loop = asyncio.get_running_loop()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            # Killed with the runtime however it ends (started from the event loop's thread,
            # which lives as long as the runtime).
            proc = await asyncio.create_subprocess_exec(
                *ending_with_parent([rscript, str(WORKER_SCRIPT), str(req_r), str(resp_w)]),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                pass_fds=(req_r, resp_w),
                start_new_session=True,  # a Ctrl-C meant for the server does not reach R
            )
        except BaseException:
            for fd in (req_w, resp_r):
                os.close(fd)
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(resp_r, "rb", 0))
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(req_w, "wb", 0))
        worker = cls(proc, reader, transport)
        try:
            hello = protocol.decode_ping(
                await asyncio.wait_for(worker.call(protocol.encode_ping()), start_timeout_s)
            )
        except (TimeoutError, WorkerDied, Internal) as e:
            await worker.kill()
            raise WorkerDied(f"R worker (pid {worker.pid}) did not start: {e or 'no answer in time'}") from e
        log.debug("R worker ready: %s", hello)
        return worker

    async def call(self, request: bytes) -> bytes:
        """Send one framed request and return the answer's body; WorkerDied if it ends first."""
        if self._writer.is_closing():
            raise WorkerDied(await self.exit_reason())
        self._writer.write(request)
        try:
            (n,) = struct.unpack("<I", await self._reader.readexactly(4))
            return await self._reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise WorkerDied(await self.exit_reason()) from e

    async def exit_reason(self) -> str:
        try:
            code = await asyncio.wait_for(self.proc.wait(), 5.0)
        except TimeoutError:
            code = None
        return describe_exit(code)

    def kill_now(self) -> None:
        """SIGKILL this worker by its PID (never by name); a pending call then raises WorkerDied."""
        if self.proc.returncode is None and not self.killed:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def kill(self) -> None:
        """SIGKILL this worker and reap it."""
        self.kill_now()
        self._writer.close()
        await self.proc.wait()

    async def close(self, grace_s: float = 2.0) -> None:
        """Close its request pipe (R exits at end of input); SIGKILL after ``grace_s``."""
        self._writer.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            await self.kill()
