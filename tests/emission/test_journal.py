"""The router's call journal: records on disk as documented, torn tails ignored, replay, deletion once done."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from pathlib import Path

import pytest

from meshserve.audit import journal as journal_module
from meshserve.audit.journal import Journal, Segment
from meshserve.protos.meshserve.audit.v1 import audit_pb2

from .helpers import until


def header(n: int) -> audit_pb2.JournalRecord:
    return audit_pb2.JournalRecord(event_id=f"event-{n}", method="ModelInfer", model="iris", start_unix_nanos=n,
                                   end_unix_nanos=n + 5, metadata=[audit_pb2.JournalRecord.MetadataEntry(
                                       key="x-request-id", value=f"request-{n}".encode())])


def append(journal: Journal, n: int, response: bytes = b"answer") -> tuple[Segment, int]:
    return journal.append(header(n).SerializeToString(), f"request {n}".encode(), response)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.journal"))


def documented_records(path: Path) -> list[audit_pb2.JournalRecord]:
    """A segment read from the format in the module's docstring, without the journal's own reader."""
    data = path.read_bytes()
    out = []
    offset = 0
    while offset + 8 <= len(data):
        length, crc = struct.unpack_from("<II", data, offset)
        payload = data[offset + 8:offset + 8 + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        out.append(audit_pb2.JournalRecord.FromString(payload))
        offset += 8 + length
    return out


async def test_records_are_on_disk_as_documented(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "never")
    assert journal.open() == []
    for n in range(3):
        append(journal, n, response=b"" if n == 2 else b"answer")
    [segment] = segments(tmp_path)
    records = documented_records(segment)  # before any close: appends are written through at once
    assert [r.event_id for r in records] == ["event-0", "event-1", "event-2"]
    assert records[0].request == b"request 0" and records[0].response == b"answer"
    assert records[2].response == b""
    assert records[1].metadata[0].key == "x-request-id" and records[1].metadata[0].value == b"request-1"
    assert records[1].end_unix_nanos == 6


async def test_a_new_journal_replays_what_a_dead_one_left(tmp_path: Path) -> None:
    dead = Journal(tmp_path, "never")
    dead.open()
    for n in range(4):
        append(dead, n)
    # no close: the process died. The next journal on the folder finds every record.
    again = Journal(tmp_path, "never")
    left = again.open()
    assert [r.event_id for _, r in left] == [f"event-{n}" for n in range(4)]
    assert left[3][1].request == b"request 3"
    append(again, 10)  # new records go to a new segment, after the old ones
    first, second = segments(tmp_path)
    assert [r.event_id for r in documented_records(second)] == ["event-10"]
    again.start()
    for segment, _ in left:
        again.done(segment)
    await until(lambda: not first.exists(), 5)  # the old segment goes once all its calls are delivered
    assert second.exists()
    await again.close()
    assert second.exists()  # event-10 is not done: kept for the next start
    assert [r.event_id for _, r in Journal(tmp_path, "never").open()] == ["event-10"]


@pytest.mark.parametrize("damage", ["torn", "corrupt"])
async def test_a_torn_tail_is_ignored(tmp_path: Path, damage: str) -> None:
    journal = Journal(tmp_path, "never")
    journal.open()
    for n in range(3):
        append(journal, n)
    [segment] = segments(tmp_path)
    data = segment.read_bytes()
    last = len(documented_records(segment)[-1].SerializeToString()) + 8
    if damage == "torn":  # the crash came mid-write: the last record is cut short
        segment.write_bytes(data[:-last // 2])
    else:  # the last record's bytes are wrong: its CRC does not match
        segment.write_bytes(data[:-3] + bytes(b ^ 0xFF for b in data[-3:]))
    left = Journal(tmp_path, "never").open()
    assert [r.event_id for _, r in left] == ["event-0", "event-1"]


async def test_segments_are_deleted_once_every_call_in_them_is_done(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 200)  # a few records a segment
    monkeypatch.setattr(journal_module, "ROTATE_DONE_S", 0.0)
    journal = Journal(tmp_path, "interval", interval_s=0.05)
    journal.open()
    journal.start()
    written: list[Segment] = []
    for n in range(12):
        written.append(append(journal, n)[0])
        await asyncio.sleep(0.01)  # the journal seals a full segment in the background
    await until(lambda: len(segments(tmp_path)) > 2, 5)
    assert journal.size == sum(p.stat().st_size for p in segments(tmp_path))
    for segment in written[:6]:
        journal.done(segment)
    # the segments holding only done calls go; the ones with calls not done stay
    left = {s.path for s in written[6:]}
    await until(lambda: set(segments(tmp_path)) <= left | {journal._current.path}, 5)
    assert {s.path for s in written[6:]} <= set(segments(tmp_path))
    for segment in written[6:]:
        journal.done(segment)
    await until(lambda: len(segments(tmp_path)) == 1, 5)  # the one being written: all its records done
    await journal.close()
    assert segments(tmp_path) == []  # a clean stop with everything delivered leaves nothing


async def test_always_fsyncs_before_the_future_is_done_and_groups_calls(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs = []
    real_fsync = os.fsync

    def counted(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)
    monkeypatch.setattr(journal_module.os, "fsync", counted)
    journal = Journal(tmp_path, "always")
    journal.open()
    journal.start()
    futures = []
    for n in range(50):  # fifty calls answered at once
        _, ticket = append(journal, n)
        future = journal.synced(ticket)
        assert future is not None
        futures.append(future)
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert 1 <= len(fsyncs) < 50, len(fsyncs)  # group commit: far fewer fsyncs than calls
    _, ticket = append(journal, 99)
    future = journal.synced(ticket)
    assert future is not None
    await asyncio.wait_for(future, 5)
    assert journal.synced(ticket) is None  # already on disk
    await journal.close()


async def test_interval_fsyncs_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs: list[int] = []
    monkeypatch.setattr(journal_module.os, "fsync", fsyncs.append)
    journal = Journal(tmp_path, "interval", interval_s=0.05)
    journal.open()
    journal.start()
    append(journal, 1)
    await until(lambda: len(fsyncs) >= 1, 5)
    count = len(fsyncs)
    await asyncio.sleep(0.2)
    assert len(fsyncs) == count  # nothing new written: no fsync
    await journal.close()
