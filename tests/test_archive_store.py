"""The archive store on real files: round trips, segments, crash tails, restore, purge, damage."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from archive_store import (
    AlreadyArchived,
    ArchiveItem,
    ArchiveStore,
    NotArchived,
    RecordNotFound,
    RestoreInProgress,
    SegmentCorrupt,
    segment,
)
from archive_store.codec import FrameCodec
from archive_store.segment import iter_frames

AT = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
SMALL = 8 * 1024

ENGLISH = (
    "Customer asked for a refund of invoice INV-2023-004512 after the parcel arrived damaged; "
    "agent li.wei@example.com called +86 138 0013 8000 and approved it. "
)
CHINESE = "客户因包裹在运输中损坏要求退款，客服已电话联系并批准退款申请，请财务部门尽快处理。"


def make_record(record_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid record JSON value with mixed English and Chinese text."""
    record: dict[str, Any] = {
        "id": record_id,
        "kind": "ticket",
        "category": "support",
        "customer_id": "C-17",
        "owner": "team-emea",
        "subject": f"Refund 退款 {record_id}",
        "body": (ENGLISH + CHINESE) * 6 + record_id,
        "status": "closed",
        "created_at": "2023-03-01T09:00:00Z",
        "updated_at": "2023-03-02T10:30:00.250000Z",
        "attributes": {"channel": "email", "tags": ["refund", "退款"], "nested": {"n": [1, 2.5]}},
    }
    record.update(overrides)
    return record


def make_item(record_id: str, **overrides: Any) -> ArchiveItem:
    """An ArchiveItem around `make_record`."""
    record = make_record(record_id, **overrides)
    updated = datetime.fromisoformat(record["updated_at"])
    return ArchiveItem(
        record_id=record_id,
        record=record,
        category=record["category"],
        customer_id=record["customer_id"],
        updated_at=updated,
    )


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def store(store_dir: Path) -> Iterator[ArchiveStore]:
    with ArchiveStore.open(store_dir) as s:
        yield s


@pytest.fixture
def small_store(store_dir: Path) -> Iterator[ArchiveStore]:
    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as s:
        yield s


def segment_files(store_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store_dir / "segments").iterdir())}


