"""Runtime side of the mesh link: frames in, handler calls, frames out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from meshserve.errors import MeshError
from meshserve.link import frames
from meshserve.link.frames import Frame, FrameReader, ProtocolError

log = logging.getLogger(__name__)

# handler(method, request bytes, metadata) -> response bytes; raises MeshError to answer an error.
LinkHandler = Callable[[int, bytes, dict[str, str]], Awaitable[bytes]]


def _error(call_id: int, code: grpc.StatusCode, message: str) -> bytes:
    return frames.encode(call_id, frames.ERROR, bytes([code.value[0]]) + message.encode())


class _Connection(frames.FramedProtocol):
    def __init__(self, handler: LinkHandler, max_length: int) -> None:
        self._handler = handler
        self._reader = FrameReader(max_length, expect_magic=True)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._transport: asyncio.Transport | None = None
        self._writer: frames.FrameWriter | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._writer = frames.FrameWriter(transport)

    def data_received(self, data: bytes) -> None:
        try:
            received = self._reader.feed(data)
        except ProtocolError as e:
            log.warning("closing a mesh link connection: %s", e)
            assert self._transport is not None
            self._transport.abort()
            return
        for frame in received:
            if frame.kind == frames.REQUEST:
                self._tasks[frame.call_id] = asyncio.get_running_loop().create_task(self._run(frame))
            elif frame.kind == frames.CANCEL:
                task = self._tasks.pop(frame.call_id, None)
                if task is not None:
                    task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _send(self, head: bytes, payload: bytes = b"") -> None:
        if self._writer is not None and not self._writer.transport.is_closing():
            await self._writer.send(head, payload)

    async def _run(self, frame: Frame) -> None:
        call_id = frame.call_id
        try:
            answer = await self._answer(frame)
            if answer is not None:
                await self._send(*answer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the router went away or cancelled the call: nobody waits for an answer
        finally:
            self._tasks.pop(call_id, None)

    async def _answer(self, frame: Frame) -> tuple[bytes, bytes]:
        """The frame to send back: the response, or the error the call ended with."""
        call_id = frame.call_id
        try:
            metadata = frames.decode_metadata(frame.metadata)
            if frame.timeout_us:
                async with asyncio.timeout(frame.timeout_us / 1e6):
                    response = await self._handler(frame.method, frame.payload, metadata)
            else:
                response = await self._handler(frame.method, frame.payload, metadata)
        except MeshError as e:
            return _error(call_id, e.code, e.message), b""
        except TimeoutError:
            return _error(call_id, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded in the runtime"), b""
        except Exception as e:
            log.exception("unhandled error in a mesh link call")
            return _error(call_id, grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"), b""
        return frames.header(call_id, frames.RESPONSE, len(response)), response


async def serve_link(host: str, port: int, handler: LinkHandler, max_message_bytes: int) -> asyncio.Server:
    """Listen for mesh-link connections; the bound port is ``server.sockets[0].getsockname()[1]``."""
    loop = asyncio.get_running_loop()
    max_length = max_message_bytes + frames.OVERHEAD
    return await loop.create_server(lambda: _Connection(handler, max_length), host, port)


def bound_address(server: asyncio.Server, host: str) -> str:
    return f"{host}:{server.sockets[0].getsockname()[1]}"
