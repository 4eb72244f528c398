"""The router's on-disk audit spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshserve.audit.spool import Spool, SpoolFull, read_segment


def test_events_survive_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([b"one", b"two"], sync=True)
    spool.close()
    again = Spool(tmp_path, 1 << 20)
    assert again.size > 0
    assert [e for s in again.sealed_segments() for e in read_segment(s)] == [b"one", b"two"]


def test_a_torn_record_at_the_end_is_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([b"complete"])
    (segment,) = spool.sealed_segments()
    with open(segment, "ab") as out:
        out.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half")  # a crash in the middle of a write
    assert list(read_segment(segment)) == [b"complete"]


def test_a_full_spool_refuses_and_frees_room_once_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 100)
    spool.append([b"x" * 60])
    with pytest.raises(SpoolFull, match="bytes free"):
        spool.append([b"y" * 60])
    (segment,) = spool.sealed_segments()
    spool.remove(segment)
    assert spool.size == 0
    spool.append([b"y" * 60])


def test_segments_roll_over_and_replay_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 64 << 20)
    events = [bytes([i % 256]) * 300_000 for i in range(30)]  # about 9 MB: several segments
    for event in events:
        spool.append([event])
    segments = spool.sealed_segments()
    assert len(segments) > 1
    assert [e for s in segments for e in read_segment(s)] == events