def catalog(store_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(store_dir / "catalog.db")
    conn.row_factory = sqlite3.Row
    return conn


def catalog_rows(store_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    conn = catalog(store_dir)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# The seq of every entry the catalog names: each record's current one, and its history.
ALL_SEQS = "SELECT seq, record_id FROM records UNION ALL SELECT seq, record_id FROM history"


def entry_location(store_dir: Path, record_id: str) -> tuple[Path, int, int]:
    """The file, offset and length of a record's current entry."""
    (row,) = catalog_rows(
        store_dir,
        "SELECT r.segment_id, s.generation, r.offset, r.length FROM records r "
        "JOIN segments s ON s.segment_id = r.segment_id WHERE r.record_id = ?",
        (record_id,),
    )
    path = store_dir / "segments" / f"{row['segment_id']:06d}.{row['generation']}.seg"
    return path, row["offset"], row["length"]


def decoded_frames(path: Path) -> list[bytes]:
    """Every frame of a segment file of a store without a key, decompressed."""
    codec = FrameCodec(None, lambda key_id: None, lambda dict_id: None)
    with path.open("rb") as f:
        return [segment.decode_frame(frame, codec) for _, frame in iter_frames(f)]


def named(problems: list[Any]) -> set[str]:
    return {p.record_id for p in problems if p.record_id is not None}


def archive_ids(store: ArchiveStore, ids: list[str], **overrides: Any) -> None:
    """Archive these records and end their move, as the archive job does once their active
    rows are deleted (a record still marked `pending` is left alone by a purge)."""
    store.archive_batch([make_item(i, **overrides) for i in ids], AT, "archive-job")
    store.clear_pending(ids)


# -- round trip ---------------------------------------------------------------------------


def test_archive_batch_round_trip(store: ArchiveStore) -> None:
    items = [
        make_item("T-1"),
        make_item("T-2", body=CHINESE, attributes={"deep": {"a": [{"b": None}, True, -0.5]}}),
        make_item("T-3", customer_id=None, subject="", body=""),
    ]
    entries = store.archive_batch(items, AT, "archive-job")

    assert [e.record_id for e in entries] == ["T-1", "T-2", "T-3"]
    assert [e.seq for e in entries] == [1, 2, 3]
    for item in items:
        assert store.get(item.record_id) == item.record
    info = store.info("T-1")
    assert (info.state, info.version, info.pending, info.indexed) == (
        "archived", 1, "delete_active", False,
    )
    assert info.archived_at == AT and info.restored_at is None and info.purged_at is None
    assert info.updated_at == datetime(2023, 3, 2, 10, 30, 0, 250000, tzinfo=UTC)
    assert store.hashes(["T-1"]) == {"T-1": entries[0].sha256}
    assert store.info("T-3").customer_id is None
    assert [(h.event, h.actor, h.at) for h in store.history("T-2")] == [
        ("archived", "archive-job", AT)
    ]
    assert store.counts() == {  # pending: stored, their active rows not deleted yet
        "archived": 3, "restored": 0, "purged": 0, "erased": 0, "indexed": 0, "pending": 3,
    }
    assert store.verify() == []


def test_get_unknown_record_raises_not_found(store: ArchiveStore) -> None:
    with pytest.raises(RecordNotFound):
        store.get("nope")
    with pytest.raises(RecordNotFound):
        store.info("nope")
    with pytest.raises(RecordNotFound):
        store.history("nope")


def test_get_returns_exact_json_value(tmp_path: Path) -> None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text()
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    )
    counter = itertools.count()
    with ArchiveStore.open(tmp_path / "a", segment_max_bytes=SMALL) as store:

        @settings(max_examples=60, deadline=None)
        @given(attributes=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
        def check(attributes: dict[str, Any]) -> None:
            record_id = f"H-{next(counter)}"
            store.archive_batch([make_item(record_id, attributes=attributes)], AT, "job")
            assert store.get(record_id)["attributes"] == attributes

        check()
        assert store.verify() == []


def test_lone_surrogate_survives_round_trip(store: ArchiveStore) -> None:
    archive_ids(store, ["S-1"], body="broken \ud800 text")
    assert store.get("S-1")["body"] == "broken \ud800 text"
    assert store.verify() == []


def test_archive_batch_refuses_naive_times_and_duplicate_ids(store: ArchiveStore) -> None:
    with pytest.raises(ValueError):
        store.archive_batch([make_item("N-1")], datetime(2026, 1, 1), "job")
    with pytest.raises(ValueError):
        store.archive_batch([make_item("D-1"), make_item("D-1")], AT, "job")
    assert store.counts()["archived"] == 0


def test_find_archived_names_only_archived(store: ArchiveStore) -> None:
    archive_ids(store, [f"F-{i}" for i in range(1200)])
    store.clear_pending(["F-1"])
    store.begin_restore("F-1")
    store.complete_restore("F-1", AT, "admin")

    asked = ["F-0", "F-1", "F-1199", "missing"] + [f"F-{i}" for i in range(600)]

    found = store.find_archived(asked)

    assert "F-1" not in found and "missing" not in found
    assert {"F-0", "F-1199", "F-599"} <= found
    assert len(found) == 600  # F-0..F-599 without F-1, plus F-1199


def test_archive_batch_rerun_with_same_content_appends_nothing(
    store: ArchiveStore, store_dir: Path
) -> None:
    first = store.archive_batch([make_item("R-1"), make_item("R-2")], AT, "job")
    store.clear_pending(["R-1", "R-2"])
    before = segment_files(store_dir)

    again = store.archive_batch([make_item("R-1"), make_item("R-3")], AT, "job")

    assert again[0] == first[0]
    assert again[1].seq == 3
    assert store.info("R-1").pending == "delete_active"
    assert store.info("R-2").pending is None
    assert len(catalog_rows(store_dir, ALL_SEQS)) == 3
    (name, data), = before.items()
    assert segment_files(store_dir)[name].startswith(data)
    assert store.verify() == []


def test_archive_batch_different_content_raises_and_writes_nothing(
    store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(store, ["A-1"])
    before = segment_files(store_dir)

    with pytest.raises(AlreadyArchived) as excinfo:
        store.archive_batch([make_item("A-2"), make_item("A-1", body="changed")], AT, "job")

    assert excinfo.value.code == "already_archived"
    assert segment_files(store_dir) == before
    assert store.find_archived(["A-2"]) == set()
    assert store.get("A-1") == make_record("A-1")
    assert store.verify() == []


def test_versions_after_restore_and_rearchive(store: ArchiveStore) -> None:
    archive_ids(store, ["V-1"])
    store.clear_pending(["V-1"])
    store.begin_restore("V-1")
    store.complete_restore("V-1", AT + timedelta(days=1), "admin")
    changed = make_item("V-1", body="updated after restore 更新")

    (entry,) = store.archive_batch([changed], AT + timedelta(days=400), "job")

    info = store.info("V-1")
    assert (info.state, info.version, info.restored_at) == ("archived", 2, None)
    assert store.get("V-1") == changed.record
    assert store.hashes(["V-1"]) == {"V-1": entry.sha256}
    assert [(h.event, h.actor) for h in store.history("V-1")] == [
        ("archived", "archive-job"), ("restored", "admin"), ("archived", "job"),
    ]
    assert store.verify() == []



def test_versions_are_every_archived_version_oldest_first(store: ArchiveStore) -> None:
    archive_ids(store, ["V-1", "V-2"], body="first version")
    store.clear_pending(["V-1", "V-2"])
    store.begin_restore("V-1")
    store.complete_restore("V-1", AT + timedelta(days=1), "admin")
    changed = make_item("V-1", body="second version")
    store.archive_batch([changed], AT + timedelta(days=400), "job")
    store.purge(["V-2"], AT + timedelta(days=500), "disposal")

    versions = store.versions(["V-1", "V-2", "NEVER"])

    assert [(v["id"], v["body"]) for v in versions] == [
        ("V-1", "first version"), ("V-1", "second version"),
    ]


# -- segments -----------------------------------------------------------------------------


def test_many_segments_are_read_correctly_and_sealed_ones_never_change(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    for batch in range(6):
        archive_ids(small_store, [f"M-{batch}-{i}" for i in range(10)])
    sealed = {
        f"{row['segment_id']:06d}.{row['generation']}.seg"
        for row in catalog_rows(store_dir, "SELECT * FROM segments WHERE sealed = 1")
    }
    before = segment_files(store_dir)
    assert len(sealed) >= 4

    for batch in range(6, 10):
        archive_ids(small_store, [f"M-{batch}-{i}" for i in range(10)])

    after = segment_files(store_dir)
    assert all(after[name] == before[name] for name in sealed)
    assert all(len(data) <= SMALL for data in after.values())
    for batch in range(10):
        for i in range(10):
            record_id = f"M-{batch}-{i}"
            assert small_store.get(record_id) == make_record(record_id)
    streamed = list(small_store.iter_records())
    assert len(streamed) == 100
    assert [e.segment_id for e, _ in streamed] == sorted(e.segment_id for e, _ in streamed)
    assert all(record == make_record(e.record_id) for e, record in streamed)
    assert small_store.verify() == []


def test_reopen_continues_the_chain(small_store: ArchiveStore, store_dir: Path) -> None:
    archive_ids(small_store, [f"O-{i}" for i in range(20)])
    small_store.close()
    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as reopened:
        archive_ids(reopened, [f"P-{i}" for i in range(20)])
        assert reopened.counts()["archived"] == 40
        assert reopened.verify() == []


# -- crashes ------------------------------------------------------------------------------


def append_uncommitted_frames(store_dir: Path) -> tuple[Path, int]:
    """Append two well-formed frames to the active segment without a catalog commit."""
    (row,) = catalog_rows(
        store_dir, "SELECT segment_id, generation, end_offset FROM segments WHERE sealed = 0"
    )
    path = store_dir / "segments" / f"{row['segment_id']:06d}.{row['generation']}.seg"
    payload = zstandard.ZstdCompressor().compress(b'{"type":"record","seq":999}')
    frame = struct.pack("<4sII", b"ARCH", len(payload), zlib.crc32(payload)) + payload
    with open(path, "ab") as f:
        f.write(frame + frame[:7])  # a whole frame, then a torn one
    return path, row["end_offset"]


def test_uncommitted_tail_is_cut_off_by_the_next_write(
    store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(store, ["C-1", "C-2"])
    path, committed = append_uncommitted_frames(store_dir)
    problems = store.verify()
    assert problems == []  # an uncommitted tail in the open segment is not damage

    archive_ids(store, ["C-3"])

    (row,) = catalog_rows(store_dir, "SELECT end_offset FROM segments")
    assert path.stat().st_size == row["end_offset"]
    _, offset, _ = entry_location(store_dir, "C-3")
    assert offset == committed
    assert [store.get(i)["id"] for i in ("C-1", "C-2", "C-3")] == ["C-1", "C-2", "C-3"]
    assert store.verify() == []


def test_open_cuts_off_an_uncommitted_tail(store: ArchiveStore, store_dir: Path) -> None:
    archive_ids(store, ["C-1"])
    store.close()
    path, committed = append_uncommitted_frames(store_dir)

    with ArchiveStore.open(store_dir) as reopened:
        assert path.stat().st_size == committed
        assert reopened.verify() == []


def test_segment_shorter_than_catalog_refuses_appends(
    store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(store, ["H-1", "H-2", "H-3"])
    path, offset, length = entry_location(store_dir, "H-3")
    with open(path, "r+b") as f:
        f.truncate(offset + length // 2)

    with pytest.raises(SegmentCorrupt):
        archive_ids(store, ["H-4"])

    assert store.find_archived(["H-4"]) == set()
    assert store.get("H-1")["id"] == "H-1"
    assert named(store.verify()) == {"H-3"}


def test_open_removes_files_of_unreferenced_generations(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(small_store, [f"G-{i}" for i in range(30)])
    small_store.close()
    segments = store_dir / "segments"
    (segments / "000001.1.seg").write_bytes(b"half-written compaction")  # crashed before commit
    (segments / "000099.0.seg").write_bytes(b"new segment never committed")

    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as reopened:
        assert not (segments / "000001.1.seg").exists()
        assert not (segments / "000099.0.seg").exists()
        assert (segments / "000001.0.seg").exists()
        assert reopened.verify() == []


def test_abandoned_new_segment_file_is_overwritten_not_appended_to(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(small_store, ["W-0"])
    (row,) = catalog_rows(store_dir, "SELECT MAX(segment_id) AS top FROM segments")
    stale = store_dir / "segments" / f"{row['top'] + 1:06d}.0.seg"
    stale.write_bytes(b"x" * 100)  # a writer crashed right after creating the next segment

    for batch in range(4):
        archive_ids(small_store, [f"W-{batch}-{i}" for i in range(10)])

    assert small_store.verify() == []


# -- restore ------------------------------------------------------------------------------


def test_restore_protocol(store: ArchiveStore) -> None:
    store.archive_batch([make_item(i) for i in ("X-1", "X-2")], AT, "archive-job")
    with pytest.raises(RestoreInProgress):
        store.begin_restore("X-1")  # the archive job has not finished its move yet
    store.clear_pending(["X-1", "X-2"])

    entry = store.begin_restore("X-1")
    assert entry.pending == "insert_active"
    with pytest.raises(RestoreInProgress) as excinfo:
        store.begin_restore("X-1")
    assert excinfo.value.code == "restore_in_progress"
    store.clear_pending(["X-1"])  # only an archive move's mark is cleared here
    assert [e.record_id for e in store.iter_pending()] == ["X-1"]

    store.complete_restore("X-1", AT + timedelta(hours=1), "admin")

    info = store.info("X-1")
    assert (info.state, info.pending, info.restored_at) == (
        "restored", None, AT + timedelta(hours=1),
    )
    assert store.get("X-1") == make_record("X-1")
    with pytest.raises(NotArchived) as not_archived:
        store.begin_restore("X-1")
    assert not_archived.value.code == "not_archived"
    with pytest.raises(RecordNotFound):
        store.begin_restore("never")
    assert [h.event for h in store.history("X-1")] == ["archived", "restored"]
    assert list(store.iter_pending()) == []
    assert store.counts()["restored"] == 1
    assert store.verify() == []


def test_abort_restore_leaves_record_archived(store: ArchiveStore) -> None:
    archive_ids(store, ["Y-1"])
    store.clear_pending(["Y-1"])
    store.begin_restore("Y-1")

    store.abort_restore("Y-1")

    info = store.info("Y-1")
    assert (info.state, info.pending) == ("archived", None)
    assert store.begin_restore("Y-1").pending == "insert_active"


def test_a_batch_leaves_out_a_record_being_restored(store: ArchiveStore) -> None:
    """The restore may have put the record back in the active database already, where an
    archive batch found it: the batch moves the others, and the restore goes on."""
    archive_ids(store, ["Z-1"])
    store.clear_pending(["Z-1"])
    store.begin_restore("Z-1")
    seq = store.last_seq()

    stored = store.archive_batch([make_item("Z-1"), make_item("Z-2")], AT, "archive-job")

    assert [e.record_id for e in stored] == ["Z-2"]
    assert store.info("Z-1").pending == "insert_active"
    assert [e.seq > seq for e in stored] == [True]
    store.complete_restore("Z-1", AT + timedelta(hours=1), "admin")
    assert [h.event for h in store.history("Z-1")] == ["archived", "restored"]
    assert store.verify() == []


# -- indexing bookkeeping ----------------------------------------------------------------


def test_mark_indexed_ignores_records_changed_meanwhile(store: ArchiveStore) -> None:
    archive_ids(store, ["I-1", "I-2", "I-3"])
    store.clear_pending(["I-1", "I-2", "I-3"])
    seen = store.iter_unindexed(limit=10)
    assert [(e.record_id, e.version, e.state) for e in seen] == [
        ("I-1", 1, "archived"), ("I-2", 1, "archived"), ("I-3", 1, "archived"),
    ]
    store.begin_restore("I-2")
    store.complete_restore("I-2", AT, "admin")  # restored while the indexer was working
    store.purge(["I-3"], AT, "dispose")

    store.mark_indexed([(e.record_id, e.version, e.state) for e in seen])

    assert store.info("I-1").indexed
    assert store.counts()["indexed"] == 1
    pending = store.iter_unindexed(limit=10)  # the index must now drop these two
    assert [(e.record_id, e.state) for e in pending] == [("I-2", "restored"), ("I-3", "purged")]
    store.mark_indexed([(e.record_id, e.version, e.state) for e in pending])
    assert store.iter_unindexed(limit=10) == []

    archive_ids(store, ["I-2"], body="re-archived")
    store.mark_indexed([("I-2", 1, "archived"), ("I-2", 1, "restored"), ("I-2", 1)])  # stale
    assert not store.info("I-2").indexed
    store.mark_indexed([("I-2", 2)])  # a pair means the archived state
    assert store.info("I-2").indexed


def test_mark_rebuilt_keeps_changes_made_during_a_rebuild(store: ArchiveStore) -> None:
    archive_ids(store, ["RB-1", "RB-2", "RB-3"])
    store.clear_pending(["RB-1", "RB-2", "RB-3"])
    before_rebuild = store.last_seq()
    rebuilt = [entry.record_id for entry, _ in store.iter_records()]
    store.begin_restore("RB-2")
    store.complete_restore("RB-2", AT, "admin")  # while the new index was being built
    store.mark_indexed([("RB-2", 1, "restored")])  # ...and removed from the old index

    store.mark_rebuilt(up_to_seq=before_rebuild)

    assert rebuilt == ["RB-1", "RB-2", "RB-3"]
    assert [(e.record_id, e.state) for e in store.iter_unindexed(10)] == [("RB-2", "restored")]
    assert store.info("RB-1").indexed and store.info("RB-3").indexed


def test_iter_catalog_filters_by_state_and_updated_at(store: ArchiveStore) -> None:
    stamps = {
        "U-1": "2020-01-01T00:00:00Z",
        "U-2": "2020-01-01T00:00:00.500000Z",  # string order would put this after U-3
        "U-3": "2020-01-01T00:00:01Z",
    }
    for record_id, updated in stamps.items():
        archive_ids(store, [record_id], updated_at=updated)
    cutoff = datetime(2020, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)

    due = [e.record_id for e in store.iter_catalog(state="archived", updated_before=cutoff)]

    assert due == ["U-1", "U-2"]  # inclusive
    assert [e.record_id for e in store.iter_catalog()] == ["U-1", "U-2", "U-3"]
    assert list(store.iter_catalog(state="restored")) == []
    with pytest.raises(ValueError):
        list(store.iter_catalog(state="bogus"))


def test_iter_catalog_streams_past_a_page(store: ArchiveStore) -> None:
    archive_ids(store, [f"L-{i:05d}" for i in range(2500)])
    ids = [e.record_id for e in store.iter_catalog(state="archived")]
    assert ids == sorted(f"L-{i:05d}" for i in range(2500))
    assert sum(1 for _ in store.iter_records()) == 2500


@pytest.mark.parametrize("state", [None, "archived"])
def test_each_page_of_the_catalog_reads_on_from_the_last_without_sorting(
    store: ArchiveStore, state: str | None
) -> None:
    """Disposal streams every archived row: a page that scans and sorts the whole state (as
    one ordered by id over the state's index did) makes the stream quadratic in the archive."""
    archive_ids(store, [f"Q-{i:05d}" for i in range(1500)])
    statements: list[str] = []
    conn = store._db()
    conn.set_trace_callback(statements.append)
    try:
        later = datetime(2100, 1, 1, tzinfo=UTC)
        rows = list(store.iter_catalog(state=state, updated_before=later))
    finally:
        conn.set_trace_callback(None)
    assert len(rows) == 1500
    pages = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert len(pages) == 2
    for sql in pages:
        plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        # (the first page may start at the table's start: "SCAN records", in key order)
        assert "TEMP B-TREE" not in plan and "autoindex" not in plan, plan


def test_the_unindexed_records_are_found_by_their_index_without_sorting(
    store: ArchiveStore,
) -> None:
    """Index catch-up asks for the next batch of unindexed records again and again: a batch
    that scans the table (or sorts what it found) makes catching up quadratic."""
    archive_ids(store, [f"U-{i:05d}" for i in range(1500)])
    store.mark_indexed([(f"U-{i:05d}", 1) for i in range(0, 1500, 2)])
    statements: list[str] = []
    conn = store._db()
    conn.set_trace_callback(statements.append)
    try:
        batch = store.iter_unindexed(100)
    finally:
        conn.set_trace_callback(None)
    assert [e.record_id for e in batch] == [f"U-{i:05d}" for i in range(1, 200, 2)]
    (sql,) = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "USING INDEX records_unindexed" in plan and "TEMP B-TREE" not in plan, plan


# -- purge --------------------------------------------------------------------------------


def test_purge_removes_content_from_segments(small_store: ArchiveStore, store_dir: Path) -> None:
    ids = [f"P-{i}" for i in range(12)]
    archive_ids(small_store, ids)
    victim_body = "SECRET-MEDICAL-NOTE 病历 " * 3
    small_store.archive_batch([make_item("P-secret", body=victim_body)], AT, "job")
    small_store.clear_pending(["P-secret"])
    archive_ids(small_store, ["P-after-1", "P-after-2"])
    path, _, _ = entry_location(store_dir, "P-secret")
    neighbours = [
        row["record_id"]
        for row in catalog_rows(
            store_dir, "SELECT record_id FROM records WHERE segment_id = "
            "(SELECT segment_id FROM records WHERE record_id = 'P-secret') "
            "AND record_id != 'P-secret'"
        )
    ]
    assert neighbours
    assert any(b"SECRET-MEDICAL-NOTE" in f for f in decoded_frames(path))

    assert small_store.purge(["P-secret", "P-0", "unknown"], AT, "dispose") == 2

    assert not path.exists()
    new_path, _, _ = entry_location(store_dir, "P-secret")
    assert new_path != path
    for name in segment_files(store_dir):
        frames = decoded_frames(store_dir / "segments" / name)
        assert not any(b"SECRET-MEDICAL-NOTE" in f for f in frames)
        assert not any("病历".encode() in f for f in frames)
    with pytest.raises(RecordNotFound, match="purged"):
        small_store.get("P-secret")
    for record_id in neighbours + ["P-after-2"]:
        assert small_store.get(record_id) == make_record(record_id)
    info = small_store.info("P-secret")
    assert (info.state, info.purged_at, info.indexed) == ("purged", AT, False)
    assert [h.event for h in small_store.history("P-secret")] == ["archived", "purged"]
    assert small_store.counts()["purged"] == 2
    assert small_store.find_archived(["P-secret"]) == set()
    assert small_store.verify() == []
    archive_ids(small_store, ["P-later"])
    assert small_store.verify() == []


def test_purge_redacts_every_version(small_store: ArchiveStore, store_dir: Path) -> None:
    small_store.archive_batch([make_item("Q-1", body="first version ALPHA")], AT, "job")
    small_store.clear_pending(["Q-1"])
    small_store.begin_restore("Q-1")
    small_store.complete_restore("Q-1", AT, "admin")
    archive_ids(small_store, [f"Q-fill-{i}" for i in range(10)])
    small_store.archive_batch([make_item("Q-1", body="second version BETA")], AT, "job")
    assert small_store.purge(["Q-1"], AT, "dispose") == 0  # still moving: its rows are active
    small_store.clear_pending(["Q-1"])

    assert small_store.purge(["Q-1"], AT, "dispose") == 1

    for name in segment_files(store_dir):
        for frame in decoded_frames(store_dir / "segments" / name):
            assert b"ALPHA" not in frame and b"BETA" not in frame
    assert [h.event for h in small_store.history("Q-1")] == [
        "archived", "restored", "archived", "purged",
    ]
    assert small_store.verify() == []
    small_store.archive_batch([make_item("Q-1", body="third")], AT, "job")  # may come back
    assert small_store.info("Q-1").version == 3
    assert small_store.verify() == []


def test_purge_skips_records_not_archived(store: ArchiveStore) -> None:
    archive_ids(store, ["S-1"])
    store.clear_pending(["S-1"])
    store.begin_restore("S-1")
    store.complete_restore("S-1", AT, "admin")
    assert store.purge(["S-1", "never"], AT, "dispose") == 0
    assert store.get("S-1")["id"] == "S-1"


def test_crash_after_purge_commit_leaves_old_generation_to_open(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(small_store, [f"K-{i}" for i in range(20)])
    old = segment_files(store_dir)
    small_store.purge(["K-0"], AT, "dispose")
    small_store.close()
    (store_dir / "segments" / "000001.0.seg").write_bytes(old["000001.0.seg"])  # not deleted

    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as reopened:
        assert not (store_dir / "segments" / "000001.0.seg").exists()
        assert reopened.verify() == []
        with pytest.raises(RecordNotFound):
            reopened.get("K-0")


def test_readers_keep_working_while_disposal_compacts(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    ids = [f"B-{i}" for i in range(60)]
    archive_ids(small_store, ids)
    keep = ids[1::2]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for record_id in keep:
                    assert small_store.get(record_id)["id"] == record_id
        except BaseException as e:  # handed over to the test thread
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for record_id in ids[0::2]:
        small_store.purge([record_id], AT, "dispose")
    stop.set()
    for t in readers:
        t.join()

    assert errors == []
    assert small_store.verify() == []


# -- damage -------------------------------------------------------------------------------


@pytest.fixture
def damaged_setup(small_store: ArchiveStore) -> tuple[ArchiveStore, list[str]]:
    ids = [f"D-{i:02d}" for i in range(40)]
    archive_ids(small_store, ids)
    return small_store, ids


def assert_others_readable(store: ArchiveStore, ids: list[str], damaged: set[str]) -> None:
    for record_id in ids:
        if record_id in damaged:
            with pytest.raises(SegmentCorrupt):
                store.get(record_id)
        else:
            assert store.get(record_id) == make_record(record_id)


def test_verify_names_record_with_flipped_byte(
    damaged_setup: tuple[ArchiveStore, list[str]], store_dir: Path
) -> None:
    store, ids = damaged_setup
    path, offset, length = entry_location(store_dir, "D-03")
    assert catalog_rows(store_dir, "SELECT sealed FROM segments WHERE segment_id = 1")[0][0] == 1
    data = bytearray(path.read_bytes())
    data[offset + length // 2] ^= 0x40
    path.write_bytes(bytes(data))

    problems = store.verify()

    assert named(problems) == {"D-03"}
    assert all(p.segment_id == 1 for p in problems)
    assert_others_readable(store, ids, {"D-03"})


@pytest.mark.parametrize("where", ["magic", "length"])
def test_verify_names_record_with_damaged_header(
    damaged_setup: tuple[ArchiveStore, list[str]], store_dir: Path, where: str
) -> None:
    store, ids = damaged_setup
    path, offset, _ = entry_location(store_dir, "D-05")
    data = bytearray(path.read_bytes())
    data[offset + (0 if where == "magic" else 5)] ^= 0x01
    path.write_bytes(bytes(data))

    assert named(store.verify()) == {"D-05"}
    assert_others_readable(store, ids, {"D-05"})


def test_verify_names_record_cut_by_truncation(
    damaged_setup: tuple[ArchiveStore, list[str]], store_dir: Path
) -> None:
    store, ids = damaged_setup
    last = ids[-1]
    path, offset, length = entry_location(store_dir, last)
    with open(path, "r+b") as f:
        f.truncate(offset + length - 3)

    assert named(store.verify()) == {last}
    assert_others_readable(store, ids, {last})


def test_verify_names_records_of_a_missing_segment(
    damaged_setup: tuple[ArchiveStore, list[str]], store_dir: Path
) -> None:
    store, ids = damaged_setup
    in_first = {
        row["record_id"]
        for row in catalog_rows(store_dir, "SELECT record_id FROM records WHERE segment_id = 1")
    }
    (store_dir / "segments" / "000001.0.seg").unlink()

    assert named(store.verify()) == in_first
    assert_others_readable(store, ids, in_first)


def forge_entry(store_dir: Path, record_id: str, *, rehash: bool = False) -> bytes:
    """Change a record's body and rewrite its frame with a valid crc, as a careful forger would
    (with `rehash`, the envelope's sha256 of the record too).

    The frame's length changes, so the rest of the segment file is shifted and the catalog's
    offsets and segment end are fixed up: every frame-level check (magic, length, crc,
    decompression) passes, only the hashes can tell.
    """
    path, offset, length = entry_location(store_dir, record_id)
    data = path.read_bytes()
    codec = FrameCodec(None, lambda key_id: None, lambda dict_id: None)
    envelope = segment.decode_frame(data[offset : offset + length], codec)
    edited = envelope.replace(b"approved it", b"denied it, twice", 1)
    assert edited != envelope
    if rehash:
        value = json.loads(envelope)
        record = json.loads(edited)["record"]
        edited = edited.replace(
            value["sha256"].encode(), segment.sha256_hex(segment.canonical_json(record)).encode()
        )
    frame = segment.build_frame(edited, codec)
    path.write_bytes(data[:offset] + frame + data[offset + length :])
    shift = len(frame) - length
    (row,) = catalog_rows(
        store_dir, "SELECT seq, segment_id FROM records WHERE record_id = ?", (record_id,)
    )
    conn = catalog(store_dir)
    with conn:
        conn.execute("UPDATE records SET length = length + ? WHERE seq = ?", (shift, row["seq"]))
        for table in ("records", "history"):
            conn.execute(
                f"UPDATE {table} SET offset = offset + ? WHERE segment_id = ? AND seq > ?",
                (shift, row["segment_id"], row["seq"]),
            )
        conn.execute(
            "UPDATE segments SET end_offset = end_offset + ? WHERE segment_id = ?",
            (shift, row["segment_id"]),
        )
    conn.close()
    return edited


def test_verify_names_edited_entry_with_valid_crc(
    damaged_setup: tuple[ArchiveStore, list[str]], store_dir: Path
) -> None:
    store, ids = damaged_setup
    forge_entry(store_dir, "D-07")

    problems = store.verify()

    assert named(problems) == {"D-07"}
    assert any("hash" in p.reason for p in problems)
    assert_others_readable(store, ids, {"D-07"})


def test_verify_chain_catches_edit_with_rewritten_record_hash(
    damaged_setup: tuple[ArchiveStore, list[str]], store_dir: Path
) -> None:
    """The forger rehashes the record in its envelope: only the chain can tell."""
    store, ids = damaged_setup
    forge_entry(store_dir, "D-09", rehash=True)

    problems = store.verify()

    assert named(problems) == {"D-09"}
    assert any("chain" in p.reason for p in problems)


# -- concurrency --------------------------------------------------------------------------


def archive_many(directory: str, prefix: str, batches: int, per_batch: int) -> None:
    """Archive `batches` batches from a fresh store handle (a process or thread's own)."""
    with ArchiveStore.open(Path(directory), segment_max_bytes=SMALL) as store:
        for b in range(batches):
            ids = [f"{prefix}-{b}-{i}" for i in range(per_batch)]
            store.archive_batch([make_item(i) for i in ids], AT, prefix)


def assert_all_archived_once(store: ArchiveStore, store_dir: Path, expected: set[str]) -> None:
    rows = catalog_rows(store_dir, f"{ALL_SEQS} ORDER BY seq")
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert sorted(row["record_id"] for row in rows) == sorted(expected)
    assert store.find_archived(expected) == expected
    assert store.verify() == []


def test_two_threads_append_without_loss(small_store: ArchiveStore, store_dir: Path) -> None:
    def shared(prefix: str) -> Callable[[], None]:
        def run() -> None:
            for b in range(15):
                archive_ids(small_store, [f"{prefix}-{b}-{i}" for i in range(8)])
        return run

    threads = [
        threading.Thread(target=shared("TA")),
        threading.Thread(target=shared("TB")),
        threading.Thread(target=archive_many, args=(str(store_dir), "TC", 15, 8)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    expected = {f"{p}-{b}-{i}" for p in ("TA", "TB", "TC") for b in range(15) for i in range(8)}
    assert_all_archived_once(small_store, store_dir, expected)


def test_two_processes_append_without_loss(small_store: ArchiveStore, store_dir: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=archive_many, args=(str(store_dir), prefix, 12, 8))
        for prefix in ("PA", "PB")
    ]
    for p in processes:
        p.start()
    archive_ids(small_store, [f"PM-{i}" for i in range(20)])  # and this process meanwhile
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0

    expected = {f"{p}-{b}-{i}" for p in ("PA", "PB") for b in range(12) for i in range(8)}
    expected |= {f"PM-{i}" for i in range(20)}
    assert_all_archived_once(small_store, store_dir, expected)


# -- real crashes (SIGKILL at the store's crash points) ----------------------------------


def crash_during(directory: str, crash_at: str, operation: str, record_ids: list[str]) -> None:
    """In a child process: run one store operation and die by SIGKILL at `crash_at`."""
    os.environ["ARCHIVIST_CRASH_AT"] = crash_at
    with ArchiveStore.open(Path(directory), segment_max_bytes=SMALL) as store:
        if operation == "archive":
            store.archive_batch([make_item(i) for i in record_ids], AT, "job")
        else:
            store.purge(record_ids, AT, "dispose")


def run_crashing(store_dir: Path, crash_at: str, operation: str, record_ids: list[str]) -> None:
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=crash_during, args=(str(store_dir), crash_at, operation, record_ids)
    )
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -9  # killed where asked, not finished


def test_crash_before_archive_commit_loses_the_batch_cleanly(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    archive_ids(small_store, [f"E-{i}" for i in range(10)])
    small_store.close()

    run_crashing(store_dir, "store.frames_written:1", "archive", ["E-new-1", "E-new-2"])

    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as store:
        assert store.find_archived(["E-new-1", "E-new-2"]) == set()
        assert store.verify() == []
        archive_ids(store, ["E-new-1", "E-new-2"])  # the rerun
        assert store.get("E-new-2") == make_record("E-new-2")
        assert store.verify() == []


def test_crash_after_archive_commit_keeps_the_batch(
    small_store: ArchiveStore, store_dir: Path
) -> None:
    small_store.close()

    run_crashing(store_dir, "store.catalog_committed:1", "archive", ["E-1", "E-2"])

    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as store:
        assert store.find_archived(["E-1", "E-2"]) == {"E-1", "E-2"}
        archive_ids(store, ["E-1", "E-2"])  # a rerun appends nothing
        assert store.counts()["archived"] == 2
        assert store.verify() == []


@pytest.mark.parametrize(
    ("crash_at", "purged"),
    [("store.frames_written:1", False), ("store.catalog_committed:1", True)],
)
def test_crash_during_purge_leaves_old_or_new_state(
    small_store: ArchiveStore, store_dir: Path, crash_at: str, purged: bool
) -> None:
    ids = [f"J-{i}" for i in range(30)]
    archive_ids(small_store, ids)
    small_store.close()

    run_crashing(store_dir, crash_at, "purge", ["J-1", "J-25"])

    with ArchiveStore.open(store_dir, segment_max_bytes=SMALL) as store:
        referenced = {
            f"{row['segment_id']:06d}.{row['generation']}.seg"
            for row in catalog_rows(store_dir, "SELECT * FROM segments")
        }
        assert set(segment_files(store_dir)) == referenced  # leftovers removed on open
        assert store.verify() == []
        for record_id in ids:
            if record_id in ("J-1", "J-25") and purged:
                with pytest.raises(RecordNotFound):
                    store.get(record_id)
            else:
                assert store.get(record_id) == make_record(record_id)
        assert store.purge(["J-1", "J-25"], AT, "dispose") == (0 if purged else 2)
        assert store.verify() == []


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(record=st.dictionaries(st.text(), _JSON, max_size=6),
       actor=st.text(), record_id=st.text())
def test_spliced_envelope_is_byte_identical_to_canonical_json(record, actor, record_id) -> None:
    from archive_store.segment import canonical_json, canonical_object

    envelope = {"type": "record", "actor": actor, "record_id": record_id, "seq": 1, "prev": "p"}
    spliced = canonical_object(envelope, {"record": canonical_json(record)})
    assert spliced == canonical_json({**envelope, "record": record})


_JSON_WITH_FLOATS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False,
                                                                       allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_WITH_FLOATS)
def test_canonical_json_reads_back_equal_and_is_stable(value) -> None:
    from archive_store.segment import canonical_json

    data = canonical_json(value)
    again = json.loads(data.decode("utf-8", "surrogatepass"))
    assert again == value
    assert canonical_json(again) == data  # what verify recomputes from a read-back record


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": [1, {"b": -float("inf")}]},
                                 [None, float("nan")]])
def test_canonical_json_refuses_nan_and_infinities_anywhere(bad) -> None:
    from archive_store.segment import canonical_json

    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json(bad)


def test_a_customer_erasure_takes_every_record_of_theirs_listed_or_not(
    store: ArchiveStore,
) -> None:
    """A record of the customer's archived after the caller listed them shares the data key
    the erasure destroys: it is erased with the rest, never left archived without its key."""
    items = [make_item("CE-1"), make_item("CE-2"), make_item("OT-1", customer_id="C-9")]
    store.archive_batch(items, AT, "archive-job")
    store.clear_pending(["CE-1", "CE-2", "OT-1"])
    erased = store.erase(["CE-1"], AT, "admin", customer_id="C-17")
    assert sorted(e.record_id for e in erased) == ["CE-1", "CE-2"]
    assert {i: e.state for i, e in store.entries(["CE-1", "CE-2", "OT-1"]).items()} == {
        "CE-1": "erased", "CE-2": "erased", "OT-1": "archived"}
    assert store.verify() == []


CATALOG_EDITS = {
    "category": "INSERT INTO names (name) VALUES ('medical'); UPDATE records SET category = "
                "(SELECT id FROM names WHERE name = 'medical') WHERE record_id = 'T-1'",
    "updated_at": "UPDATE records SET updated_at = 946684800000000 WHERE record_id = 'T-1'",
    "customer_id": "UPDATE records SET customer_id = 'C999' WHERE record_id = 'T-1'",
    "parent_id": "UPDATE records SET parent_id = 'T-2' WHERE record_id = 'T-1'",
    "the catalog has no row": "DELETE FROM records WHERE record_id = 'T-1'",
}


@pytest.mark.parametrize("edit", sorted(CATALOG_EDITS))
def test_verify_names_a_catalog_row_edited_or_deleted_behind_the_store(
    store: ArchiveStore, store_dir: Path, edit: str
) -> None:
    """The catalog row's category, times, customer and parent decide disposal, holds, erasure
    and processes: each must agree with the sealed record (a row edited so that a record is
    disposed of years early, or dropped so that a recovery loses it, is damage)."""
    store.archive_batch([make_item("T-1"), make_item("T-2")], AT, "archive-job")
    assert store.verify() == []
    conn = sqlite3.connect(store_dir / "catalog.db")
    conn.executescript(CATALOG_EDITS[edit])
    conn.close()

    [problem] = store.verify()

    assert problem.record_id == "T-1" and edit in problem.reason


def test_a_restore_event_carries_the_hash_of_the_version_restored(store: ArchiveStore) -> None:
    """`complete_restores` takes the hashes `read_many` gave; one not of that version is named
    by verify (the event says which version it happened to)."""
    store.archive_batch([make_item("H-1"), make_item("H-2")], AT, "archive-job")
    store.clear_pending(["H-1", "H-2"])
    read = store.read_many(["H-1", "H-2"])
    assert {i: sha for i, (_, sha) in read.items()} == store.hashes(["H-1", "H-2"])
    store.begin_restores([["H-1"], ["H-2"]])
    store.complete_restores(["H-1", "H-2"], AT, "admin", "asked",
                            hashes={"H-1": read["H-1"][1], "H-2": "ab" * 32})

    [problem] = store.verify()

    assert problem.record_id == "H-2" and "not that of the version 1" in problem.reason


def test_verify_takes_a_customer_handed_on_by_an_erasure_above(
    store: ArchiveStore, store_dir: Path
) -> None:
    """A record naming no customer may be handed its parent's (see `erase`)."""
    store.archive_batch([make_item("T-1", customer_id=None)], AT, "archive-job")
    conn = sqlite3.connect(store_dir / "catalog.db")
    with conn:
        conn.execute("UPDATE records SET customer_id = 'C1' WHERE record_id = 'T-1'")
    conn.close()
    assert store.verify() == []


def test_restores_a_settling_completed_are_grouped_by_the_process_they_belong_to(
    store: ArchiveStore,
) -> None:
    """Two children of a root that never left the active database, and a process of its own
    (a root and its child), all restored when the restoring process was killed."""
    from dataclasses import replace

    from indexer.jobs.reconcile import restores_asked_for

    items = [
        replace(make_item("C-1"), parent_id="ROOT"),
        replace(make_item("C-2"), parent_id="ROOT"),
        make_item("P-1"),
        replace(make_item("P-1-a"), parent_id="P-1"),
        replace(make_item("X-1"), parent_id="C-2"),  # still archived: not completed
    ]
    store.archive_batch(items, AT, "archive-job")
    completed = ["C-1", "C-2", "P-1", "P-1-a"]

    assert restores_asked_for(store, completed, ["C-1"]) == [["C-1", "C-2"]]
    assert restores_asked_for(store, completed, ["P-1-a", "C-2"]) == [["C-1", "C-2"],
                                                                    ["P-1", "P-1-a"]]
    assert restores_asked_for(store, completed, ["X-1", "NOPE"]) == []


def test_get_many_leaves_out_a_record_purged_while_it_read(
    store_dir: Path, small_store: ArchiveStore
) -> None:
    """A disposal in another process, between the catalog rows read and the segment files
    opened, rewrites the segment: the purged record is left out, as if purged before."""
    ids = [f"G-{i}" for i in range(6)]
    archive_ids(small_store, ids)

    class PurgedMeanwhile(ArchiveStore):
        def _read_rows(self, rows: Any) -> Any:
            with ArchiveStore.open(store_dir) as other:  # another process's disposal
                assert other.purge(["G-2"], AT, "dispose") == 1
            return super()._read_rows(rows)

    with PurgedMeanwhile.open(store_dir, segment_max_bytes=SMALL) as racing:
        found = racing.get_many(ids)

    assert sorted(found) == ["G-0", "G-1", "G-3", "G-4", "G-5"]
    assert found["G-3"]["id"] == "G-3"
