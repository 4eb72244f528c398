"""The store on SQLite and PostgreSQL: the chain, idempotency, quarantine and what verify detects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshserve.protos.meshserve.audit.v1.audit_pb2 import CallEvent
from meshserve.services.audit.chain import GENESIS_HASH, link_hash
from meshserve.services.audit.dialects import StoreError
from meshserve.services.audit.events import COLUMNS
from meshserve.services.audit.query import Filter
from meshserve.services.audit.store import Incoming, Store

from .helpers import encode, execute, make_event


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    s.close()


def incoming(events: list[bytes]) -> list[Incoming]:
    return [Incoming(data, "meshserve.audit.v1.calls") for data in events]


def fill(store: Store, n: int = 10) -> list[bytes]:
    events = [encode(make_event(i)) for i in range(n)]
    assert store.ingest(incoming(events)).stored == n
    return events


def test_records_are_chained_with_their_exact_bytes_and_columns(store: Store, database_url: str) -> None:
    events = fill(store, 10)
    records = store.query(Filter(), 0, 100)
    assert [r.sequence for r in records] == list(range(1, 11))
    prev = GENESIS_HASH
    for record, data in zip(records, events, strict=True):
        assert record.event == data
        assert record.prev_hash == prev
        assert record.hash == link_hash(prev, data)
        prev = record.hash
    assert store.head() == (10, prev)
    row = execute(database_url, f"SELECT {', '.join(COLUMNS)} FROM records WHERE sequence = 5")[0]
    event = make_event(4)
    assert dict(zip(COLUMNS, row, strict=True)) | {"event_id": ""} == {
        name: getattr(event, name) for name in COLUMNS} | {"event_id": ""}
    assert store.schema_version() == 1


def test_duplicates_in_a_batch_and_across_batches_are_stored_once(store: Store) -> None:
    a, b = encode(make_event(1)), encode(make_event(2))
    first = store.ingest(incoming([a, a, b]))
    assert (first.stored, first.duplicates) == (2, 1)
    head = store.head()
    again = store.ingest(incoming([b, a]))
    assert (again.stored, again.duplicates) == (0, 2)
    assert store.head() == head  # the chain is not extended
    assert store.verify().ok


def test_malformed_messages_are_quarantined_and_the_batch_still_stored(store: Store) -> None:
    good = encode(make_event(1))
    no_id = encode(make_event(2, event_id=""))
    result = store.ingest(incoming([b"\xff\xfe not protobuf", good, no_id]))
    assert result.stored == 1
    assert len(result.quarantined) == 2
    kept = store.quarantined()
    assert [q.data for q in kept] == [b"\xff\xfe not protobuf", no_id]
    assert "not a serialized CallEvent" in kept[0].error
    assert "no event_id" in kept[1].error
    assert all(q.subject == "meshserve.audit.v1.calls" and q.received_unix_nanos > 0 for q in kept)


def test_reopening_keeps_the_chain_and_migrations_run_once(database_url: str) -> None:
    with_data = Store.open(database_url)
    fill(with_data, 3)
    with_data.close()
    again = Store.open(database_url)
    try:
        again.ingest(incoming([encode(make_event(9))]))
        verdict = again.verify()
        assert verdict.ok and verdict.records_checked == 4
        assert execute(database_url, "SELECT COUNT(*) FROM schema_version")[0][0] == 1
    finally:
        again.close()


def test_verify_on_a_clean_chain(store: Store) -> None:
    empty = store.verify()
    assert empty.ok and empty.records_checked == 0 and empty.head_hash == GENESIS_HASH
    fill(store, 25)
    verdict = store.verify()
    assert verdict.ok and verdict.records_checked == 25
    assert verdict.head_hash == store.head()[1]


@pytest.mark.parametrize(
    ("tamper", "bad", "words"),
    [
        ("UPDATE records SET model = 'other' WHERE sequence = 3", 3, "column model"),
        ("UPDATE records SET status_code = 0 WHERE sequence = 5", 5, "column status_code"),
        ("DELETE FROM records WHERE sequence = 5", 5, "record 5 is missing"),
        ("DELETE FROM records WHERE sequence = 10", 10, "chain head says the trail ends at record 10"),
        ("DELETE FROM records WHERE sequence >= 9", 9, "records 9 to 10 are missing"),
        ("UPDATE chain_head SET hash = 'ab' WHERE id = 1", 10, "chain head's hash"),
    ],
)
def test_verify_names_the_first_bad_record(store: Store, database_url: str, tamper: str, bad: int,
                                           words: str) -> None:
    fill(store, 10)
    execute(database_url, tamper)
    verdict = store.verify()
    assert not verdict.ok
    assert verdict.first_bad_sequence == bad
    assert words in verdict.problem


def test_verify_catches_edited_bytes_even_with_a_recomputed_hash(store: Store, database_url: str) -> None:
    events = fill(store, 10)
    original = CallEvent.FromString(events[3])
    original.principal = "someone-else"
    forged = encode(original)
    execute(database_url, "UPDATE records SET event = ?, principal = 'someone-else' WHERE sequence = 4", [forged])
    verdict = store.verify()
    assert (verdict.ok, verdict.first_bad_sequence) == (False, 4)
    assert "stored bytes do not match its hash" in verdict.problem
    prev = execute(database_url, "SELECT prev_hash FROM records WHERE sequence = 4")[0][0]
    execute(database_url, "UPDATE records SET hash = ? WHERE sequence = 4", [link_hash(prev, forged)])
    verdict = store.verify()
    assert (verdict.ok, verdict.first_bad_sequence) == (False, 5)
    assert "prev_hash" in verdict.problem


def test_an_unusable_database_fails_fast(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="directory does not exist"):
        Store.open("sqlite:////nonexistent-dir/sub/audit.db")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        Store.open("postgresql://nobody@127.0.0.1:1/audit")
    with pytest.raises(StoreError, match="unsupported database"):
        Store.open("mysql://x")
