"""A bounded on-disk spool of call events, for when the broker cannot take them.

Events are appended to segment files in a directory of the router's, each record a
little-endian u32 length, a u32 CRC-32 and the event bytes. A torn record at the end of
a segment (a crash mid-write) is detected by its length or CRC and ignored. Segments are
replayed oldest first and deleted only once every event in them was acknowledged, so
the spool survives a router restart and loses nothing it accepted.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

RECORD = struct.Struct("<II")  # length, CRC-32 (the call journal frames its records alike)
SEGMENT_BYTES = 4 * 1024 * 1024


class SpoolFull(Exception):
    """The spool holds its maximum: the event was not written."""


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._segments = sorted(directory.glob("segment-*.spool"), key=self._number)
        self._size = sum(p.stat().st_size for p in self._segments)
        self._current: BinaryIO | None = None
        self._current_path: Path | None = None

    @staticmethod
    def _number(path: Path) -> int:
        return int(path.stem.split("-")[1])

    @property
    def size(self) -> int:
        """Bytes held on disk."""
        return self._size

    def has_room(self, length: int = 0) -> bool:
        return self._size + RECORD.size + length <= self.max_bytes

    def append(self, events: list[bytes], *, sync: bool = False) -> Path:
        """Write events at the end of the spool; ``sync`` waits until they are on disk. Returns the segment
        written to."""
        needed = sum(RECORD.size + len(e) for e in events)
        if self._size + needed > self.max_bytes:
            free = max(0, self.max_bytes - self._size)
            raise SpoolFull(f"the audit spool in {self.directory} has {free} of {self.max_bytes} bytes free, "
                            f"and {needed} are needed")
        out = self._writable()
        path = self._current_path
        assert path is not None
        out.write(b"".join(RECORD.pack(len(e), zlib.crc32(e)) + e for e in events))
        out.flush()
        if sync:
            os.fsync(out.fileno())
        self._size += needed
        if out.tell() >= SEGMENT_BYTES:
            self._seal()
        return path

    def _writable(self) -> BinaryIO:
        if self._current is None:
            number = self._number(self._segments[-1]) + 1 if self._segments else 1
            self._current_path = self.directory / f"segment-{number:09d}.spool"
            self._current = open(self._current_path, "ab")  # noqa: SIM115 - kept open across appends
            self._segments.append(self._current_path)
        return self._current

    def _seal(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def sealed_segments(self) -> list[Path]:
        """Segments ready to replay, oldest first (the one being written is sealed first)."""
        self._seal()
        return list(self._segments)

    def remove(self, segment: Path) -> None:
        """Drop a segment whose events were all acknowledged."""
        size = segment.stat().st_size if segment.exists() else 0
        segment.unlink(missing_ok=True)
        self._segments = [s for s in self._segments if s != segment]
        self._size = max(0, self._size - size)

    def close(self) -> None:
        self._seal()


def fsync_file(path: Path) -> None:
    """fsync a file through a descriptor of its own (safe while another thread closes the writer's)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_segment(path: Path, what: str = "audit spool") -> Iterator[bytes]:
    """The records of one segment, stopping at a torn or corrupt record."""
    data = path.read_bytes()
    offset = 0
    while offset + RECORD.size <= len(data):
        length, crc = RECORD.unpack_from(data, offset)
        start = offset + RECORD.size
        event = data[start:start + length]
        if len(event) < length or zlib.crc32(event) != crc:
            log.warning("%s %s: torn record at byte %d ignored", what, path.name, offset)
            return
        yield event
        offset = start + length
