"""The hash chain: how each record is linked to the one before, and checking a trail of them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .events import COLUMNS, BadEvent, columns, decode

GENESIS_HASH = "0" * 64


def link_hash(prev_hash: str, event_bytes: bytes) -> str:
    """Hex SHA-256 of the previous link (64 hex ASCII characters) followed by the event's stored bytes."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(event_bytes)
    return digest.hexdigest()


@dataclass(frozen=True)
class ChainRow:
    """One stored record as verify reads it: its link, its bytes and its queryable columns."""

    sequence: int
    event: bytes
    prev_hash: str
    hash: str
    columns: tuple[Any, ...]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records_checked: int
    first_bad_sequence: int = 0
    problem: str = ""
    head_hash: str = GENESIS_HASH


def _row_problem(row: ChainRow, expected_sequence: int, prev_hash: str) -> tuple[int, str] | None:
    """(bad sequence, what is wrong) for the first fault of ``row``, or None when it fits."""
    if row.sequence != expected_sequence:
        if row.sequence > expected_sequence:
            missing = (f"record {expected_sequence} is missing" if row.sequence == expected_sequence + 1
                       else f"records {expected_sequence} to {row.sequence - 1} are missing")
            return expected_sequence, f"{missing}: the trail goes from {expected_sequence - 1} to {row.sequence}"
        return row.sequence, f"record {row.sequence} is out of order (expected {expected_sequence})"
    s = row.sequence
    if row.prev_hash != prev_hash:
        return s, (f"record {s}'s prev_hash {row.prev_hash[:16]}... is not the hash of record {s - 1} "
                   f"({prev_hash[:16]}...)")
    if link_hash(prev_hash, row.event) != row.hash:
        return s, f"record {s}'s stored bytes do not match its hash: the event was altered"
    try:
        stored = columns(decode(row.event))
    except BadEvent as e:
        return s, f"record {s}'s stored bytes are not a valid call event: {e}"
    for name, column, value in zip(COLUMNS, row.columns, stored, strict=True):
        if column != value:
            return s, f"record {s}'s column {name} is {column!r} but its stored event says {value!r}"
    return None


def verify_rows(rows: Iterable[ChainRow], head_sequence: int, head_hash: str) -> Verdict:
    """Walk ``rows`` (ascending sequence) and the chain head; the first record that does not fit."""
    expected, prev_hash, checked = 1, GENESIS_HASH, 0
    for row in rows:
        if row.sequence > head_sequence:
            return Verdict(False, checked, row.sequence,
                           f"record {row.sequence} lies past the chain head, which ends at {head_sequence}",
                           prev_hash)
        fault = _row_problem(row, expected, prev_hash)
        if fault is not None:
            return Verdict(False, checked, fault[0], fault[1], prev_hash)
        expected, prev_hash, checked = row.sequence + 1, row.hash, checked + 1
    last = expected - 1
    if head_sequence != last:
        missing = (f"record {head_sequence} is" if head_sequence == last + 1
                   else f"records {last + 1} to {head_sequence} are")
        return Verdict(False, checked, last + 1,
                       f"the chain head says the trail ends at record {head_sequence} but the last record is "
                       f"{last}: {missing} missing", prev_hash)
    if head_hash != prev_hash:
        return Verdict(False, checked, max(last, 1),
                       f"the chain head's hash {head_hash[:16]}... is not record {last}'s hash {prev_hash[:16]}...",
                       prev_hash)
    return Verdict(True, checked, head_hash=prev_hash)
