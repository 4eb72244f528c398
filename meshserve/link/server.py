"""Runtime side of the mesh link: frames in, handler calls, frames out."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable

import grpc

from meshserve.errors import as_mesh_error, too_large
from meshserve.link import frames
from meshserve.link.frames import Frame, FrameReader, ProtocolError
from meshserve.ports import PortInUse
from meshserve.tls import MeshTls

log = logging.getLogger(__name__)

# handler(method, request bytes, metadata) -> response bytes; raises MeshError to answer an error
# (anything else is a bug, answered INTERNAL with an error id).
LinkHandler = Callable[[int, bytes, dict[str, str]], Awaitable[bytes]]


def _error(call_id: int, code: grpc.StatusCode, message: str) -> bytes:
    return frames.encode(call_id, frames.ERROR, bytes([code.value[0]]) + message.encode())


class _Connection(frames.FramedProtocol):
    def __init__(self, handler: LinkHandler, max_message_bytes: int, connections: set[_Connection]) -> None:
        self._handler = handler
        self._max_message_bytes = max_message_bytes
        self._reader = FrameReader(max_message_bytes + frames.OVERHEAD, expect_magic=True)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._transport: asyncio.Transport | None = None
        self._writer: frames.FrameWriter | None = None
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._writer = frames.FrameWriter(transport)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            received = self._reader.feed(data)
        except ProtocolError as e:
            log.warning("closing a mesh link connection: %s", e)
            self.abort()
            return
        for frame in received:
            if frame.too_large:
                if frame.kind == frames.REQUEST and self._writer is not None:
                    error = too_large("the request", frame.too_large, self._max_message_bytes, "this runtime takes",
                                      "send fewer rows per call, or raise max_message_bytes on the runtimes")
                    self._writer.send(_error(frame.call_id, error.code, error.message))
            elif frame.kind == frames.REQUEST:
                self._tasks[frame.call_id] = asyncio.get_running_loop().create_task(self._run(frame))
            elif frame.kind == frames.CANCEL:
                task = self._tasks.pop(frame.call_id, None)
                if task is not None:
                    task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def _run(self, frame: Frame) -> None:
        try:
            head, payload = await self._answer(frame)
        except asyncio.CancelledError:
            return  # the router cancelled the call or went away: nobody waits for an answer
        finally:
            self._tasks.pop(frame.call_id, None)
        if self._writer is not None and not self._writer.transport.is_closing():
            self._writer.send(head, payload)

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
        except TimeoutError:
            return _error(call_id, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded in the runtime"), b""
        except Exception as e:  # noqa: BLE001 - the handler raises MeshErrors: anything else is a bug, logged
            error = as_mesh_error(e, "the runtime's mesh link")
            return _error(call_id, error.code, error.message), b""
        return frames.header(call_id, frames.RESPONSE, len(response)), response


class LinkServer:
    """A listening mesh link and the connections it accepted."""

    def __init__(self, server: asyncio.Server, host: str, connections: set[_Connection]) -> None:
        self._server = server
        self._connections = connections
        self.address = f"{host}:{server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        """Stop listening and drop every connection (their calls in flight are cancelled)."""
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        await self._server.wait_closed()


async def serve_link(host: str, port: int, handler: LinkHandler, max_message_bytes: int, *,
                     mesh_tls: MeshTls | None = None) -> LinkServer:
    """Listen for mesh-link connections on host:port (0 picks a free port, see ``.address``).

    With ``mesh_tls`` the link is TLS and takes only callers with a mesh certificate; each
    handshake presents the certificate current then.
    """
    loop = asyncio.get_running_loop()
    connections: set[_Connection] = set()
    context = None if mesh_tls is None else mesh_tls.server_context(require_client_cert=True)
    try:  # reuse_port stays off: the port is ours alone
        server = await loop.create_server(lambda: _Connection(handler, max_message_bytes, connections), host, port,
                                          ssl=context, reuse_port=False)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, "cannot serve the mesh link") from e
        raise
    return LinkServer(server, host, connections)
