"""Router side of the mesh link: many concurrent calls over one connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc

from meshserve import tracing
from meshserve.auth import mesh as mesh_credential
from meshserve.errors import DeadlineExceeded, Internal, Unavailable, error_for, too_large
from meshserve.link import frames
from meshserve.link.frames import FrameReader, ProtocolError
from meshserve.tls import MeshTls
from meshserve.tracing import OFF, Tracing

log = logging.getLogger(__name__)

# Traced calls' span names: those of the gRPC methods the link's methods stand for.
SPAN_NAMES = {frames.MODEL_INFER: "inference.GRPCInferenceService/ModelInfer"}
LINK_SYSTEM = "meshserve_link"  # the spans' rpc.system


class LinkClient(frames.FramedProtocol):
    """One connection to a runtime's link; create with :meth:`connect`."""

    def __init__(self, address: str, max_message_bytes: int, credential: str | None = None,
                 tracing: Tracing = OFF) -> None:
        self.address = address
        self.tracing = tracing
        self.max_message_bytes = max_message_bytes
        # The mesh credential, sent as metadata of every frame (see meshserve.auth.mesh).
        self._credential_metadata = frames.encode_metadata(dict(mesh_credential.metadata(credential)))
        self._reader = FrameReader(max_message_bytes + frames.OVERHEAD, expect_magic=False)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._transport: asyncio.Transport | None = None
        self._writer: frames.FrameWriter | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, address: str, max_message_bytes: int, connect_timeout_s: float = 2.0, *,
                      mesh_tls: MeshTls | None = None, credential: str | None = None,
                      tracing: Tracing = OFF) -> LinkClient:
        """Open a connection: TLS with ``mesh_tls`` (presenting its current certificate), plain text without;
        every call presents ``credential``, the mesh credential, when given, and is traced with ``tracing``."""
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, client = await loop.create_connection(
                    lambda: cls(address, max_message_bytes, credential, tracing), host, int(port),
                    ssl=mesh_tls.client_context() if mesh_tls is not None else None)
        except (OSError, TimeoutError) as e:
            raise Unavailable(f"cannot connect to the mesh link at {address}: {e or type(e).__name__}") from e
        return client

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._writer = frames.FrameWriter(transport)
        transport.write(frames.MAGIC)

    def data_received(self, data: bytes) -> None:
        try:
            received = self._reader.feed(data)
        except ProtocolError as e:
            log.warning("mesh link to %s: %s; closing it", self.address, e)
            assert self._transport is not None
            self._transport.abort()
            return
        for frame in received:
            future = self._pending.pop(frame.call_id, None)
            if future is None or future.done():
                continue  # the caller gave up already
            if frame.too_large:  # dropped unread: only this call fails
                future.set_exception(too_large(f"the answer of the runtime at {self.address}", frame.too_large,
                                               self.max_message_bytes, "this router takes"))
            elif frame.kind == frames.RESPONSE:
                future.set_result(frame.payload)
            elif frame.kind == frames.ERROR and frame.payload:
                code = _code(frame.payload[0])
                future.set_exception(error_for(code, frame.payload[1:].decode(errors="replace")))
            else:
                future.set_exception(Internal(f"mesh link to {self.address} answered with a malformed frame"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        why = f": {exc}" if exc else ""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"mesh link to {self.address} closed{why}"))
        self._pending.clear()

    # -- calls -------------------------------------------------------------------------

    async def call(self, method: int, payload: bytes, remaining_s: float | None = None,
                   metadata: Mapping[str, str] | None = None) -> bytes:
        """Send one request and wait for its response; errors come back as MeshError.

        ``remaining_s`` is the caller's remaining deadline: the runtime gets it with the
        request, and the call fails with DEADLINE_EXCEEDED (and is cancelled in the
        runtime) when it runs out. With the client's tracing on, the call gets a client span
        whose context travels in the frame's metadata (``traceparent``).
        """
        if self.tracing.active:
            name = SPAN_NAMES.get(method, f"meshserve.link/{method}")
            with self.tracing.client_span(name, self.address, LINK_SYSTEM):
                return await self._call(method, payload, remaining_s, tracing.with_context(metadata))
        return await self._call(method, payload, remaining_s, metadata)

    async def _call(self, method: int, payload: bytes, remaining_s: float | None,
                    metadata: Mapping[str, str] | None) -> bytes:
        writer = self._writer
        if self.closed or writer is None:
            raise Unavailable(f"mesh link to {self.address} is closed")
        self._next_id = call_id = (self._next_id + 1) & 0xFFFFFFFF
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[call_id] = future
        timeout_us = 0
        timer = None
        if remaining_s is not None:
            if remaining_s <= 0:
                self._pending.pop(call_id, None)
                raise DeadlineExceeded("deadline exceeded before the call was forwarded")
            timeout_us = min(int(remaining_s * 1e6), 0xFFFFFFFF)
            timer = self._loop.call_later(remaining_s, _expire, future)
        encoded = self._credential_metadata
        if metadata:
            encoded = frames.encode_metadata(metadata) + encoded
        head = frames.header(call_id, frames.REQUEST, len(payload), method=method, timeout_us=timeout_us,
                             metadata=encoded)
        writer.send(head, payload)
        try:
            return await future
        except (asyncio.CancelledError, DeadlineExceeded):
            self._cancel(call_id)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _cancel(self, call_id: int) -> None:
        self._pending.pop(call_id, None)
        if not self.closed and self._writer is not None:
            self._writer.send(frames.encode(call_id, frames.CANCEL))

    def close(self) -> None:
        """Drop the connection now; calls in flight fail with UNAVAILABLE."""
        if self._transport is not None and not self.closed:
            self._transport.abort()


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded("deadline exceeded while the runtime was working on the call"))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _code(value: int) -> grpc.StatusCode:
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)
