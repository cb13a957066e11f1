"""ArchiveStore: the append-only archive of records, with a SQLite catalog as its commit point.

Write protocol (every write, under the store's exclusive lock):
1. cut back any uncommitted tail of the active segment (a writer that crashed before its commit),
   refusing to go on if the segment is shorter than the catalog says;
2. append the operation's frames, flush and fsync (and fsync the folder for a new file);
3. commit one catalog transaction naming them.
A crash before 3 leaves bytes no catalog row names; the next writer cuts them off.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from archive_store import compression, keyring, segment
from archive_store.catalog import (
    ALL_ENTRIES,
    ARCHIVED,
    ENTRY_AT,
    ERASED,
    GONE,
    HISTORY_COLUMNS,
    PURGED,
    RECORD_COLUMNS,
    RECORD_SELECT,
    RESTORED,
    STATES,
    build_catalog_entry,
    chunked,
    connect,
    create_schema,
    epoch_micros,
    format_time,
    from_micros,
    get_head,
    hash_hex,
    is_current,
    iter_keyset,
    load_record,
    load_records,
    name_id,
    pack_hash,
    placeholders,
    reindex_descendants,
    set_head,
    snapshot,
    state_code,
    state_name,
    transaction,
    upgraded_copy,
)
from archive_store.codec import FrameCodec
from archive_store.crypto import KeyMissing
from archive_store.errors import (
    AlreadyArchived,
    ArchiveStoreError,
    NotArchived,
    RecordNotFound,
    RestoreInProgress,
    SegmentCorrupt,
    StoreReadOnly,
)
from archive_store.faults import crash_point
from archive_store.locks import ProcessLock, SharedLock
from archive_store.models import (
    ArchiveItem,
    CatalogEntry,
    ErasedRecord,
    HistoryEvent,
    Problem,
    StoredEntry,
)
from archive_store.segment import iter_frames
from archive_store.verify import verify_store

DEFAULT_SEGMENT_MAX_BYTES = 64 * 2**20

# A customer's archived and restored records (see `ArchiveStore.find_customer_records`).
# (An erased record has forgotten its customer: the walk does not go through it, and `erase`
# first hands its customer on to the records below it that name none, see `_UNNAMED_BELOW`.)
_CUSTOMER_RECORDS = f"""
WITH RECURSIVE theirs (record_id) AS (
    SELECT record_id FROM records WHERE customer_id = ?
    UNION
    SELECT r.record_id FROM records r JOIN theirs t ON r.parent_id = t.record_id
    WHERE r.customer_id IS NULL AND r.state != {ERASED}
)
SELECT r.record_id FROM theirs JOIN records r USING (record_id)
WHERE r.state IN ({{states}}) ORDER BY r.record_id
"""  # {states}: placeholders for the states wanted (their numbers)
# The ids of a record and of the archived or restored records linked below it.
_TREE = f"""
WITH RECURSIVE tree(id) AS (
    SELECT ?
    UNION
    SELECT r.record_id FROM records r JOIN tree ON r.parent_id = tree.id
    WHERE r.state IN ({ARCHIVED}, {RESTORED})
)
SELECT id FROM tree
"""
# The records below one (its children, theirs, ...) that name no customer: the customer of that
# record is theirs, written into them before the record is erased and forgets it.
_UNNAMED_BELOW = f"""
WITH RECURSIVE below (record_id) AS (
    SELECT record_id FROM records
    WHERE parent_id = ? AND customer_id IS NULL AND state != {ERASED}
    UNION
    SELECT r.record_id FROM records r JOIN below b ON r.parent_id = b.record_id
    WHERE r.customer_id IS NULL AND r.state != {ERASED}
)
UPDATE records SET customer_id = ? WHERE record_id IN (SELECT record_id FROM below)
"""

# What an erased record's history shows for the reason an event of it had: the text may name
# the person, so it leaves the catalog and the segments with the record.
ERASED_REASON = "(erased)"

_HISTORY_INSERT = f"INSERT INTO history ({HISTORY_COLUMNS}) VALUES ({', '.join('?' * 12)})"
# A record's current entry, when a newer version takes its place, as a `history` row.
_SUPERSEDED = (
    f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT seq, segment_id, offset, length, "
    f"CASE WHEN state IN {GONE} THEN 'redacted' ELSE 'record' END, record_id, "
    "version, NULL, archived_at, (SELECT name FROM names WHERE id = archived_by), ?, NULL "
    "FROM records WHERE record_id = ?"
)  # (the sha256 bound first: of its record, read from its frame or its last event)
# Where each record's hash is: its current entry's frame, or (purged, erased) its last event.
_HASH_SOURCES = (
    f"SELECT r.record_id, {state_name('r.state')} AS state, r.seq, r.segment_id, r.offset, "
    "r.length, s.generation, "
    "(SELECT h.sha256 FROM history h WHERE h.record_id = r.record_id AND h.type = 'event' "
    "AND h.event IN ('purged', 'erased') ORDER BY h.seq DESC LIMIT 1) AS gone_sha256 "
    "FROM records r JOIN segments s ON s.segment_id = r.segment_id WHERE r.record_id IN ({})"
)


@dataclass
class _Placed:
    """An entry placed by the appender: where its frame goes and what it hashes to."""

    seq: int
    segment_id: int
    offset: int
    length: int


@dataclass
class _Target:
    """One segment the appender writes to during an operation."""

    segment_id: int
    generation: int
    start: int  # committed end when the operation began
    end: int
    is_new: bool
    sealed: bool = False
    frames: list[bytes] = field(default_factory=list)


@dataclass
class SegmentSwap:
    """The segment files of one write's rewritten segments: the generations it replaces and
    the ones it wrote."""

    old_files: list[Path] = field(default_factory=list)
    new_files: list[Path] = field(default_factory=list)

    def add(self, old: Path, new: Path) -> None:
        """One segment rewritten: `old` goes once the write commits, `new` if it fails."""
        self.old_files.append(old)
        self.new_files.append(new)


class _Appender:
    """Places the frames of one write operation in the active segment, rolling over when full."""

    def __init__(
        self, segments_dir: Path, conn: sqlite3.Connection, max_bytes: int, codec: FrameCodec
    ) -> None:
        self._dir = segments_dir
        self._max = max_bytes
        self.sealing = keyring.load_sealing(conn, codec)
        self.seq, self.prev = get_head(conn)
        self._first_seq = self.seq
        self.targets: list[_Target] = []
        self.new_files: list[Path] = []
        row = conn.execute(
            "SELECT segment_id, generation, end_offset FROM segments WHERE sealed = 0 "
            "ORDER BY segment_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            top = conn.execute("SELECT MAX(segment_id) FROM segments").fetchone()[0]
            self._open_new((top or 0) + 1)
        else:
            recover_tail(segments_dir, row["segment_id"], row["generation"], row["end_offset"])
            self.targets.append(
                _Target(row["segment_id"], row["generation"], row["end_offset"],
                        row["end_offset"], is_new=False)
            )

    @property
    def active(self) -> _Target:
        """The segment new frames go to."""
        return self.targets[-1]

    def _open_new(self, segment_id: int) -> None:
        self.targets.append(_Target(segment_id, 0, 0, 0, is_new=True))

    def seal_active(self) -> None:
        """Seal the active segment (disposal compacts it) and continue in a fresh one."""
        self.active.sealed = True
        self._open_new(self.active.segment_id + 1)

    def add(
        self,
        envelope: dict[str, Any],
        encoded: dict[str, bytes] | None = None,
        key_id: int | None = None,
    ) -> _Placed:
        """Give an envelope its seq and prev, frame it and place it; nothing is written yet.

        :param envelope: the envelope without `seq` and `prev`
        :param encoded: members whose canonical JSON the caller already has (the record)
        :param key_id: the data key to seal it with (default: the shared key)
        """
        seq = self.seq + 1
        envelope = {**envelope, "seq": seq, "prev": segment.link_to(self.prev)}
        data = segment.canonical_object(envelope, encoded or {})
        entry_hash = segment.sha256_hex(data)
        sealing = self.sealing
        if sealing.shared_key or sealing.dict_id:
            frame = segment.build_frame(
                data, sealing.codec, sealing.shared_key if key_id is None else key_id,
                sealing.dict_id,
            )
        else:  # a store without a key, before it has a dictionary: frames as they always were
            frame = segment.build_frame(data)
        target = self.active
        if target.end > 0 and target.end + len(frame) > self._max:
            self.seal_active()
            target = self.active
        placed = _Placed(seq, target.segment_id, target.end, len(frame))
        target.frames.append(frame)
        target.end += len(frame)
        self.seq, self.prev = seq, entry_hash
        return placed

    def write(self, conn: sqlite3.Connection) -> None:
        """Write and fsync every placed frame, then record the segments' new ends (uncommitted).

        :param conn: the connection holding the operation's open transaction
        """
        if self.seq != self._first_seq:
            set_head(conn, self.seq, self.prev)
        for target in self.targets:
            if not target.frames and not target.sealed:
                continue
            path = segment.segment_path(self._dir, target.segment_id, target.generation)
            if target.is_new:
                # A file of this name can only be an orphan from a crashed writer: start afresh.
                self.new_files.append(path)
                with open(path, "wb"):
                    pass
            if target.frames:
                segment.append_frames(path, target.start, target.frames)
            if target.is_new:
                conn.execute(
                    "INSERT INTO segments (segment_id, generation, sealed, end_offset) "
                    "VALUES (?, ?, ?, ?)",
                    (target.segment_id, target.generation, int(target.sealed), target.end),
                )
            elif target.frames:
                conn.execute(
                    "UPDATE segments SET end_offset = ?, sealed = ? WHERE segment_id = ?",
                    (target.end, int(target.sealed), target.segment_id),
                )
            else:  # sealed for disposal, which may have compacted it: its end is not ours
                conn.execute(
                    "UPDATE segments SET sealed = 1 WHERE segment_id = ?", (target.segment_id,)
                )
        if self.new_files:
            segment.fsync_directory(self._dir)

    def undo(self) -> None:
        """After a failed operation (still under the lock): drop whatever it wrote."""
        for target in self.targets:
            path = segment.segment_path(self._dir, target.segment_id, target.generation)
            try:
                if target.is_new:
                    path.unlink(missing_ok=True)
                elif target.frames:
                    segment.truncate(path, target.start)
            except OSError:
                pass  # the next writer cuts the tail off, or deletes the orphan, anyway


def recover_tail(segments_dir: Path, segment_id: int, generation: int, end: int) -> None:
    """Cut an uncommitted tail off the active segment; refuse a segment shorter than committed.

    Only ever called under the store's exclusive lock, so no writer is mid-operation.

    :param segments_dir: the store's `segments/` folder
    :param segment_id: the active segment
    :param generation: its current generation
    :param end: its committed end offset
    """
    path = segment.segment_path(segments_dir, segment_id, generation)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if end == 0:
            return
        raise SegmentCorrupt(f"active segment {segment_id} is missing ({path.name})") from None
    if size > end:
        segment.truncate(path, end)
    elif size < end:
        raise SegmentCorrupt(
            f"active segment {segment_id} is {size} bytes but {end} are committed; "
            "refusing to append after a hole"
        )


class ArchiveStore:
    """The append-only archive: segment files for content, a SQLite catalog as commit point."""

    def __init__(
        self, directory: Path, segment_max_bytes: int, key: bytes | None = None
    ) -> None:
        """Use `ArchiveStore.open` instead; this only sets fields.

        :param directory: the store folder
        :param segment_max_bytes: size at which a segment is sealed
        :param key: the archive key (see `crypto`), or None for a store kept unencrypted
        """
        if segment_max_bytes < 1:
            raise ValueError("segment_max_bytes must be positive")
        self.directory = Path(directory)
        self.segment_max_bytes = segment_max_bytes
        self._segments_dir = self.directory / "segments"
        self._catalog_path = self.directory / "catalog.db"
        self._lock_path = self.directory / ".lock"
        self._move_lock = SharedLock(self.directory / "move.lock")
        self._index_lock = ProcessLock(self.directory / "index.lock")
        self._dispose_lock = ProcessLock(self.directory / "dispose.lock")
        self._archive_lock = ProcessLock(self.directory / "archive.lock")
        self._closed = False
        self.read_only = False
        self._scratch: Path | None = None  # an upgraded copy of an old read-only catalog
        self._codec = FrameCodec(
            key,
            lambda key_id: keyring.load_wrapped_key(self._db(), key_id),
            lambda dict_id: keyring.load_dictionary(self._db(), dict_id),
        )
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        # Connections, lock files and locks never cross a fork: a child starts its own.
        self._pid = os.getpid()
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    @property
    def codec(self) -> FrameCodec:
        """The codec that opens this store's frames (a backup reads its copies with it)."""
        return self._codec

    @staticmethod
    def exists_in(directory: Path) -> bool:
        """Whether `directory` holds a store (its catalog), as `open` would otherwise make one."""
        return (Path(directory) / "catalog.db").is_file()

    @staticmethod
    def committed_head_in(directory: Path) -> int | None:
        """The seq of the newest entry the catalog in `directory` holds (0 if none), read
        without opening the store, whose opening tidies the segments after the catalog; None
        when there is no catalog."""
        if not ArchiveStore.exists_in(directory):
            return None
        with closing(connect(Path(directory) / "catalog.db", read_only=True)) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )}
            if "entries" in tables:  # a catalog an earlier version wrote, not yet upgraded
                return int(conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0] or 0)
            return get_head(conn)[0] if "meta" in tables else 0

    @staticmethod
    def is_encrypted_in(directory: Path) -> bool:
        """Whether `directory` holds a store sealed with an archive key (its catalog keeps the
        key's check value), which only that key opens."""
        if not ArchiveStore.exists_in(directory):
            return False
        with closing(connect(Path(directory) / "catalog.db", read_only=True)) as conn:
            return conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone() is not None and conn.execute(
                "SELECT 1 FROM meta WHERE key = 'key_check'"
            ).fetchone() is not None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        key: bytes | None = None,
        take_key_if_empty: bool = False,
    ) -> ArchiveStore:
        """Open the store in `directory`, creating its folders and catalog if missing.

        A store once written with a key needs that key: a missing or wrong one raises
        `KeyMissing` or `WrongKey` before anything is written.

        :param directory: the store folder
        :param segment_max_bytes: size at which the active segment is sealed (default 64 MiB)
        :param key: the archive key; None keeps new frames unencrypted (a store without a key)
        :param take_key_if_empty: a store that holds no entry yet takes this key even if it
            was made with another (see `keyring.rebind_empty_archive`; for a recovery)
        """
        directory = Path(directory)
        if (directory / "catalog.db").is_file() and not os.access(directory, os.W_OK):
            return cls._open_read_only(directory, segment_max_bytes, key)
        (directory / "segments").mkdir(parents=True, exist_ok=True)
        store = cls(directory, segment_max_bytes, key)
        try:
            with store._locked():
                conn = store._db()
                if take_key_if_empty:
                    keyring.rebind_empty_archive(conn, store._codec)
                keyring.check_archive_key(conn, store._codec)
                create_schema(conn)
                store._remove_orphans(conn)
                store._trim_active_tail(conn)
            segment.fsync_directory(directory)  # catalog.db, .lock and segments/ themselves
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _open_read_only(
        cls, directory: Path, segment_max_bytes: int, key: bytes | None
    ) -> ArchiveStore:
        """A store on a folder this process may not write (a read-only mount, a copy kept
        for audits): reads work, every write raises `StoreReadOnly`. Nothing is repaired."""
        store = cls(directory, segment_max_bytes, key)
        store.read_only = True
        try:
            store._read_upgraded_copy_if_old()
            conn = store._db()
            conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
            keyring.check_archive_key(conn, store._codec)
        except BaseException:
            store.close()
            raise
        return store

    def _read_upgraded_copy_if_old(self) -> None:
        """A catalog an earlier version wrote, on a folder this process may not write, is read
        through an upgraded copy in a temporary folder (removed on close)."""
        with closing(connect(self._catalog_path, read_only=True)) as conn:
            if is_current(conn):
                return
        self._scratch = Path(tempfile.mkdtemp(prefix="archivist-catalog-"))
        self._catalog_path = upgraded_copy(self._catalog_path, self._scratch)

    def close(self) -> None:
        """Close the catalog connections and the lock file."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return  # inherited over a fork: the parent still owns these
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._index_lock.close()
        self._dispose_lock.close()
        self._archive_lock.close()

    def moving(self) -> AbstractContextManager[None]:
        """The lock, held shared, under which records move between the active database and
        the archive: around each archive batch and each restore, across threads and processes.

        Moves run side by side: a restore need not wait for an archive batch. The `pending`
        marks, set and checked under the store's write lock, keep two moves off one record
        (`begin_restore` refuses a record with a mark; `archive_batch` leaves out a record
        being restored).
        """
        self.require_writable()
        return self._move_lock.shared()

    def settling(self) -> AbstractContextManager[None]:
        """The same lock held alone: while reconcile settles `pending` marks, no move is under
        way whose mark it would mistake for one a crash left behind."""
        self.require_writable()
        return self._move_lock.exclusive()

    def indexing(self) -> ProcessLock:
        """The lock under which the index is changed together with the `indexed` marks.

        Reading what is unindexed, changing the index and `mark_indexed` happen under it as
        one step, so an index change based on a state read earlier can never land after a
        newer one (a stale add would put a restored record back into search).
        """
        self.require_writable()
        return self._index_lock

    def disposing(self) -> ProcessLock:
        """The lock one disposal run holds from its first purge to its last, across threads and
        processes: a second run waits, so it never takes the first one's unconfirmed
        disposal-list rows for a crashed run's."""
        self.require_writable()
        return self._dispose_lock

    def archiving(self) -> ProcessLock:
        """The lock each archive batch holds from choosing its records to deleting them from the
        active database, across threads and processes.

        Two archive runs may overlap (the worker's and an `archivist archive`): without it, a
        run would plan records the other is moving, then find their rows gone before its own
        delete and take them for records the CRM changed.
        """
        self.require_writable()
        return self._archive_lock

    def require_writable(self) -> None:
        """Raise `StoreReadOnly` when the archive folder cannot be written."""
        if self.read_only:
            raise StoreReadOnly(
                f"the archive folder {self.directory} is read-only: search, stats and verify "
                "work; archiving, restores, disposal and indexing need it writable"
            )

    def __enter__(self) -> ArchiveStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise ArchiveStoreError("the archive store is closed")
        if self._pid != os.getpid():
            self._reset_process_state()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._catalog_path, read_only=self.read_only)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The exclusive write lock: a thread lock, then flock on `.lock` for other processes."""
        if self._pid != os.getpid():
            self._reset_process_state()
        self.require_writable()
        with self._thread_lock:
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[tuple[sqlite3.Connection, _Appender]]:
        """Lock, begin a catalog transaction, append through an appender, fsync, commit.

        :param durable: False leaves the catalog commit unsynced (the frames are still
            fsynced first), for changes that reconcile redoes if a crash loses them
        """
        with self._locked():
            conn = self._db()
            appender: _Appender | None = None
            try:
                with transaction(conn, durable):
                    appender = _Appender(
                        self._segments_dir, conn, self.segment_max_bytes, self._codec
                    )
                    yield conn, appender
                    appender.write(conn)  # frames durable before the commit names them
                    crash_point("store.frames_written")
            except BaseException:
                if appender is not None:
                    appender.undo()
                self._codec.clear_keys()  # a key made by the rolled-back write may be cached
                raise
            crash_point("store.catalog_committed")

    @contextmanager
    def _swapping_segments(self) -> Iterator[SegmentSwap]:
        """Collect the segments a write rewrites as a new generation: once the block ends
        (after the write's commit) the old files are deleted, or, if it fails, the new ones.
        A crash in between leaves orphans, which the next write removes."""
        swap = SegmentSwap()
        try:
            yield swap
        except BaseException:
            for path in swap.new_files:
                path.unlink(missing_ok=True)
            raise
        for path in swap.old_files:
            path.unlink(missing_ok=True)
        if swap.old_files:
            segment.fsync_directory(self._segments_dir)

    @contextmanager
    def _write_catalog(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Lock and run one catalog-only transaction (no segment is touched)."""
        with self._locked():
            conn = self._db()
            with transaction(conn, durable):
                yield conn

    def _remove_orphans(self, conn: sqlite3.Connection) -> None:
        """Delete segment files the catalog does not reference (crashed writes or compactions)."""
        known = {
            (row["segment_id"], row["generation"])
            for row in conn.execute("SELECT segment_id, generation FROM segments")
        }
        removed = False
        for path in self._segments_dir.iterdir():
            key = segment.parse_segment_name(path.name)
            if key is not None and key not in known:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            segment.fsync_directory(self._segments_dir)

    def _trim_active_tail(self, conn: sqlite3.Connection) -> None:
        """On open: cut an uncommitted tail; a too-short segment is left for writers to refuse."""
        row = conn.execute(
            "SELECT segment_id, generation, end_offset FROM segments WHERE sealed = 0 "
            "ORDER BY segment_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return
        try:
            recover_tail(self._segments_dir, row["segment_id"], row["generation"],
                         row["end_offset"])
        except SegmentCorrupt:
            pass  # readers may still read every other record; verify() reports it

    def _path(self, segment_id: int, generation: int) -> Path:
        return segment.segment_path(self._segments_dir, segment_id, generation)

    # -- writes ----------------------------------------------------------------------------

    def archive_batch(
        self, items: Sequence[ArchiveItem], at: datetime, actor: str
    ) -> list[StoredEntry]:
        """Archive records in one durable transaction; returns their entries in item order.

        A record already archived with the same content (a rerun after a crash) is not appended
        again, only marked `delete_active`; one archived with other content raises
        `AlreadyArchived` before anything is written. A record being restored (its insert into
        the active database may have committed already) is left out: it has no entry in the
        result, and its restore goes on.

        :param items: the records to archive; ids must be unique within the batch
        :param at: when they are archived (aware)
        :param actor: who archives them
        """
        if not items:
            return []
        at_text, at_us = format_time(at), epoch_micros(at)
        prepared: list[tuple[ArchiveItem, bytes, str]] = []
        seen: set[str] = set()
        for item in items:
            if item.record_id in seen:
                raise ValueError(f"record {item.record_id} appears twice in one batch")
            seen.add(item.record_id)
            if item.record.get("id", item.record_id) != item.record_id:
                raise ValueError(f"record {item.record_id} carries id {item.record.get('id')!r}")
            encoded = segment.canonical_json(item.record)
            prepared.append((item, encoded, segment.sha256_hex(encoded)))

        results: dict[str, StoredEntry] = {}
        with self._write() as (conn, appender):
            sealing = appender.sealing
            keys = keyring.customer_keys(
                conn, sealing, (i.customer_id for i, *_ in prepared if i.customer_id is not None)
            )
            if not sealing.dict_id:  # trained once per store: no samples to build after that
                keyring.train_if_due(conn, sealing, [
                    # what the codec compresses: the envelope with its hashes packed out
                    (i.customer_id or i.record_id, segment.canonical_object({
                        "type": "record", "record_id": i.record_id, "version": 1, "at": at_text,
                        "actor": actor, "sha256": "", "seq": 0, "prev": "",
                    }, {"record": e}))
                    for i, e, *_ in prepared[:compression.SAMPLE_RECORDS]
                ])
            existing = load_records(conn, seen)
            restoring = {i for i, row in existing.items() if row["pending"] == "insert_active"}
            earlier = self._hashes_held(conn, set(existing) - restoring)  # (a rerun's, if any)
            for item, _, sha in prepared:
                row = existing.get(item.record_id)
                if row is None or row["state"] != "archived" or item.record_id in restoring:
                    continue
                if earlier[item.record_id] != sha:
                    raise AlreadyArchived(
                        f"record {item.record_id} is already archived with other content"
                    )
            record_rows: list[tuple[Any, ...]] = []
            named: dict[str, int] = {}

            def names(text: str) -> int:
                if text not in named:
                    named[text] = name_id(conn, text)
                return named[text]

            for item, encoded, sha in prepared:
                row = existing.get(item.record_id)
                if item.record_id in restoring:
                    continue
                if row is not None and row["state"] == "archived":
                    conn.execute(
                        "UPDATE records SET pending = 'delete_active' WHERE record_id = ?",
                        (item.record_id,),
                    )
                    results[item.record_id] = StoredEntry(
                        row["seq"], item.record_id, row["segment_id"], row["offset"],
                        row["length"], sha,
                    )
                    continue
                if row is not None:  # its earlier version's entry joins its history
                    conn.execute(
                        _SUPERSEDED, (pack_hash(earlier[item.record_id]), item.record_id)
                    )
                version = row["version"] + 1 if row is not None else 1
                placed = appender.add({
                    "type": "record",
                    "record_id": item.record_id,
                    "version": version,
                    "at": at_text,
                    "actor": actor,
                    "sha256": sha,
                }, {"record": encoded}, sealing.key_for(keys, item.customer_id))
                record_rows.append((
                    item.record_id, version, placed.seq, placed.segment_id, placed.offset,
                    placed.length, at_us, names(actor), names(item.category),
                    _customer_of(item, row), item.parent_id, epoch_micros(item.updated_at),
                ))
                results[item.record_id] = StoredEntry(
                    placed.seq, item.record_id, placed.segment_id, placed.offset, placed.length,
                    sha,
                )
            conn.executemany(
                f"INSERT OR REPLACE INTO records ({RECORD_COLUMNS}) "
                f"VALUES (?, {ARCHIVED}, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?, "
                "'delete_active', 0, NULL)",
                record_rows,
            )
            reindex_descendants(conn, (row[0] for row in record_rows))
        return [results[item.record_id] for item, *_ in prepared if item.record_id in results]

    def clear_pending(self, record_ids: Iterable[str]) -> None:
        """Clear the `delete_active` mark once the active database no longer holds the records.

        A restore's `insert_active` mark is left alone: only complete/abort_restore end it.

        :param record_ids: ids whose removal from the active database has committed
        """
        # Not fsynced: a mark a crash brings back is cleared again by reconcile_pending.
        with self._write_catalog(durable=False) as conn:
            for chunk in chunked(dict.fromkeys(record_ids)):
                conn.execute(
                    "UPDATE records SET pending = NULL WHERE pending = 'delete_active' "
                    f"AND record_id IN ({placeholders(len(chunk))})",
                    chunk,
                )

    def begin_restore(self, record_id: str) -> CatalogEntry:
        """Mark an archived record `insert_active` before it is put back in the active database.

        :param record_id: the record to restore
        """
        with self._write_catalog() as conn:
            row = self._require(conn, record_id)
            if row["state"] != "archived":
                raise NotArchived(f"record {record_id} is {row['state']}, not archived")
            if row["pending"] is not None:
                raise RestoreInProgress(
                    f"record {record_id} has a move in progress ({row['pending']})"
                )
            conn.execute(
                "UPDATE records SET pending = 'insert_active' WHERE record_id = ?", (record_id,)
            )
            return build_catalog_entry(self._require(conn, record_id))

    def complete_restore(self, record_id: str, at: datetime, actor: str) -> None:
        """Record that the record is live in the active database again: a `restored` event.

        :param record_id: the record being restored
        :param at: when (aware)
        :param actor: who restored it
        """
        # Unsynced: if a crash loses this commit, the durable `insert_active` mark and the
        # active row are still there, and reconcile_pending completes the restore again.
        with self._write(durable=False) as (conn, appender):
            row = self._require(conn, record_id)
            if row["state"] != "archived":
                raise NotArchived(f"record {record_id} is {row['state']}, not archived")
            sha = self._hashes_held(conn, [record_id])[record_id]
            seq = self._append_event(conn, appender, row, "restored", at, actor, sha)
            conn.execute(
                f"UPDATE records SET state = {RESTORED}, restored_at = ?, pending = NULL, "
                "indexed = 0, state_seq = ? WHERE record_id = ?",
                (epoch_micros(at), seq, record_id),
            )

    def begin_restores(self, groups: Sequence[Sequence[str]]) -> list[tuple[str, str] | None]:
        """Mark whole groups (processes) `insert_active` in one catalog commit, each group
        all or nothing: one record not archived, or with a move in progress, leaves its group
        unmarked.

        :param groups: the record ids of each group
        :returns: per group, None when marked, else `(record_id, code)` of the first obstacle
            (`not_found`, `not_archived` or `restore_in_progress`)
        """
        results: list[tuple[str, str] | None] = []
        with self._write_catalog() as conn:
            rows = load_records(conn, [i for group in groups for i in group])
            marked: list[str] = []
            for group in groups:
                problem: tuple[str, str] | None = None
                for record_id in group:
                    row = rows.get(record_id)
                    if row is None:
                        problem = (record_id, RecordNotFound.code)
                    elif row["state"] != "archived":
                        problem = (record_id, NotArchived.code)
                    elif row["pending"] is not None:
                        problem = (record_id, RestoreInProgress.code)
                    if problem is not None:
                        break
                results.append(problem)
                if problem is None:
                    marked.extend(group)
            for chunk in chunked(marked):
                conn.execute(
                    "UPDATE records SET pending = 'insert_active' "
                    f"WHERE record_id IN ({placeholders(len(chunk))})",
                    chunk,
                )
        return results

    def complete_restores(
        self,
        record_ids: Sequence[str],
        at: datetime,
        actor: str,
        reason: str | None = None,
        *,
        grace: bool = True,
        hashes: Mapping[str, str] | None = None,
    ) -> None:
        """Record that these records are live in the active database again, in one write:
        a `restored` event each (with the reason), all committed together.

        :param record_ids: records marked by `begin_restores` whose insert has committed
        :param at: when (aware)
        :param actor: who restored them
        :param reason: why, kept in each record's history
        :param grace: keep `at` as the records' restore time, from which the restore grace
            runs; False for records that never left (the archive job kept them active): their
            history has the event, and they age by their own `updated_at`
        :param hashes: the records' SHA-256 as `read_many` gave them after `begin_restores`
            (their versions cannot change meanwhile); those not given are read again
        """
        if not record_ids:
            return
        at_text, at_us = format_time(at), epoch_micros(at)
        with self._write(durable=False) as (conn, appender):
            rows = load_records(conn, record_ids)
            shas = {i: hashes[i] for i in record_ids if hashes and i in hashes}
            shas.update(self._hashes_held(conn, [i for i in record_ids
                                                 if i in rows and i not in shas]))
            changes = []
            entry_rows = []
            for record_id in record_ids:
                row = rows.get(record_id)
                if row is None:
                    raise RecordNotFound(f"record {record_id} was never archived")
                if row["state"] != "archived":
                    raise NotArchived(f"record {record_id} is {row['state']}, not archived")
                envelope = {
                    "type": "event", "record_id": record_id, "event": "restored",
                    "at": at_text, "actor": actor, "sha256": shas[record_id],
                }
                if reason is not None:
                    envelope["reason"] = reason
                placed = appender.add(envelope)
                entry_rows.append((
                    placed.seq, placed.segment_id, placed.offset, placed.length, "event",
                    record_id, row["version"], "restored", at_us, actor,
                    pack_hash(shas[record_id]), reason,
                ))
                changes.append((at_us if grace else None, placed.seq, record_id))
            conn.executemany(_HISTORY_INSERT, entry_rows)
            conn.executemany(
                f"UPDATE records SET state = {RESTORED}, restored_at = ?, pending = NULL, "
                "indexed = 0, state_seq = ? WHERE record_id = ?",
                changes,
            )

    def abort_restores(self, record_ids: Sequence[str]) -> None:
        """Give up restores begun with `begin_restores`; the records stay archived.

        :param record_ids: the records whose restore failed
        """
        with self._write_catalog() as conn:
            for chunk in chunked(dict.fromkeys(record_ids)):
                conn.execute(
                    "UPDATE records SET pending = NULL WHERE pending = 'insert_active' "
                    f"AND record_id IN ({placeholders(len(chunk))})",
                    chunk,
                )

    def child_entries(self, parent_ids: Iterable[str]) -> list[CatalogEntry]:
        """The catalog rows of records whose `parent_id` is one of these ids.

        :param parent_ids: the parents
        """
        conn = self._db()
        out: list[CatalogEntry] = []
        for chunk in chunked(dict.fromkeys(parent_ids)):
            out.extend(
                build_catalog_entry(row) for row in conn.execute(
                    f"SELECT {RECORD_SELECT} FROM records "
                    f"WHERE parent_id IN ({placeholders(len(chunk))})",
                    chunk,
                )
            )
        return out

    def tree_ids(self, root_id: str) -> list[str]:
        """The id of `root_id` and of every archived or restored record linked below it, at any
        depth (the part of a process the catalog holds under it).

        :param root_id: the record at the top
        """
        return [row[0] for row in self._db().execute(_TREE, (root_id,))]

    def abort_restore(self, record_id: str) -> None:
        """Give up a restore begun with `begin_restore`; the record stays archived.

        :param record_id: the record whose restore failed
        """
        with self._write_catalog() as conn:
            self._require(conn, record_id)
            conn.execute(
                "UPDATE records SET pending = NULL WHERE record_id = ? "
                "AND pending = 'insert_active'",
                (record_id,),
            )

    def _append_event(
        self,
        conn: sqlite3.Connection,
        appender: _Appender,
        row: sqlite3.Row,
        event: str,
        at: datetime,
        actor: str,
        sha: str,
        reason: str | None = None,
    ) -> int:
        envelope = {
            "type": "event",
            "record_id": row["record_id"],
            "event": event,
            "at": format_time(at),
            "actor": actor,
            "sha256": sha,
        }
        if reason is not None:
            envelope["reason"] = reason
        placed = appender.add(envelope)
        conn.execute(_HISTORY_INSERT, (
            placed.seq, placed.segment_id, placed.offset, placed.length, "event",
            row["record_id"], row["version"], event, epoch_micros(at), actor, pack_hash(sha),
            reason,
        ))
        return placed.seq

    def mark_indexed(self, items: Iterable[tuple[str, int] | tuple[str, int, str]]) -> None:
        """Record that the index now reflects these records' state.

        Each is marked only if it is still in the state and at the version that was written to
        (or removed from) the index. Every way out of `archived` changes `state`, and every way
        back in bumps `version`, so `(state, version)` names one unbroken period: a restore,
        purge or re-archive that happened while the indexer worked is never masked.

        :param items: `(record_id, version, state)` of what the index now reflects;
            a pair `(record_id, version)` means state `archived`
        """
        rows = [
            (item[0], item[1], state_code(item[2]) if len(item) > 2 else ARCHIVED)
            for item in items
        ]
        if not rows:
            return
        # Unsynced: a mark a crash loses only makes catch-up apply the same change again.
        with self._write_catalog(durable=False) as conn:
            conn.executemany(
                "UPDATE records SET indexed = 1 WHERE record_id = ? AND version = ? AND state = ?",
                rows,
            )

    def mark_rebuilt(self, up_to_seq: int) -> None:
        """After an index rebuild swapped in: say which records the new index reflects.

        Records whose last change is at or before `up_to_seq` (taken before the rebuild read
        the store) are what the rebuild saw; every later change is marked unindexed, even if a
        writer marked it in the old index meanwhile, so catch-up redoes it in the new one.

        :param up_to_seq: `last_seq()` taken before the rebuild read the store
        """
        with self._write_catalog() as conn:
            conn.execute(
                "UPDATE records SET indexed = CASE WHEN COALESCE(state_seq, seq) <= ? THEN 1 "
                "ELSE 0 END",
                (up_to_seq,),
            )

    def gone_since(self, after_seq: int) -> list[str]:
        """The records purged or erased after entry `after_seq`: an index written from what
        was read before must not keep their words (see `indexer.jobs.indexing`).

        :param after_seq: a `last_seq()` taken earlier
        """
        rows = self._db().execute(
            f"SELECT record_id FROM records WHERE state IN {GONE} AND state_seq > ?"
            " ORDER BY record_id",
            (after_seq,),
        )
        return [row[0] for row in rows]

    def restored_since(self, after_seq: int) -> list[str]:
        """The records restored after entry `after_seq` (and still restored): an index
        written from what was read before must not find them.

        :param after_seq: a `last_seq()` taken earlier
        """
        rows = self._db().execute(
            f"SELECT record_id FROM records WHERE state = {RESTORED} AND state_seq > ?"
            " ORDER BY record_id",
            (after_seq,),
        )
        return [row[0] for row in rows]

    def last_seq(self) -> int:
        """The seq of the newest committed entry (0 for an empty store)."""
        return get_head(self._db())[0]

    def entry_hash_at(self, seq: int) -> str | None:
        """The hash of the entry at `seq` (None if there is none): which history of the store
        this is, since a store recovered from an older backup numbers its new entries again.

        :param seq: an entry's seq
        """
        conn = self._db()
        for _ in range(3):
            with snapshot(conn):
                head_seq, head_hash = get_head(conn)
                if seq == head_seq:
                    return head_hash if seq else None
                row = conn.execute(ENTRY_AT, (seq, seq)).fetchone()
            if row is None:
                return None
            try:
                with open(self._path(row["segment_id"], row["generation"]), "rb") as f:
                    envelope = segment.read_frame(f, row["offset"], row["length"], self._codec)
            except FileNotFoundError:
                continue  # disposal replaced this generation meanwhile: look it up again
            return segment.entry_hash_of(envelope)
        raise SegmentCorrupt(f"the segment file of entry {seq} is missing")

    def purge(self, record_ids: Sequence[str], at: datetime, actor: str) -> int:
        """Dispose of archived records for good: their content leaves the segment files.

        Each segment holding any version of them is rewritten as a new generation with those
        entries replaced by `redacted` frames (same hash, so the chain still verifies), a
        `purged` event is appended per record, and one catalog commit switches over. A crash
        anywhere leaves either the old or the new state. Records not archived are skipped, and
        so are records in the middle of a move, whichever way (`pending`): an archive batch's,
        whose rows are not yet deleted from the active database, and a restore's. Purged, the
        first would be listed as disposed of while its rows stayed active; both stay whole, and
        the move's settling decides where they are.

        :param record_ids: the records to purge
        :param at: when (aware)
        :param actor: who disposes of them
        """
        purged = 0
        with self._swapping_segments() as swap, self._write() as (conn, appender):
            self._remove_orphans(conn)
            rows = [
                row for row in load_records(conn, record_ids).values()
                if row["state"] == "archived" and row["pending"] is None
            ]
            if not rows:
                return 0
            shas = self._redact(conn, appender, [row["record_id"] for row in rows], swap)
            changes = [
                (epoch_micros(at), self._append_event(
                    conn, appender, row, "purged", at, actor, shas[row["record_id"]]
                ), row["record_id"])
                for row in sorted(rows, key=lambda r: r["record_id"])
            ]
            conn.executemany(
                f"UPDATE records SET state = {PURGED}, purged_at = ?, pending = NULL, "
                "indexed = 0, state_seq = ? WHERE record_id = ?",
                changes,
            )
            purged = len(rows)
        return purged

    def _redact(
        self,
        conn: sqlite3.Connection,
        appender: _Appender,
        record_ids: Sequence[str],
        swap: SegmentSwap,
        *,
        reasons: bool = False,
    ) -> dict[str, str]:
        """Rewrite every segment holding a version of these records as a new generation with
        those entries replaced by `redacted` frames; the caller's commit switches over.
        Returns the hash of each record whose current entry was redacted (read on the way).

        With `reasons`, their events that carry a reason (typed text, which may name the
        person) are redacted too: those frames are sealed with the shared key, not the
        customer's, so destroying the customer's key would not make them unreadable."""
        kinds = "(type = 'record' OR (type = 'event' AND reason IS NOT NULL))" if reasons else (
            "type = 'record'"
        )
        redact: dict[int, set[int]] = {}  # segment_id -> seqs of the entries to redact
        for chunk in chunked(record_ids):
            marks = placeholders(len(chunk))
            for entry in conn.execute(
                f"SELECT seq, segment_id FROM records WHERE state IN ({ARCHIVED}, {RESTORED}) "
                f"AND record_id IN ({marks}) UNION ALL SELECT seq, segment_id FROM history "
                f"WHERE {kinds} AND record_id IN ({marks})",
                (*chunk, *chunk),
            ):
                redact.setdefault(entry["segment_id"], set()).add(entry["seq"])
        if appender.active.segment_id in redact:
            appender.seal_active()
        entries = _entries_of_segments(conn, redact)
        shas: dict[str, str] = {}
        for segment_id in sorted(redact):
            swap.add(*self._compact(
                conn, segment_id, entries[segment_id], redact[segment_id], appender.sealing, shas
            ))
        return shas

    def erase(
        self,
        record_ids: Sequence[str],
        at: datetime,
        actor: str,
        customer_id: str | None = None,
        reasons_of: Sequence[str] = (),
    ) -> list[ErasedRecord]:
        """Erase records on request, whatever their state: every version's content leaves the
        segment files (rewritten with `redacted` frames, as disposal does), each gains an
        `erased` event with its hash, and the catalog forgets their customer. The reasons of
        their events (a restore's, typed text) leave the catalog and the segments too, and
        their history shows `(erased)` in their place. With
        `customer_id`, that customer's data key is destroyed too, so a copy of their frames
        made before (a backup) cannot be opened with this store's keys any more.

        Records already purged or erased are left as they are; a record with a move in
        progress raises `RestoreInProgress` and nothing is erased.

        :param record_ids: the records to erase
        :param at: when (aware)
        :param actor: who erases them
        :param customer_id: the customer whose records these are, when erasing a customer
            (every record of theirs the catalog holds is erased, listed or not)
        :param reasons_of: records disposed of before that are the customer's too, naming
            no customer themselves: their events' reasons go as well
        """
        erased: list[ErasedRecord] = []
        with self._swapping_segments() as swap, self._write() as (conn, appender):
            self._remove_orphans(conn)
            wanted = list(record_ids)
            if customer_id is not None:
                # and any of theirs archived since the caller looked: the data key
                # destroyed below is theirs too, so none may stay archived without it
                wanted.extend(
                    row[0] for row in conn.execute(
                        _CUSTOMER_RECORDS.format(states=placeholders(2)),
                        (customer_id, ARCHIVED, RESTORED),
                    )
                )
            rows = sorted(
                (row for row in load_records(conn, wanted).values()
                 if row["state"] in ("archived", "restored")),
                key=lambda r: r["record_id"],
            )
            moving = [row["record_id"] for row in rows if row["pending"] is not None]
            if moving:
                raise RestoreInProgress(
                    f"record {moving[0]} has a move in progress; erase it once it is done"
                )
            reasoned = [row["record_id"] for row in rows]
            reasoned.extend(reasons_of)
            if customer_id is not None:  # theirs disposed of before keep their events' reasons
                reasoned.extend(
                    row[0] for row in conn.execute(
                        _CUSTOMER_RECORDS.format(states=placeholders(1)), (customer_id, PURGED)
                    )
                )
            shas = self._redact(conn, appender, reasoned, swap, reasons=True)
            # The catalog's copy of those reasons goes too (secure_delete zeroes the old bytes;
            # the checkpoint below empties the WAL); the history keeps each event, blanked.
            for chunk in chunked(reasoned):
                conn.execute(
                    "UPDATE history SET reason = ? WHERE reason IS NOT NULL "
                    f"AND record_id IN ({placeholders(len(chunk))})",
                    (ERASED_REASON, *chunk),
                )
            for row in rows:
                if row["customer_id"] is not None and customer_id is None:
                    conn.execute(_UNNAMED_BELOW, (row["record_id"], row["customer_id"]))
            for row in rows:
                sha = shas[row["record_id"]]
                seq = self._append_event(conn, appender, row, "erased", at, actor, sha)
                conn.execute(
                    f"UPDATE records SET state = {ERASED}, purged_at = ?, pending = NULL, "
                    "indexed = 0, state_seq = ?, customer_id = NULL WHERE record_id = ?",
                    (epoch_micros(at), seq, row["record_id"]),
                )
                erased.append(ErasedRecord(row["record_id"], sha, row["state"]))
            # A process loses the erased records: those archived below them get a new root.
            reindex_descendants(conn, [row["record_id"] for row in rows])
            if customer_id is not None:
                conn.execute(
                    "UPDATE records SET customer_id = NULL WHERE customer_id = ?",
                    (customer_id,),
                )
                keyring.destroy_customer_key(conn, customer_id)
        self._codec.clear_keys()
        # The WAL still holds the pages as they were before; copy them back and empty it.
        self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    def find_customer_records(
        self, customer_id: str, states: tuple[str, ...] = ("archived", "restored")
    ) -> list[str]:
        """The ids of a customer's records in these states (for erasure: archived and
        restored): those naming the customer, and the records of their processes that name no
        customer (a case's messages and notes), which belong to the customer of their nearest
        ancestor naming one.

        :param customer_id: the customer
        :param states: the states to list
        """
        query = _CUSTOMER_RECORDS.format(states=placeholders(len(states)))
        codes = [state_code(state) for state in states]
        return [row[0] for row in self._db().execute(query, (customer_id, *codes))]

    def reseal(self) -> int:
        """Seal the frames written before the store had a key (re-encrypt old segments).

        Each segment holding such a frame is rewritten as a new generation, the same envelopes
        sealed with their data keys, so hashes and the chain do not change; one catalog commit
        switches over, as in disposal. Returns how many frames were sealed (0 once done).
        """
        if not self._codec.encrypted:
            raise KeyMissing("the store was opened without a key: nothing to seal with")
        if self._db().execute(
            "SELECT 1 FROM meta WHERE key = 'all_sealed' AND value = '1'"
        ).fetchone():
            return 0
        sealed = 0
        with self._swapping_segments() as swap, self._write() as (conn, appender):
            self._remove_orphans(conn)
            for seg in conn.execute(
                "SELECT segment_id FROM segments ORDER BY segment_id"
            ).fetchall():
                if appender.active.segment_id == seg["segment_id"]:
                    if not self._has_unsealed(conn, seg["segment_id"]):
                        continue
                    appender.seal_active()
                count, paths = self._reseal_segment(conn, seg["segment_id"], appender.sealing)
                if paths is not None:
                    swap.add(*paths)
                sealed += count
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('all_sealed', '1')")
        return sealed

    def _has_unsealed(self, conn: sqlite3.Connection, segment_id: int) -> bool:
        seg = conn.execute(
            "SELECT generation, end_offset FROM segments WHERE segment_id = ?", (segment_id,)
        ).fetchone()
        with open(self._path(segment_id, seg["generation"]), "rb") as f:
            return any(not segment.is_sealed(frame) for _, frame in iter_frames(f))

    def _reseal_segment(
        self, conn: sqlite3.Connection, segment_id: int, sealing: keyring.Sealing
    ) -> tuple[int, tuple[Path, Path] | None]:
        """Write the next generation of a segment with every unsealed frame sealed."""
        seg = conn.execute(
            "SELECT generation, end_offset FROM segments WHERE segment_id = ?", (segment_id,)
        ).fetchone()
        old_path = self._path(segment_id, seg["generation"])
        with open(old_path, "rb") as f:
            data = f.read(seg["end_offset"])
        if len(data) < seg["end_offset"]:
            raise SegmentCorrupt(f"segment {segment_id} is shorter than committed")
        frames: list[bytes] = []
        moved: list[tuple[sqlite3.Row, int, int]] = []
        offset = count = 0
        for entry in _entries_of_segments(conn, [segment_id])[segment_id]:
            frame = data[entry["offset"] : entry["offset"] + entry["length"]]
            if not segment.is_sealed(frame):
                envelope = segment.decode_frame(frame, self._codec)
                key_id = sealing.shared_key
                if entry["type"] == "record":
                    customer = segment.parse_envelope(envelope)["record"].get("customer_id")
                    if isinstance(customer, str):
                        key_id = keyring.customer_keys(conn, sealing, [customer])[customer]
                frame = segment.build_frame(envelope, sealing.codec, key_id, sealing.dict_id)
                count += 1
            frames.append(frame)
            moved.append((entry, offset, len(frame)))
            offset += len(frame)
        if not count:
            return 0, None
        new_path = self._path(segment_id, seg["generation"] + 1)
        new_path.unlink(missing_ok=True)
        segment.write_file(new_path, frames)
        _move_entries(conn, moved)
        conn.execute(
            "UPDATE segments SET generation = ?, end_offset = ?, sealed = 1 WHERE segment_id = ?",
            (seg["generation"] + 1, offset, segment_id),
        )
        return count, (old_path, new_path)

    def open_frame(self, frame: bytes) -> bytes:
        """The envelope bytes of one whole frame of this store's segment files, decrypted and
        decompressed (for tools and tests that read segment files directly).

        :param frame: header plus payload
        """
        return segment.decode_frame(frame, self._codec)

    def iter_customer_ids(self) -> Iterator[str]:
        """Every customer id the catalog still knows (records and data keys)."""
        rows = self._db().execute(
            "SELECT customer_id FROM records WHERE customer_id IS NOT NULL UNION "
            "SELECT customer_id FROM data_keys WHERE customer_id IS NOT NULL"
        ).fetchall()
        yield from (row[0] for row in rows)

    def _compact(
        self,
        conn: sqlite3.Connection,
        segment_id: int,
        entries: list[sqlite3.Row],
        redact: set[int],
        sealing: keyring.Sealing,
        redacted_shas: dict[str, str],
    ) -> tuple[Path, Path]:
        """Write the next generation of a segment with some entries redacted.

        Updates the catalog rows (uncommitted); returns the old and the new file.

        :param entries: every entry of the segment, by seq (`_entries_of_segments`)
        :param redact: the seqs of those to replace with `redacted` frames
        :param redacted_shas: gains the record hash of each record's current entry redacted
        """
        seg = conn.execute(
            "SELECT generation, end_offset FROM segments WHERE segment_id = ?", (segment_id,)
        ).fetchone()
        old_path = self._path(segment_id, seg["generation"])
        new_path = self._path(segment_id, seg["generation"] + 1)
        with open(old_path, "rb") as f:
            data = f.read(seg["end_offset"])
        if len(data) < seg["end_offset"]:
            raise SegmentCorrupt(
                f"segment {segment_id} is shorter than committed; cannot compact it for disposal"
            )
        frames: list[bytes] = []
        moved: list[tuple[sqlite3.Row, int, int]] = []
        offset = 0
        for entry in entries:
            frame = data[entry["offset"] : entry["offset"] + entry["length"]]
            if entry["seq"] in redact:
                # Same seq, hash and prev as the original: the chain does not notice the swap.
                try:
                    envelope = segment.decode_frame(frame, self._codec)
                    prev, sha = segment.entry_hashes(entry["record_id"], envelope, entry["seq"])
                except SegmentCorrupt as e:
                    raise SegmentCorrupt(
                        f"record {entry['record_id']}: {e}; its entry cannot be redacted "
                        "(restore the segment from a backup first)"
                    ) from e
                if entry["current"]:
                    redacted_shas[entry["record_id"]] = sha
                frame = segment.build_frame(segment.canonical_json({
                    "type": "redacted",
                    "seq": entry["seq"],
                    "record_id": entry["record_id"],
                    "version": entry["version"],
                    "sha256": sha,
                    "entry_hash": segment.sha256_hex(envelope),
                    "prev": prev,
                }), sealing.codec if sealing.shared_key else None, sealing.shared_key)
            frames.append(frame)
            moved.append((entry, offset, len(frame)))
            offset += len(frame)
        new_path.unlink(missing_ok=True)
        segment.write_file(new_path, frames)
        _move_entries(conn, moved, redact)
        conn.execute(
            "UPDATE segments SET generation = ?, end_offset = ?, sealed = 1 WHERE segment_id = ?",
            (seg["generation"] + 1, offset, segment_id),
        )
        return old_path, new_path

    # -- reads -----------------------------------------------------------------------------

    def _require(self, conn: sqlite3.Connection, record_id: str) -> sqlite3.Row:
        row = load_record(conn, record_id)
        if row is None:
            raise RecordNotFound(f"record {record_id} was never archived")
        return row

    def get(self, record_id: str) -> dict[str, Any]:
        """The record exactly as archived (its latest version): one catalog lookup, one read.

        :param record_id: the record
        """
        return self.read_with_hash(record_id)[0]

    def read_with_hash(self, record_id: str) -> tuple[dict[str, Any], str]:
        """`get`, with the record's SHA-256 (read from the same frame).

        :param record_id: the record
        """
        for _ in range(3):
            conn = self._db()
            row = conn.execute(
                f"SELECT {state_name('r.state')} AS state, r.seq, r.segment_id, r.offset, "
                "r.length, s.generation FROM records r "
                "JOIN segments s ON s.segment_id = r.segment_id WHERE r.record_id = ?",
                (record_id,),
            ).fetchone()
            if row is None:
                raise RecordNotFound(f"record {record_id} was never archived")
            if row["state"] in ("purged", "erased"):
                raise RecordNotFound(f"record {record_id} was {row['state']}")
            try:
                with open(self._path(row["segment_id"], row["generation"]), "rb") as f:
                    envelope = segment.read_frame(f, row["offset"], row["length"], self._codec)
            except FileNotFoundError:
                continue  # disposal replaced this generation meanwhile: look it up again
            except SegmentCorrupt as e:
                raise SegmentCorrupt(f"record {record_id}: {e}") from e
            return check_record(record_id, envelope, row["seq"])
        raise SegmentCorrupt(f"record {record_id}: its segment file is missing")

    def get_many(self, record_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Several records exactly as archived, each segment file opened once (for bulk
        restores); ids never archived or purged are left out.

        :param record_ids: the records
        """
        return {i: read[0] for i, read in self.read_many(record_ids).items()}

    def read_many(self, record_ids: Iterable[str]) -> dict[str, tuple[dict[str, Any], str]]:
        """`get_many`, each record with its SHA-256 (which `complete_restores` then need not
        read again).

        :param record_ids: the records
        """
        conn = self._db()
        rows: list[sqlite3.Row] = []
        for chunk in chunked(dict.fromkeys(record_ids)):
            rows.extend(conn.execute(
                "SELECT r.record_id, r.seq, r.segment_id, r.offset, "
                "r.length, s.generation FROM records r "
                "JOIN segments s ON s.segment_id = r.segment_id "
                f"WHERE r.record_id IN ({placeholders(len(chunk))}) "
                f"AND r.state NOT IN {GONE}",
                chunk,
            ))
        found: dict[str, tuple[dict[str, Any], str]] = {}
        for row, read in self._read_rows(rows):
            if read is None:  # its segment replaced meanwhile (by a disposal): read it again
                try:
                    found[row["record_id"]] = self.read_with_hash(row["record_id"])
                except RecordNotFound:  # purged or erased meanwhile, as if before
                    continue
            else:
                found[row["record_id"]] = read
        return found

    def hashes(self, record_ids: Iterable[str]) -> dict[str, str]:
        """The SHA-256 of each record's current version, as the record view, the disposal list
        and the erasure ledger show it: from its entry's frame, or, once purged or erased, from
        that event. Ids never archived are left out.

        :param record_ids: the records
        """
        ids = list(dict.fromkeys(record_ids))
        for _ in range(3):
            conn = self._db()
            with snapshot(conn):
                rows = self._hash_sources(conn, ids)
            found = self._hashes_read(rows)
            if found is not None:
                return found
            # disposal replaced a generation meanwhile: look them up again
        raise SegmentCorrupt("a segment file of these records is missing")

    def _hashes_held(self, conn: sqlite3.Connection, record_ids: Iterable[str]) -> dict[str, str]:
        """`hashes`, inside a write that holds the store's lock (no file changes meanwhile)."""
        found = self._hashes_read(self._hash_sources(conn, list(dict.fromkeys(record_ids))))
        if found is None:
            raise SegmentCorrupt("a segment file of these records is missing")
        return found

    def _hash_sources(self, conn: sqlite3.Connection, ids: Sequence[str]) -> list[sqlite3.Row]:
        rows: list[sqlite3.Row] = []
        for chunk in chunked(ids):
            rows.extend(conn.execute(_HASH_SOURCES.format(placeholders(len(chunk))), chunk))
        return rows

    def _hashes_read(self, rows: list[sqlite3.Row]) -> dict[str, str] | None:
        """The hashes of these records (see `_HASH_SOURCES`), or None if a segment file was
        replaced since they were looked up."""
        found = {
            row["record_id"]: hash_hex(row["gone_sha256"])
            for row in rows if row["state"] in ("purged", "erased")
        }
        for row, envelope in self._read_envelopes(r for r in rows if r["record_id"] not in found):
            if envelope is None:
                return None
            _, found[row["record_id"]] = segment.entry_hashes(
                row["record_id"], envelope, row["seq"]
            )
        return found

    def versions(self, record_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Every archived version of these records as it was archived, oldest first: what
        erasing them takes out of the segments (a restored and re-archived record has several).
        Purged and erased records have none left.

        :param record_ids: the records
        """
        ids = list(dict.fromkeys(record_ids))
        for _ in range(3):
            conn = self._db()
            rows: list[sqlite3.Row] = []
            with snapshot(conn):
                for chunk in chunked(ids):
                    marks = placeholders(len(chunk))
                    rows.extend(conn.execute(
                        "SELECT e.record_id, e.seq, e.segment_id, e.offset, e.length, "
                        "s.generation FROM (SELECT record_id, seq, segment_id, offset, "
                        f"length FROM records WHERE state IN ({ARCHIVED}, {RESTORED}) AND "
                        f"record_id IN ({marks}) UNION ALL SELECT h.record_id, h.seq, "
                        "h.segment_id, h.offset, h.length FROM history h JOIN records r ON "
                        "r.record_id = h.record_id WHERE h.type = 'record' AND r.state IN "
                        f"({ARCHIVED}, {RESTORED}) AND h.record_id IN ({marks})) e "
                        "JOIN segments s ON s.segment_id = e.segment_id",
                        (*chunk, *chunk),
                    ))
            read = list(self._read_rows(rows))
            if all(version is not None for _, version in read):
                read.sort(key=lambda item: item[0]["seq"])
                return [version[0] for _, version in read if version is not None]
            # disposal replaced a generation meanwhile: look them up again
        raise SegmentCorrupt("a segment file of these records is missing")

    def _read_rows(
        self, rows: Iterable[sqlite3.Row]
    ) -> Iterator[tuple[sqlite3.Row, tuple[dict[str, Any], str] | None]]:
        """Read and check the record entries these catalog rows name, in file order, each
        segment file opened once: each record with its SHA-256, or None for a row whose
        segment file was replaced meanwhile."""
        for row, envelope in self._read_envelopes(rows):
            yield row, None if envelope is None else check_record(
                row["record_id"], envelope, row["seq"]
            )

    def _read_envelopes(
        self, rows: Iterable[sqlite3.Row]
    ) -> Iterator[tuple[sqlite3.Row, bytes | None]]:
        """The envelopes of the entries these catalog rows name, read in file order, each
        segment file opened once; None for a row whose segment file was replaced meanwhile."""
        rows = sorted(rows, key=lambda r: (r["segment_id"], r["offset"]))
        current: tuple[int, int] | None = None
        f: BinaryIO | None = None
        try:
            for row in rows:
                key = (row["segment_id"], row["generation"])
                if key != current:
                    if f is not None:
                        f.close()
                    current = key
                    try:
                        f = open(self._path(*key), "rb", buffering=2**20)
                    except FileNotFoundError:
                        f = None
                if f is None:
                    yield row, None
                    continue
                try:
                    envelope = segment.read_frame(f, row["offset"], row["length"], self._codec)
                except SegmentCorrupt as e:
                    raise SegmentCorrupt(f"record {row['record_id']}: {e}") from e
                yield row, envelope
        finally:
            if f is not None:
                f.close()

    def info(self, record_id: str) -> CatalogEntry:
        """The catalog's view of a record (state, version, times, pending, indexed).

        :param record_id: the record
        """
        return build_catalog_entry(self._require(self._db(), record_id))

    def history(self, record_id: str) -> list[HistoryEvent]:
        """Every `archived` (one per version), `restored` and `purged` step, oldest first.

        :param record_id: the record
        """
        rows = self._db().execute(
            f"SELECT type, event, at, actor, reason FROM ({ALL_ENTRIES}) WHERE record_id = ? "
            "ORDER BY seq",
            (record_id,),
        ).fetchall()
        if not rows:
            raise RecordNotFound(f"record {record_id} was never archived")
        return [
            HistoryEvent(
                from_micros(row["at"]),
                row["event"] or "archived",  # (an event redacted by an erasure keeps its name)
                row["actor"],
                row["reason"],
            )
            for row in rows
        ]

    def find_archived(self, record_ids: Iterable[str]) -> set[str]:
        """Those of the ids whose records are currently archived.

        :param record_ids: ids to check
        """
        conn = self._db()
        found: set[str] = set()
        for chunk in chunked(dict.fromkeys(record_ids)):
            found.update(
                row[0] for row in conn.execute(
                    f"SELECT record_id FROM records WHERE state = {ARCHIVED} "
                    f"AND record_id IN ({placeholders(len(chunk))})",
                    chunk,
                )
            )
        return found

    def iter_catalog(
        self, state: str | None = None, updated_before: datetime | None = None
    ) -> Iterator[CatalogEntry]:
        """Stream catalog rows in the order their current entries were written, optionally
        filtered: paged by the table's key (and, for a state, its index, whose entries are in
        that order too), so the whole stream reads each row once, however many pages it takes.

        :param state: only rows in this state
        :param updated_before: only rows with `updated_at <= updated_before` (inclusive, as the
            disposal rule "updated_at <= as_of - keep_years" needs)
        """
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            _check_state(state)
            where.append("records.state = ?")
            params.append(state_code(state))
        if updated_before is not None:
            where.append("updated_at <= ?")
            params.append(epoch_micros(updated_before))
        select = f"SELECT {RECORD_SELECT} FROM records"
        for row in iter_keyset(self._db(), select, where, params, "seq"):
            yield build_catalog_entry(row)

    def entries(self, record_ids: Iterable[str]) -> dict[str, CatalogEntry]:
        """The catalog rows of these records (those never archived are left out).

        :param record_ids: the records
        """
        ids = list(record_ids)
        conn = self._db()
        out: dict[str, CatalogEntry] = {}
        with snapshot(conn):
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {RECORD_SELECT} FROM records WHERE record_id IN ({marks})", chunk
                ):
                    entry = build_catalog_entry(row)
                    out[entry.record_id] = entry
        return out

    def has_pending(self) -> bool:
        """Whether any record has a move in progress (one indexed look-up)."""
        row = self._db().execute(
            "SELECT 1 FROM records WHERE pending IS NOT NULL LIMIT 1"
        ).fetchone()
        return row is not None

    def iter_pending(self) -> Iterator[CatalogEntry]:
        """Stream the records with a move in progress (`delete_active` or `insert_active`)."""
        select = f"SELECT {RECORD_SELECT} FROM records"
        for row in iter_keyset(self._db(), select, ["pending IS NOT NULL"], [], "record_id"):
            yield build_catalog_entry(row)

    def iter_records(
        self, state: str = "archived", up_to_seq: int | None = None
    ) -> Iterator[tuple[CatalogEntry, dict[str, Any]]]:
        """Stream `(entry, record)` in segment order, reading each segment sequentially.

        :param state: `archived` or `restored` (purged records have no content left)
        :param up_to_seq: only the records whose current version is at or before this entry:
            one restored and archived again while this reads is then never read twice
        """
        _check_state(state)
        if state in ("purged", "erased"):
            raise ValueError(f"{state} records have no content to iterate")
        select = (
            f"SELECT {RECORD_SELECT}, s.generation AS s_generation FROM records "
            "JOIN segments s ON s.segment_id = records.segment_id"
        )
        where = ["records.state = ?"]
        params: list[Any] = [state_code(state)]
        if up_to_seq is not None:
            where.append("records.seq <= ?")
            params.append(up_to_seq)
        current: tuple[int, int] | None = None
        f: BinaryIO | None = None
        try:
            for row in iter_keyset(self._db(), select, where, params, "records.seq"):
                key = (row["segment_id"], row["s_generation"])
                if key != current:
                    if f is not None:
                        f.close()
                        f = None
                    current = key
                    try:
                        f = open(self._path(*key), "rb", buffering=2**20)
                    except FileNotFoundError:
                        f = None  # replaced by disposal meanwhile: fall back to lookups
                record_id = row["record_id"]
                if f is None:
                    try:
                        record = self.get(record_id)
                    except RecordNotFound:
                        continue  # purged meanwhile
                    entry = self.info(record_id)
                    if entry.state != state or (up_to_seq is not None and entry.seq > up_to_seq):
                        continue
                    yield entry, record
                    continue
                try:
                    envelope = segment.read_frame(
                        f, row["offset"], row["length"], self._codec
                    )
                except SegmentCorrupt as e:
                    raise SegmentCorrupt(f"record {record_id}: {e}") from e
                yield build_catalog_entry(row), check_record(record_id, envelope, row["seq"])[0]
        finally:
            if f is not None:
                f.close()

    def iter_unindexed(self, limit: int) -> list[CatalogEntry]:
        """Up to `limit` records whose latest change the index does not reflect yet.

        Archived ones are to be added to the index, restored and purged ones removed from it.

        :param limit: the most rows to return
        """
        rows = self._db().execute(
            f"SELECT {RECORD_SELECT} FROM records WHERE indexed = 0 ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [build_catalog_entry(row) for row in rows]

    def categories(self) -> set[str]:
        """The categories of the records archived or restored (a hold on any still reaches
        them)."""
        rows = self._db().execute(
            "SELECT name FROM names WHERE id IN (SELECT category FROM records "
            f"WHERE state IN ({ARCHIVED}, {RESTORED}))"
        )
        return {row[0] for row in rows}

    def counts(self) -> dict[str, int]:
        """Counts for stats: archived, restored, purged, erased, indexed (and archived), and
        pending (a move under way, either way)."""
        conn = self._db()
        with snapshot(conn):
            return _counts(conn)

    def counts_and_moving(self) -> tuple[dict[str, int], list[str]]:
        """`counts()` and the archived records with a move under way (out of the active
        database or back into it), read at one moment: stats count each where its active row
        is then."""
        conn = self._db()
        with snapshot(conn):
            result = _counts(conn)
            moving = [
                row[0] for row in conn.execute(
                    "SELECT record_id FROM records WHERE pending IS NOT NULL "
                    f"AND state = {ARCHIVED}"
                )
            ]
        return result, moving

    def check_readable(self) -> None:
        """Read one catalog row, raising if the catalog cannot be read: the cheap check for
        /healthz (:meth:`counts` scans every row, about 0.4 s at 1,000,000 records)."""
        db = self._db()
        db.execute("SELECT record_id FROM records LIMIT 1").fetchall()
        # Every segment file the catalog commits to is there, at least as long as committed
        # (a stat per segment: a deleted or truncated file is seen before a read fails).
        for row in db.execute("SELECT segment_id, generation, end_offset FROM segments"):
            path = segment.segment_path(self._segments_dir, row[0], row[1])
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                if row[2] == 0:
                    continue
                raise SegmentCorrupt(f"segment {row[0]} is missing ({path.name})") from None
            if size < row[2]:
                raise SegmentCorrupt(
                    f"segment {row[0]} is {size} bytes but {row[2]} are committed ({path.name})"
                )

    def verify(self) -> list[Problem]:
        """Recheck every frame, checksum and the hash chain against the catalog; read-only."""
        if self._closed:
            raise ArchiveStoreError("the archive store is closed")
        lock = None if self.read_only else self._lock_path
        return verify_store(
            self._catalog_path, self._segments_dir, lock, self._codec, read_only=self.read_only
        )


def _customer_of(item: ArchiveItem, earlier: sqlite3.Row | None) -> str | None:
    """The customer the catalog keeps for a record archived (again): its own, or, for one
    naming none under the same parent, the customer its earlier version was handed when the
    record above it was erased alone (that record no longer names anyone to inherit from)."""
    if item.customer_id is not None or earlier is None:
        return item.customer_id
    if earlier["parent_id"] == item.parent_id:
        return earlier["customer_id"]
    return None


def _entries_of_segments(
    conn: sqlite3.Connection, segment_ids: Iterable[int]
) -> dict[int, list[sqlite3.Row]]:
    """Every entry of these segments, by segment and then seq (one pass over the catalog)."""
    wanted = sorted(set(segment_ids))
    out: dict[int, list[sqlite3.Row]] = {segment_id: [] for segment_id in wanted}
    if not wanted:
        return out
    for row in conn.execute(
        f"SELECT * FROM ({ALL_ENTRIES}) WHERE segment_id IN ({placeholders(len(wanted))}) "
        "ORDER BY seq",
        wanted,
    ):
        out[row["segment_id"]].append(row)
    return out


def _move_entries(
    conn: sqlite3.Connection,
    moved: Sequence[tuple[sqlite3.Row, int, int]],
    redacted: set[int] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Point the catalog at entries' places in a segment's new generation (uncommitted).

    :param moved: `(entry row from ALL_ENTRIES, new offset, new length)`
    :param redacted: the seqs now in `redacted` frames (a record's current entry says so by
        its state, which the caller sets)
    """
    conn.executemany(
        "UPDATE records SET offset = ?, length = ? WHERE record_id = ? AND seq = ?",
        [(offset, length, e["record_id"], e["seq"]) for e, offset, length in moved
         if e["current"]],
    )
    conn.executemany(
        "UPDATE history SET offset = ?, length = ?, type = ? WHERE seq = ?",
        [(offset, length, "redacted" if e["seq"] in redacted else e["type"], e["seq"])
         for e, offset, length in moved if not e["current"]],
    )


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")


def check_record(record_id: str, envelope: bytes, seq: int) -> tuple[dict[str, Any], str]:
    """Check a decoded record envelope against its catalog row; returns the record and its
    SHA-256.

    The frame's checksum (and, sealed, its authentication tag) vouch for its bytes; this checks
    that they are the entry the catalog names, holding the record its hash is of.

    :param record_id: the id the catalog expects
    :param envelope: decompressed envelope bytes
    :param seq: the entry's seq
    """
    value = segment.parse_envelope(envelope)
    if (
        value.get("type") != "record"
        or value.get("record_id") != record_id
        or value.get("seq") != seq
        or not isinstance(value.get("record"), dict)
    ):
        raise SegmentCorrupt(f"record {record_id}: entry does not match the catalog")
    record: dict[str, Any] = value["record"]
    sha = segment.sha256_hex(segment.canonical_json(record))
    if value.get("sha256") != sha:
        raise SegmentCorrupt(f"record {record_id}: its content does not match its sha256")
    return record, sha


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    """`ArchiveStore.counts`, inside a read transaction the caller holds."""
    result = {
        state: conn.execute("SELECT COUNT(*) FROM records WHERE state = ?", (code,)).fetchone()[0]
        for code, state in enumerate(STATES)
    }
    result["indexed"] = conn.execute(
        f"SELECT COUNT(*) FROM records WHERE indexed = 1 AND state = {ARCHIVED}"
    ).fetchone()[0]
    result["pending"] = conn.execute(
        "SELECT COUNT(*) FROM records WHERE pending IS NOT NULL"
    ).fetchone()[0]
    return result
