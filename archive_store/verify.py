"""Recheck the whole store: every frame, checksum and hash against the catalog, and the chain.

Frames are located through the catalog, never by scanning, so one damaged frame is blamed on
its own record only and every other entry is still checked (and still readable).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from archive_store import segment
from archive_store.catalog import connect, epoch_micros, hash_hex
from archive_store.codec import FrameCodec
from archive_store.errors import ArchiveStoreError
from archive_store.models import Problem

_FIELDS = {
    "record": ("type", "seq", "record_id", "version", "at", "actor", "sha256", "prev", "record"),
    "event": ("type", "seq", "record_id", "event", "at", "actor", "sha256", "prev"),
    "redacted": ("type", "seq", "record_id", "version", "sha256", "entry_hash", "prev"),
}


def verify_store(
    catalog_path: Path,
    segments_dir: Path,
    lock_path: Path | None,
    codec: FrameCodec | None = None,
    *,
    read_only: bool = False,
) -> list[Problem]:
    """Check every entry and segment file; returns the problems found (empty if sound).

    :param catalog_path: the store's `catalog.db`
    :param segments_dir: the store's `segments/` folder
    :param lock_path: the store's `.lock`, held shared only while the snapshot is taken; None
        for a read-only folder, where no writer can run
    :param codec: the store's codec, to open sealed frames
    :param read_only: open the catalog read-only
    """
    conn = connect(catalog_path, read_only=read_only)
    try:
        with ExitStack() as stack:
            conn.execute("BEGIN")
            stack.callback(conn.execute, "COMMIT")
            files, sizes, segments = _take_snapshot(conn, segments_dir, lock_path, stack)
            return _check(conn, files, sizes, segments, codec)
    finally:
        conn.close()


def _take_snapshot(
    conn: sqlite3.Connection, segments_dir: Path, lock_path: Path | None, stack: ExitStack
) -> tuple[dict[int, BinaryIO | None], dict[int, int], dict[int, sqlite3.Row]]:
    """Fix the catalog snapshot and open every segment file it names, with no writer active.

    A shared lock for this moment only: appends and compactions wait a few milliseconds, and
    from then on the open files and the read transaction stay consistent with each other even
    if a writer appends or disposal replaces a file.
    """
    fd = -1 if lock_path is None else os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_SH)
        segments = {
            row["segment_id"]: row
            for row in conn.execute(
                "SELECT segment_id, generation, sealed, end_offset FROM segments"
            ).fetchall()
        }
        files: dict[int, BinaryIO | None] = {}
        sizes: dict[int, int] = {}
        for segment_id, row in segments.items():
            path = segment.segment_path(segments_dir, segment_id, row["generation"])
            try:
                f = stack.enter_context(open(path, "rb", buffering=2**20))
            except FileNotFoundError:
                files[segment_id] = None
                continue
            files[segment_id] = f
            sizes[segment_id] = os.fstat(f.fileno()).st_size
    finally:
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the lock
    return files, sizes, segments


def _check(
    conn: sqlite3.Connection,
    files: dict[int, BinaryIO | None],
    sizes: dict[int, int],
    segments: dict[int, sqlite3.Row],
    codec: FrameCodec | None,
) -> list[Problem]:
    problems: list[Problem] = []

    def report(record_id: str | None, segment_id: int | None, reason: str) -> None:
        problems.append(Problem(record_id, segment_id, reason))

    for segment_id, row in segments.items():
        if files.get(segment_id) is None:
            name = f"{segment_id:06d}.{row['generation']}.seg"
            report(None, segment_id, f"segment file {name} is missing")
        elif sizes[segment_id] > row["end_offset"] and row["sealed"]:
            # (in the open segment, extra bytes are a crashed writer's uncommitted tail, which
            # the next write cuts off: not damage)
            report(None, segment_id, f"{sizes[segment_id] - row['end_offset']} bytes beyond the "
                   "committed end of a sealed segment")
        elif sizes[segment_id] < row["end_offset"]:
            report(None, segment_id, f"file is {sizes[segment_id]} bytes, shorter than the "
                   f"committed {row['end_offset']}")

    purge_seq = {
        row["record_id"]: row["seq"]
        for row in conn.execute(
            "SELECT record_id, MAX(seq) AS seq FROM entries WHERE type = 'event' "
            "AND event IN ('purged', 'erased') GROUP BY record_id"
        )
    }
    expected_prev = segment.ZERO_HASH
    previous_seq = 0
    previous: tuple[str | None, int | None] = (None, None)
    next_offset: dict[int, int] = {}
    for entry in conn.execute(_ENTRIES_WITH_RECORDS):
        record_id, segment_id = entry["record_id"], entry["segment_id"]
        if entry["seq"] != previous_seq + 1:
            report(record_id, segment_id, f"seq {entry['seq']} follows seq {previous_seq}")
        if hash_hex(entry["prev_hash"]) != expected_prev:
            # The link breaks after the previous entry: its hash is not what the chain goes on
            # from, so that entry (not this one, whose own frame agrees with its row) is named.
            blamed_id, blamed_segment = previous if previous_seq else (record_id, segment_id)
            report(blamed_id, blamed_segment, f"seq {previous_seq}: its entry hash is not the "
                   f"prev of the next entry (seq {entry['seq']}); the chain is broken")
        # The catalog's hashes carry the chain on, so a damaged frame is blamed on itself only.
        expected_prev, previous_seq = hash_hex(entry["entry_hash"]), entry["seq"]
        previous = (record_id, segment_id)
        if entry["type"] == "redacted" and purge_seq.get(record_id, 0) < entry["seq"]:
            report(record_id, segment_id,
                   f"seq {entry['seq']}: redacted with no purged or erased event")
        seg = segments.get(segment_id)
        if seg is None:
            report(record_id, segment_id, f"seq {entry['seq']}: segment not in the catalog")
            continue
        if entry["offset"] != next_offset.get(segment_id, 0):
            report(record_id, segment_id,
                   f"seq {entry['seq']}: does not start where the previous entry ended")
        next_offset[segment_id] = entry["offset"] + entry["length"]
        f = files.get(segment_id)
        if f is None:
            report(record_id, segment_id, f"seq {entry['seq']}: segment file is missing")
            continue
        if entry["offset"] + entry["length"] > seg["end_offset"]:
            report(record_id, segment_id, f"seq {entry['seq']}: beyond the segment's end")
        try:
            envelope = segment.read_frame(f, entry["offset"], entry["length"], codec)
            value = segment.parse_envelope(envelope)
        except ArchiveStoreError as e:  # damaged, or sealed with a key that is gone
            report(record_id, segment_id, f"seq {entry['seq']}: {e}")
            continue
        for reason in _check_envelope(entry, envelope, value):
            report(record_id, segment_id, f"seq {entry['seq']}: {reason}")
        if entry["type"] == "record":
            for reason in _check_record_row(entry, value.get("record")):
                report(record_id, segment_id, f"seq {entry['seq']}: {reason}")

    for segment_id, end in next_offset.items():
        if end != segments[segment_id]["end_offset"]:
            report(None, segment_id, f"entries end at {end}, catalog end is "
                   f"{segments[segment_id]['end_offset']}")
    for row in conn.execute(
        "SELECT r.record_id, r.state, r.version, r.sha256, r.segment_id, e.type, e.record_id "
        "AS e_record, e.version AS e_version, e.sha256 AS e_sha256, e.segment_id AS e_segment "
        "FROM records r LEFT JOIN entries e ON e.seq = r.seq"
    ):
        expected_type = "redacted" if row["state"] in ("purged", "erased") else "record"
        e_sha = None if row["e_sha256"] is None else hash_hex(row["e_sha256"])
        if (row["e_record"], row["e_version"], e_sha, row["e_segment"], row["type"]) != (
            row["record_id"], row["version"], hash_hex(row["sha256"]), row["segment_id"],
            expected_type
        ):
            report(row["record_id"], row["segment_id"], "catalog row does not match its entry")
    return problems


# Each entry with the catalog row of its record (an index look-up each, by primary key).
_ENTRIES_WITH_RECORDS = (
    "SELECT e.*, r.record_id AS r_id, r.seq AS r_seq, r.state AS r_state, "
    "r.category AS r_category, r.created_at AS r_created, r.updated_at AS r_updated, "
    "r.updated_at_us AS r_updated_us, r.customer_id AS r_customer, r.parent_id AS r_parent "
    "FROM entries e LEFT JOIN records r ON r.record_id = e.record_id ORDER BY e.seq"
)


def _check_record_row(entry: sqlite3.Row, record: Any) -> list[str]:
    """What the catalog row of a record entry's record says otherwise than the sealed record.

    The row's category, times, customer and parent decide disposal, holds, erasure and
    processes, so an edit to one must show here, and so must a row that is gone.
    """
    if entry["r_id"] is None:
        return ["the catalog has no row for this record"]
    if entry["r_seq"] != entry["seq"] or entry["r_state"] not in ("archived", "restored"):
        return []  # an earlier version, or content gone: the row speaks of another entry
    if not isinstance(record, dict):
        return []  # (reported by the envelope's checks)
    differ = []
    if entry["r_category"] != record.get("category"):
        differ.append("category")
    for column, name in (("r_created", "created_at"), ("r_updated", "updated_at")):
        if name in record and _moment(entry[column]) != _moment(record[name]):
            differ.append(name)
    updated = _moment(record.get("updated_at"))
    if updated is not None and entry["r_updated_us"] != epoch_micros(updated):
        differ.append("updated_at_us")
    if entry["r_parent"] != record.get("parent_id"):
        differ.append("parent_id")
    customer = record.get("customer_id")
    # (a row may name a customer its record does not: one handed on by an erasure above it)
    if customer is not None and entry["r_customer"] != customer:
        differ.append("customer_id")
    if differ:
        return [f"catalog {', '.join(differ)} differ from the sealed record"]
    return []


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _check_envelope(entry: sqlite3.Row, envelope: bytes, value: dict[str, Any]) -> list[str]:
    """What is wrong with one decoded envelope, compared with its catalog row."""
    kind = entry["type"]
    reasons: list[str] = []
    if value.get("type") != kind:
        return [f"entry is a {value.get('type')!r} frame, the catalog says {kind!r}"]
    optional = {"reason"} if kind == "event" else set()  # a restore's reason, when given
    if set(value) - optional != set(_FIELDS[kind]):
        reasons.append("envelope fields are not those of its type")
    expected: dict[str, Any] = {
        "seq": entry["seq"],
        "record_id": entry["record_id"],
        "sha256": hash_hex(entry["sha256"]),
        "prev": hash_hex(entry["prev_hash"]),
    }
    if kind in ("record", "redacted"):
        expected["version"] = entry["version"]
    if kind in ("record", "event"):
        expected.update(at=entry["at"], actor=entry["actor"])
    if kind == "event":
        expected["event"] = entry["event"]
        expected["reason"] = entry["reason"] if "reason" in entry.keys() else None
    differ = sorted(key for key, want in expected.items() if value.get(key) != want)
    if differ:
        reasons.append(f"envelope {', '.join(differ)} differ from the catalog")
    # A redacted frame cannot be rehashed (its content is gone); it carries the original hash.
    actual = str(value.get("entry_hash")) if kind == "redacted" else segment.sha256_hex(envelope)
    if actual != hash_hex(entry["entry_hash"]):
        reasons.append("entry hash does not match the catalog (content changed)")
    if kind == "record":
        try:
            sha = segment.sha256_hex(segment.canonical_json(value.get("record")))
        except (TypeError, ValueError):
            sha = ""
        if sha != hash_hex(entry["sha256"]):
            reasons.append("record sha256 does not match (record content changed)")
    return reasons
