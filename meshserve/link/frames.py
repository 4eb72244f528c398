"""Frame format of the mesh link.

A connection starts with the client sending MAGIC. Then each frame is a 16-byte
little-endian header followed by ``length`` bytes: ``meta_length`` bytes of metadata
(``key\\0value\\0`` pairs) and the payload.

    u32 length | u32 call id | u8 kind | u8 method | u16 meta_length | u32 timeout (microseconds, 0 = none)

REQUEST carries a serialized request; RESPONSE the serialized response; ERROR a u8 gRPC
status code then a UTF-8 message; CANCEL nothing (the caller gave up on that call id).

A well-formed frame longer than the reader's limit does not break the connection: its
body is read and dropped, and the reader hands on the frame's header with ``too_large``
set, so only that call fails (RESOURCE_EXHAUSTED) and the calls beside it go on.
"""

from __future__ import annotations

import asyncio
import struct
from asyncio import WriteTransport
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = b"MSLINK/1"
HEADER = struct.Struct("<IIBBHI")

REQUEST, RESPONSE, ERROR, CANCEL = 1, 2, 3, 4
KINDS = frozenset((REQUEST, RESPONSE, ERROR, CANCEL))
MODEL_INFER = 1

# Room for the header fields and metadata beyond the largest message allowed.
OVERHEAD = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a mesh-link frame: the connection is dropped."""


@dataclass(frozen=True, slots=True)
class Frame:
    call_id: int
    kind: int
    method: int
    timeout_us: int
    metadata: bytes
    payload: bytes
    # A frame over the reader's limit: the size of the payload that was dropped (metadata and payload are empty).
    too_large: int = 0


def encode(call_id: int, kind: int, payload: bytes = b"", *, method: int = 0, timeout_us: int = 0,
           metadata: bytes = b"") -> bytes:
    return header(call_id, kind, len(payload), method=method, timeout_us=timeout_us, metadata=metadata) + payload


def header(call_id: int, kind: int, payload_length: int, *, method: int = 0, timeout_us: int = 0,
           metadata: bytes = b"") -> bytes:
    """A frame's header and metadata, for a payload sent separately."""
    return HEADER.pack(len(metadata) + payload_length, call_id, kind, method, len(metadata), timeout_us) + metadata


def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    if not metadata:
        return b""
    return b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in metadata.items())


def decode_metadata(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    parts = raw.decode(errors="replace").split("\0")
    return dict(zip(parts[0:-1:2], parts[1::2], strict=True))


class FrameWriter:
    """Writes whole frames to one connection, in order, never half a frame.

    Small frames go straight to the transport. A large payload is queued and written by
    one background task in 256 KiB chunks as the socket drains: handing asyncio a
    multi-megabyte buffer makes it move the unsent rest on every partial send. While that
    task runs, later frames queue behind it, so frames never interleave. Callers never
    wait here, so a caller's cancellation cannot stop a frame half way.
    """

    CHUNK = 256 * 1024

    def __init__(self, transport: WriteTransport) -> None:
        self.transport = transport
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    def pause(self) -> None:
        self._can_write.clear()

    def resume(self) -> None:
        self._can_write.set()

    def send(self, head: bytes, payload: bytes = b"") -> None:
        """Write a frame (its header and metadata in ``head``), now or after those queued."""
        if self._drainer is None and len(payload) < FrameReader.LARGE:
            self.transport.write(head + payload)
            return
        self._queue.append((head, payload))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                head, payload = self._queue.popleft()
                self.transport.write(head)
                view = memoryview(payload)
                for offset in range(0, len(view), self.CHUNK):
                    if not self._can_write.is_set():
                        await self._can_write.wait()
                    if self.transport.is_closing():
                        self._queue.clear()
                        return
                    self.transport.write(view[offset:offset + self.CHUNK])
        except BaseException:
            # Half a frame may be out: the stream cannot be resynchronised.
            self.transport.abort()
            raise
        finally:
            self._drainer = None

    def close(self) -> None:
        """The connection is gone: drop what is queued."""
        self._queue.clear()
        self._can_write.set()
        if self._drainer is not None:
            self._drainer.cancel()


class FrameReader:
    """Splits a byte stream into frames, refusing frames over ``max_length``.

    Small frames are cut out of one rolling buffer. A large frame's body is gathered as
    the chunks the socket delivers and joined once, so a 4 MiB tensor is copied once
    here rather than on every read.
    """

    LARGE = 256 * 1024

    def __init__(self, max_length: int, expect_magic: bool) -> None:
        self.max_length = max_length
        self._buf = bytearray()
        self._magic_pending = expect_magic
        # A large frame in progress: its header fields, the chunks so far, bytes still missing.
        self._header: tuple[int, int, int, int, int, int] | None = None
        self._chunks: list[bytes] = []
        self._missing = 0
        self._skipping = 0  # bytes of a frame over the limit still to drop

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if self._skipping:
            dropped = min(len(data), self._skipping)
            self._skipping -= dropped
            data = data[dropped:]
            if not data:
                return frames
        if self._header is not None:
            data = self._gather(data, frames)
            if not data:
                return frames
        buf = self._buf
        buf += data
        if self._magic_pending:
            if len(buf) < len(MAGIC):
                if not MAGIC.startswith(bytes(buf)):
                    raise ProtocolError("peer does not speak the mesh link")
                return frames
            if buf[:len(MAGIC)] != MAGIC:
                raise ProtocolError("peer does not speak the mesh link")
            del buf[:len(MAGIC)]
            self._magic_pending = False
        start = 0
        size = HEADER.size
        while len(buf) - start >= size:
            header = HEADER.unpack_from(buf, start)
            length, call_id, kind, method, meta_length, timeout_us = header
            if meta_length > length or kind not in KINDS:
                raise ProtocolError(f"bad frame header (length {length}, kind {kind})")
            body = start + size
            end = body + length
            if length > self.max_length:
                frames.append(Frame(call_id, kind, method, timeout_us, b"", b"", too_large=length - meta_length))
                if len(buf) >= end:
                    start = end
                    continue
                self._skipping = end - len(buf)
                del buf[:]
                return frames
            if len(buf) < end:
                if length >= self.LARGE:
                    rest = bytes(buf[body:])
                    del buf[:]
                    self._header, self._chunks, self._missing = header, [], length
                    leftover = self._gather(rest, frames)
                    if leftover:
                        frames.extend(self.feed(leftover))
                    return frames
                break
            frames.append(_frame(header, buf[body:end]))
            start = end
        if start:
            del buf[:start]
        return frames

    def _gather(self, data: bytes, frames: list[Frame]) -> bytes:
        """Add ``data`` to the large frame in progress; return what lies beyond it."""
        take = min(len(data), self._missing)
        self._chunks.append(data[:take] if take < len(data) else data)
        self._missing -= take
        if self._missing == 0:
            assert self._header is not None
            frames.append(_frame(self._header, b"".join(self._chunks)))
            self._header, self._chunks = None, []
        return data[take:]


def _frame(header: tuple[int, int, int, int, int, int], body: bytes | bytearray) -> Frame:
    _, call_id, kind, method, meta_length, timeout_us = header
    return Frame(call_id, kind, method, timeout_us, bytes(body[:meta_length]), bytes(body[meta_length:]))


class FramedProtocol(asyncio.Protocol):
    """Flow control shared by both ends of a link: pauses and resumes the frame writer."""

    _writer: FrameWriter | None = None

    def pause_writing(self) -> None:
        if self._writer is not None:
            self._writer.pause()

    def resume_writing(self) -> None:
        if self._writer is not None:
            self._writer.resume()
