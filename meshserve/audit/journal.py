"""The router's call journal: each call it answers is on disk before the answer leaves it.

A router builds call events in the background, a few milliseconds after the answers
(see ``services/router/audit.py``); the journal is what keeps those events when the
router dies meanwhile. Each call is appended, synchronously, as one record; once its
event was acknowledged by JetStream or written to the spool, the record is done; a
segment whose records are all done is deleted. On start, the records of the segments a
dead router left are built into events again (with the event ids they were given, so
the audit service drops the ones it already holds) and published like any others.

The format is language-neutral, so any router (this one, or a native data plane) writes
and replays the same journal:

- a folder (``<data dir>/audit-journal``) of segment files ``segment-NNNNNNNNN.journal``
  (nine decimal digits, numbered upward; replayed in that order);
- each segment a sequence of records, each a little-endian u32 length, a little-endian
  u32 CRC-32 (IEEE, as zlib's) of the payload, and the payload: a serialized
  ``meshserve.audit.v1.JournalRecord`` (``protos/meshserve/audit/v1/audit.proto``);
- a record torn by a crash mid-write (too short, or its CRC does not match) ends the
  reading of its segment: whatever follows it is ignored;
- a writer appends to the newest segment only and starts a new one after a size limit;
  a reader may find records whose events were delivered already (the router died
  before deleting their segment): they are replayed, and dropped downstream by event id.

How far a record is safe when the answer leaves depends on the fsync policy:
``never`` (in the page cache: it survives the router's crash, not the machine's),
``interval`` (fsynced in the background every ``interval_s``: a machine crash loses at
most that much) or ``always`` (fsynced before the answer; concurrent calls share one
fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf.message import DecodeError

from meshserve.audit.spool import RECORD, read_segment
from meshserve.protos.meshserve.audit.v1 import audit_pb2

log = logging.getLogger(__name__)

FsyncPolicy = Literal["never", "interval", "always"]
SEGMENT_BYTES = 4 * 1024 * 1024
COPY_BELOW = 64 * 1024  # smaller calls are joined into one buffer; larger ones written from their own bytes
# A segment whose records are all done is replaced by a fresh one once it is this old,
# so a router that dies replays at most about this long's worth of delivered calls.
ROTATE_DONE_S = 1.0
_SUFFIX = ".journal"
# JournalRecord's request and response fields (20 and 21, length-delimited): their tags
# as varints. They are written after the rest of the record, without copying them.
_REQUEST_TAG = b"\xa2\x01"
_RESPONSE_TAG = b"\xaa\x01"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> list[bytes]:
    return [tag, _varint(len(data)), data] if data else []


@dataclass(eq=False)
class Segment:
    """One segment file and how many of its records are done."""

    path: Path
    fd: int = -1  # -1: closed (sealed, or left by an earlier run)
    records: int = 0
    done: int = 0
    size: int = 0
    opened: float = 0.0  # monotonic time it was created
    unsynced: bool = False  # written since its last fsync

    @property
    def number(self) -> int:
        return int(self.path.stem.split("-")[1])

    @property
    def finished(self) -> bool:
        return self.done >= self.records


def read_records(path: Path) -> list[audit_pb2.JournalRecord]:
    """The records of one segment, up to a torn or corrupt one."""
    records = []
    for data in read_segment(path, "audit journal"):
        try:
            records.append(audit_pb2.JournalRecord.FromString(data))
        except DecodeError:  # it passed its CRC but is no JournalRecord: stop here too
            log.warning("audit journal %s: a record that is not a JournalRecord ends the segment", path.name)
            break
    return records


class Journal:
    """Segment files in ``directory``; :meth:`append` from any thread, the rest from the event loop."""

    def __init__(self, directory: Path, fsync: FsyncPolicy = "interval", interval_s: float = 0.1) -> None:
        self.directory = directory
        self.fsync = fsync
        self.interval_s = interval_s
        self._lock = threading.Lock()  # appends, and swapping the segment they go to
        self._segments: list[Segment] = []
        self._current = Segment(directory / f"segment-{0:09d}{_SUFFIX}")  # replaced by open()
        self._appended = 0  # records appended since open (a record's ticket is this count after it)
        self._synced = 0  # every record up to this ticket is on disk
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._last_sync = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def always(self) -> bool:
        return self.fsync == "always"

    @property
    def size(self) -> int:
        """Bytes in the segments held."""
        return sum(s.size for s in self._segments)

    def open(self) -> list[tuple[Segment, audit_pb2.JournalRecord]]:
        """Open the journal for appending; the records left by an earlier run, oldest first.

        Each returned record must be marked :meth:`done` once its event is delivered; its
        segment is deleted after the last one.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        left: list[tuple[Segment, audit_pb2.JournalRecord]] = []
        number = 0
        for path in sorted(self.directory.glob(f"segment-*{_SUFFIX}"), key=lambda p: Segment(p).number):
            segment = Segment(path, size=path.stat().st_size)
            number = max(number, segment.number)
            records = read_records(path)
            if not records:
                path.unlink(missing_ok=True)
                continue
            segment.records = len(records)
            self._segments.append(segment)
            left += [(segment, record) for record in records]
        self._current = self._new_segment(number + 1)
        self._segments.append(self._current)
        if left:
            log.info("audit journal: %d calls left by an earlier run in %s; publishing their events", len(left),
                     self.directory)
        return left

    def _new_segment(self, number: int) -> Segment:
        path = self.directory / f"segment-{number:09d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return Segment(path, fd, opened=time.monotonic())

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name="audit-journal")

    async def close(self) -> None:
        """Sync what was appended, delete the segments that are done, close the rest."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task  # not cancelled: an fsync in a thread must finish before its file is closed
            self._task = None
        for segment in list(self._segments):
            if segment.finished:
                self._delete(segment)
            elif segment.fd >= 0:
                os.close(segment.fd)
                segment.fd = -1

    # -- the call path ----------------------------------------------------------------------

    def append(self, header: bytes, request: bytes, response: bytes) -> tuple[Segment, int]:
        """Write one record (``header``: a serialized JournalRecord without request and response).

        Returns the segment it went to (for :meth:`done`) and its ticket (for :meth:`synced`).
        The bytes are in the kernel's page cache when this returns; OSError if not.
        """
        parts = [header, *_field(_REQUEST_TAG, request), *_field(_RESPONSE_TAG, response)]
        if len(request) + len(response) < COPY_BELOW:  # one buffer: cheaper than a CRC and a write per part
            payload = b"".join(parts)
            parts = [RECORD.pack(len(payload), zlib.crc32(payload)) + payload]
            length = len(parts[0])
        else:
            length = crc = 0
            for part in parts:
                length += len(part)
                crc = zlib.crc32(part, crc)
            parts.insert(0, RECORD.pack(length, crc))
            length += RECORD.size
        with self._lock:
            segment = self._current
            written = os.writev(segment.fd, parts)
            if written < length:  # rare (a signal, a full disk): write the rest
                rest = b"".join(parts)[written:]
                while rest:
                    rest = rest[os.write(segment.fd, rest):]
            segment.records += 1
            segment.size += length
            segment.unsynced = True
            self._appended += 1
            return segment, self._appended

    def synced(self, ticket: int) -> asyncio.Future[None] | None:
        """A future done once the record of ``ticket`` is fsynced (None: it is already).

        It never fails: when an fsync fails the error is logged and the future is done anyway
        (the record is in the page cache).
        """
        if ticket <= self._synced:
            return None
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, future))
        self._wake.set()
        return future

    # -- delivery ---------------------------------------------------------------------------

    def done(self, segment: Segment, count: int = 1) -> None:
        """``count`` records of ``segment`` are delivered: the segment goes once all its records are."""
        segment.done += count
        if segment.finished:
            self._wake.set()

    # -- background -------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Fsync as the policy says, seal full segments, delete finished ones: one task does all three,
        so no file is closed while an fsync of it runs."""
        while True:
            timeout = ROTATE_DONE_S  # at least this often: a finished segment is replaced after ROTATE_DONE_S
            if self.fsync == "interval":
                timeout = min(timeout, max(0.0, self._last_sync + self.interval_s - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            due = (self.fsync == "always" and self._waiters) or (
                self.fsync == "interval" and time.monotonic() >= self._last_sync + self.interval_s)
            try:
                if (due or self._closing) and self.fsync != "never":
                    await self._sync()
                await self._tidy()
            except Exception as e:  # noqa: BLE001 - this task must outlive any failure, or calls would wait forever
                # The records are in the page cache still: the calls waiting are answered, not failed.
                log.error("audit journal in %s: %s: %s", self.directory, type(e).__name__, e)
                self._release_waiters()
                await asyncio.sleep(self.interval_s)
            if self._closing:
                return

    async def _sync(self) -> None:
        self._last_sync = time.monotonic()
        with self._lock:
            target, segment = self._appended, self._current
            unsynced = segment.unsynced
            segment.unsynced = False
        if target > self._synced:
            if unsynced:
                try:
                    await asyncio.to_thread(os.fsync, segment.fd)
                except OSError:
                    segment.unsynced = True
                    raise
            self._synced = target
        waiting, self._waiters = self._waiters, []
        for ticket, future in waiting:
            if ticket <= target:
                if not future.done():
                    future.set_result(None)
            else:
                self._waiters.append((ticket, future))
        if self._waiters:
            self._wake.set()  # appended during the fsync: the next round takes them

    def _release_waiters(self) -> None:
        waiting, self._waiters = self._waiters, []
        for _, future in waiting:
            if not future.done():
                future.set_result(None)

    async def _tidy(self) -> None:
        current = self._current
        full = current.size >= SEGMENT_BYTES
        idle_done = current.records and current.finished and time.monotonic() - current.opened >= ROTATE_DONE_S
        if (full or idle_done) and not self._closing:
            fresh = self._new_segment(current.number + 1)
            with self._lock:
                self._current = fresh
                self._segments.append(fresh)
            if not current.finished:
                if current.unsynced and self.fsync != "never":
                    await asyncio.to_thread(os.fsync, current.fd)
                os.close(current.fd)
                current.fd = -1
        for segment in list(self._segments):
            if segment is not self._current and segment.finished:
                self._delete(segment)

    def _delete(self, segment: Segment) -> None:
        if segment.fd >= 0:
            os.close(segment.fd)
            segment.fd = -1
        segment.path.unlink(missing_ok=True)
        self._segments.remove(segment)
