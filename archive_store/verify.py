"""Recheck the whole store: every frame, checksum and hash against the catalog, and the chain.

Frames are located through the catalog, never by scanning, so one damaged frame is blamed on
its own record only and every other entry is still checked (and still readable).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from archive_store import segment
from archive_store.catalog import (
    ALL_ENTRIES,
    connect,
    epoch_micros,
    format_time,
    from_micros,
    get_head,
    hash_hex,
)
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

    # Each record's last purged or erased event: its seq, and the hash of what it removed.
    gone = {
        row["record_id"]: (row["seq"], hash_hex(row["sha256"]))
        for row in conn.execute(
            "SELECT record_id, MAX(seq) AS seq, sha256 FROM history WHERE type = 'event' "
            "AND event IN ('purged', 'erased') GROUP BY record_id"
        )
    }
    # An event carries the hash of the version it happened to: the record entry before it.
    evented = {row[0] for row in conn.execute(
        "SELECT DISTINCT record_id FROM history WHERE type = 'event'"
    )}
    version_sha: dict[tuple[str, int], object] = {}
    chain = _Chain(report)
    next_offset: dict[int, int] = {}
    for entry in conn.execute(_ENTRIES_WITH_RECORDS):
        record_id, segment_id = entry["record_id"], entry["segment_id"]
        seg = segments.get(segment_id)
        f = files.get(segment_id)
        if seg is not None and f is not None and entry["offset"] > next_offset.get(segment_id, 0):
            next_offset[segment_id] = _name_uncatalogued(
                f, segment_id, next_offset.get(segment_id, 0), entry["offset"], codec, chain
            )
        link = chain.step(entry["seq"], record_id, segment_id)
        if entry["r_id"] is None:
            report(record_id, segment_id, f"seq {entry['seq']}: the catalog has no row for "
                   "this record")
        if entry["type"] == "redacted" and gone.get(record_id, (0, ""))[0] < entry["seq"]:
            report(record_id, segment_id,
                   f"seq {entry['seq']}: redacted with no purged or erased event")
        if seg is None:
            report(record_id, segment_id, f"seq {entry['seq']}: segment not in the catalog")
            continue
        if entry["offset"] != next_offset.get(segment_id, 0):
            report(record_id, segment_id,
                   f"seq {entry['seq']}: does not start where the previous entry ended")
        next_offset[segment_id] = entry["offset"] + entry["length"]
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
        chain.opened(entry["seq"], link, value, envelope)
        for reason in _check_envelope(entry, value, gone.get(record_id, (0, None))[1]):
            report(record_id, segment_id, f"seq {entry['seq']}: {reason}")
        if record_id in evented:
            key = (record_id, entry["version"])
            if entry["type"] != "event":
                version_sha[key] = value.get("sha256")
            elif key in version_sha and value.get("sha256") != version_sha[key]:
                report(record_id, segment_id, f"seq {entry['seq']}: its sha256 is not that of "
                       f"the version {entry['version']} it happened to")
        if entry["type"] == "record" and entry["current"]:
            for reason in _check_record_row(entry, value.get("record")):
                report(record_id, segment_id, f"seq {entry['seq']}: {reason}")

    for segment_id, seg in segments.items():
        f = files.get(segment_id)
        end = next_offset.get(segment_id, 0)
        if f is not None and end < seg["end_offset"]:
            end = _name_uncatalogued(f, segment_id, end, seg["end_offset"], codec, chain)
        if end != seg["end_offset"] and (segment_id in next_offset or end):
            report(None, segment_id, f"entries end at {end}, catalog end is {seg['end_offset']}")
    head_seq, head_hash = get_head(conn)
    if head_seq != chain.seq:
        report(None, None, f"the catalog's newest entry is seq {head_seq}, the last entry in "
               f"the segments is seq {chain.seq}")
    elif chain.expected_prev is not None and chain.expected_prev != head_hash:
        report(*chain.last, f"seq {chain.seq}: its entry hash is not the head of the chain the "
               "catalog keeps; its content changed")
    return problems


class _Chain:
    """Follows the hash chain through the entries in seq order: each frame's `prev` must be
    the hash of the entry before it. A frame that cannot be read is blamed on itself; the link
    after it cannot be checked, and the chain goes on from the next frame."""

    def __init__(self, report: Callable[[str | None, int | None, str], None]) -> None:
        self.report = report
        self.expected_prev: str | None = segment.ZERO_HASH
        self.seq = 0
        self.last: tuple[str | None, int | None] = (None, None)
        self._before: tuple[str | None, int | None] = (None, None)

    def step(self, seq: int, record_id: str | None, segment_id: int) -> str | None:
        """Move on to the entry `seq`; returns the `prev` it must have (None: unknown)."""
        if seq != self.seq + 1:
            self.report(record_id, segment_id, f"seq {seq} follows seq {self.seq}")
            self.expected_prev = None
        link, self.expected_prev = self.expected_prev, None
        self._before, self.last, self.seq = self.last, (record_id, segment_id), seq
        return link

    def opened(self, seq: int, link: str | None, value: dict[str, Any], envelope: bytes) -> None:
        """The entry `seq` was read: check its link and carry its hash on."""
        if link is not None and not segment.links_to(value.get("prev"), link):
            # The link breaks after the previous entry: its hash is not what the chain goes on
            # from, so that entry (whose content changed) is named, not this one.
            blamed = self._before if seq > 1 else self.last
            self.report(*blamed, f"seq {seq - 1}: its entry hash is not the prev of the next "
                         f"entry (seq {seq}); the chain is broken")
        self.expected_prev = segment.entry_hash_of(envelope)


def _name_uncatalogued(
    f: BinaryIO, segment_id: int, start: int, end: int, codec: FrameCodec | None, chain: _Chain
) -> int:
    """Read the frames between `start` and `end` that no catalog row names (a row deleted
    behind the store) and name their records; returns where the readable ones end."""
    offset = start
    while offset < end:
        f.seek(offset)
        header = f.read(segment.HEADER.size)
        if len(header) < segment.HEADER.size:
            break
        length = segment.HEADER.size + segment.HEADER.unpack(header)[1]
        if offset + length > end:
            break
        try:
            envelope = segment.read_frame(f, offset, length, codec)
            value = segment.parse_envelope(envelope)
        except ArchiveStoreError:
            break
        seq, record_id = value.get("seq"), value.get("record_id")
        if not isinstance(seq, int) or not isinstance(record_id, str):
            break
        link = chain.step(seq, record_id, segment_id)
        chain.opened(seq, link, value, envelope)
        chain.report(record_id, segment_id, f"seq {seq}: in segment {segment_id}, but the "
                      "catalog has no row for this entry")
        offset += length
    return offset


# Each entry with the catalog row of its record (an index look-up each, by primary key).
_ENTRIES_WITH_RECORDS = (
    "SELECT e.*, r.record_id AS r_id, "
    "(SELECT name FROM names WHERE id = r.category) AS r_category, "
    "r.updated_at AS r_updated, r.customer_id AS r_customer, "
    f"r.parent_id AS r_parent FROM ({ALL_ENTRIES}) e "
    "LEFT JOIN records r ON r.record_id = e.record_id ORDER BY e.seq"
)


def _check_record_row(entry: sqlite3.Row, record: Any) -> list[str]:
    """What the catalog row of a record entry's record says otherwise than the sealed record.

    The row's category, times, customer and parent decide disposal, holds, erasure and
    processes, so an edit to one must show here, and so must a row that is gone.
    """
    if not isinstance(record, dict):
        return []  # (reported by the envelope's checks)
    differ = []
    if entry["r_category"] != record.get("category"):
        differ.append("category")
    moment = _moment(record.get("updated_at"))
    if "updated_at" in record and (moment is None or entry["r_updated"] != epoch_micros(moment)):
        differ.append("updated_at")
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


def _check_envelope(
    entry: sqlite3.Row, value: dict[str, Any], gone_sha256: str | None
) -> list[str]:
    """What is wrong with one decoded envelope, compared with its catalog row.

    A record's current entry has no hash in the catalog: its record must hash to the one the
    envelope carries; once redacted, that is the hash its purged or erased event keeps."""
    kind = entry["type"]
    reasons: list[str] = []
    if value.get("type") != kind:
        return [f"entry is a {value.get('type')!r} frame, the catalog says {kind!r}"]
    optional = {"reason"} if kind == "event" else set()  # a restore's reason, when given
    if set(value) - optional != set(_FIELDS[kind]):
        reasons.append("envelope fields are not those of its type")
    expected: dict[str, Any] = {"seq": entry["seq"], "record_id": entry["record_id"]}
    if entry["sha256"] is not None:
        expected["sha256"] = hash_hex(entry["sha256"])
    elif kind == "redacted":
        expected["sha256"] = gone_sha256
    if kind in ("record", "redacted"):
        expected["version"] = entry["version"]
    if kind in ("record", "event"):
        expected.update(at=format_time(from_micros(entry["at"])), actor=entry["actor"])
    if kind == "event":
        expected["event"] = entry["event"]
        expected["reason"] = entry["reason"]
    differ = sorted(key for key, want in expected.items() if value.get(key) != want)
    if differ:
        reasons.append(f"envelope {', '.join(differ)} differ from the catalog")
    if kind == "record":
        try:
            sha = segment.sha256_hex(segment.canonical_json(value.get("record")))
        except (TypeError, ValueError):
            sha = ""
        if sha != value.get("sha256"):
            reasons.append("record sha256 does not match (record content changed)")
    return reasons
