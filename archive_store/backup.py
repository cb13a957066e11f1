"""Backups of the archive store: a consistent copy of catalog and segments, made incrementally.

A backup folder is checked by its `MANIFEST`, one `SHA-256  path` line per file in the format
`sha256sum -c` reads. The store's part of it lives under `archive/`: `catalog.db` (copied with
SQLite's `VACUUM INTO`), `segments/` (segment files, named by segment and generation) and
any other file the store keeps beside them.

Consistency: the catalog is copied and every segment file it names is opened while the store's
write lock is held shared, so no writer is between its append and its commit; the open files
then keep their bytes even if disposal replaces a file afterwards. Only the committed length of
the active segment is copied. Sealed segments never change under their name (disposal writes a
new generation), so a file the previous backup holds with the same size is not copied again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from archive_store import keyring, segment
from archive_store.catalog import (
    ARCHIVED,
    ENTRY_AT,
    chunked,
    connect,
    get_head,
    placeholders,
    upgraded_copy,
)
from archive_store.codec import FrameCodec
from archive_store.errors import ArchiveStoreError, CatalogUnavailable
from archive_store.faults import crash_point
from archive_store.models import Problem
from archive_store.store import ArchiveStore
from archive_store.verify import verify_store

MANIFEST = "MANIFEST"
STORE_FOLDER = "archive"
CATALOG = "catalog.db"
SEGMENTS = "segments"
STAGING = ".recovering"  # inside the archive folder: a recovery's copy before it is installed
# Inside the archive folder from the moment a recovery begins to replace the installation
# until the erasure and revocation ledgers are applied again: the backup it came from, so that
# nothing else opens a half-replaced installation. One recovery at a time holds RECOVER_LOCK.
RECOVERING = "RECOVERING"
RECOVER_LOCK = "recover.lock"
# Files of a live store that are not part of its state: locks, a recovery's marks, and
# SQLite's WAL companions (`VACUUM INTO` reads committed WAL content into the copy).
_NOT_COPIED = {".lock", "move.lock", "index.lock", "dispose.lock", "archive.lock", RECOVER_LOCK,
               RECOVERING, RECOVERING + ".partial", "catalog.db-wal", "catalog.db-shm",
               "catalog.db-journal"}
_CHUNK = 2**20
RUN_PARTIALS = {  # a run's own, and the journal SQLite keeps beside a copy while it writes it
    f"{name}.partial{suffix}" for name in ("active.db", "backup.json", "MANIFEST")
    for suffix in ("", "-journal")
}


class BackupError(ArchiveStoreError):
    """A backup cannot be made, read or recovered."""

    code = "backup_error"


class RecoveryInterrupted(BackupError):
    """A recovery stopped after it began to replace the installation: it is half replaced."""

    code = "recovery_interrupted"


class BackupDamaged(BackupError):
    """A backup's files do not match its manifest, or its archive does not verify."""

    code = "backup_damaged"


@dataclass
class CopyTally:
    """What one backup run copied: files written (new or changed) and bytes written."""

    files: int = 0
    bytes: int = 0
    hashes: dict[str, str] = field(default_factory=dict)  # manifest path -> sha256


@dataclass(frozen=True)
class SegmentSource:
    """One segment file of the snapshot, opened, with its committed length."""

    name: str
    length: int
    sealed: bool
    file: BinaryIO


@dataclass
class StoreSnapshot:
    """The store at one moment: a catalog copy and the open segment files it names."""

    catalog_copy: Path
    segments: list[SegmentSource]
    extra_files: dict[str, bytes]
    archived: int
    _stack: ExitStack
    codec: FrameCodec | None = None  # the store's, to open a frame of the snapshot

    def close(self) -> None:
        """Close the segment files."""
        self._stack.close()

    def head(self) -> list[object]:
        """The catalog's last entry as `[seq, entry hash]` (`[0, ""]` for an empty store)."""
        conn = sqlite3.connect(self.catalog_copy)
        try:
            seq, entry_hash = get_head(conn)
        finally:
            conn.close()
        return [0, ""] if seq == 0 else [seq, entry_hash]

    def descends_from(self, head: object) -> bool:
        """Whether this catalog's history holds the entry `head` (from an earlier `head()`):
        if so, every segment file an earlier backup copied from it is a prefix of the file
        of that name now. A store recovered from an older backup, then written to, or
        another installation, is not."""
        if not (isinstance(head, list) and len(head) == 2 and isinstance(head[0], int)):
            return False
        seq, entry_hash = head
        if seq == 0:
            return True
        conn = sqlite3.connect(self.catalog_copy)
        try:
            head_seq, head_hash = get_head(conn)
            row = None if seq >= head_seq else conn.execute(ENTRY_AT, (seq, seq)).fetchone()
        finally:
            conn.close()
        if seq >= head_seq:
            return seq == head_seq and head_hash == entry_hash
        if row is None:
            return False
        segment_id, offset, length, generation = row
        name = segment.segment_path(Path(), segment_id, generation).name
        source = next((s for s in self.segments if s.name == name), None)
        if source is None:
            return False
        try:  # (pread: the copy that follows reads the same open file)
            frame = os.pread(source.file.fileno(), length, offset)
            return segment.entry_hash_of(segment.decode_frame(frame, self.codec)) == entry_hash
        except ArchiveStoreError:
            return False


def hash_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes.

    :param path: the file
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_private(path: Path, mode: str = "wb") -> IO[Any]:
    """Open a new file for writing, readable by its owner only from its first byte (a backup
    holds the catalog and the audit log); one of that name a stopped run left is replaced.

    :param path: the file
    :param mode: `wb`, or `w` for UTF-8 text
    """
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")


def load_manifest(folder: Path) -> dict[str, str]:
    """The manifest of a backup folder as `{path: sha256}`; empty if it has none.

    :param folder: the backup folder
    """
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise BackupDamaged(f"{folder / MANIFEST}: line {number} is not `SHA256  PATH`")
        entries[name] = digest
    return entries


def write_manifest(folder: Path, entries: dict[str, str]) -> None:
    """Write the manifest atomically (a temp file renamed over it), sorted by path.

    :param folder: the backup folder
    :param entries: `{path relative to folder: sha256}`
    """
    temp = folder / (MANIFEST + ".partial")
    with open_private(temp, "w") as f:
        for name in sorted(entries):
            f.write(f"{entries[name]}  {name}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, folder / MANIFEST)
    segment.fsync_directory(folder)


def check_manifest(folder: Path) -> list[str]:
    """Every file the manifest names that is missing or whose bytes differ, one line each.

    :param folder: the backup folder
    """
    if not (folder / MANIFEST).is_file():
        return [f"missing: {MANIFEST} (not a backup, or one that did not finish)"]
    problems = []
    for name, digest in sorted(load_manifest(folder).items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"missing: {name}")
        elif hash_file(path) != digest:
            problems.append(f"damaged: {name} (SHA-256 differs from the manifest)")
    return problems


def copy_sqlite(source: Path, target: Path) -> None:
    """Copy a live SQLite database as one consistent snapshot (`VACUUM INTO`).

    The copy is switched to rollback-journal mode, so reading it later (verify) creates no
    `-wal`/`-shm` files in the backup folder. It is private (0600) from the start, and so is
    its journal while it is written (SQLite gives a journal its database's mode).

    :param source: the database file (WAL mode, in use)
    :param target: the copy to write; replaced if it exists
    :raises BackupError: the copy cannot be written (a full disk) or the source read
    """
    open_private(target).close()  # (VACUUM INTO writes into an empty file as into none)
    try:
        src = sqlite3.connect(source, timeout=60, isolation_level=None)
        try:
            # One read transaction of the source, live pages only: the free pages an archive
            # run leaves in the active database are not copied (nor make an unchanged copy
            # differ).
            src.execute("VACUUM INTO ?", (str(target),))
        finally:
            src.close()
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as e:
        raise BackupError(f"cannot copy {source} to {target}: {e}") from e
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def take_store_snapshot(store: ArchiveStore, catalog_copy: Path) -> StoreSnapshot:
    """Copy the catalog and open every segment file it names, with no store writer active.

    The store's write lock is held shared for this moment only; the caller copies the opened
    segments afterwards (and must `close()` the snapshot).

    :param store: the open store
    :param catalog_copy: where the catalog copy goes
    """
    stack = ExitStack()
    segments_dir = store.directory / SEGMENTS
    try:
        fd = os.open(store.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # writers hold it exclusive across append + commit
            copy_sqlite(store.directory / CATALOG, catalog_copy)
            conn = sqlite3.connect(catalog_copy)
            try:
                rows = conn.execute(
                    "SELECT segment_id, generation, sealed, end_offset FROM segments "
                    "ORDER BY segment_id"
                ).fetchall()
                archived = conn.execute(
                    f"SELECT COUNT(*) FROM records WHERE state = {ARCHIVED}"
                ).fetchone()[0]
            finally:
                conn.close()
            sources = []
            for segment_id, generation, sealed, end in rows:
                path = segment.segment_path(segments_dir, segment_id, generation)
                try:
                    f = stack.enter_context(open(path, "rb"))
                except FileNotFoundError:
                    if end == 0:
                        continue  # an active segment nothing was written to yet
                    raise BackupError(
                        f"segment file {path.name} is missing from the store"
                    ) from None
                sources.append(SegmentSource(path.name, end, bool(sealed), f))
            extra = {
                path.name: path.read_bytes()
                for path in sorted(store.directory.iterdir())
                if path.is_file() and path.name not in _NOT_COPIED and path.name != CATALOG
            }
        finally:
            os.close(fd)  # releases the lock
    except BaseException:
        stack.close()
        raise
    return StoreSnapshot(catalog_copy, sources, extra, int(archived), stack, store.codec)


def copy_segments(
    snapshot: StoreSnapshot, folder: Path, previous: dict[str, str], tally: CopyTally
) -> None:
    """Copy the snapshot's segments into `folder/archive/segments`, skipping what is there.

    A segment the previous backup holds at the same size is kept as it is; one it holds shorter
    (the segment that was active then) gets its new tail appended.

    :param snapshot: from `take_store_snapshot`
    :param folder: the backup folder
    :param previous: the previous manifest (`{}` for a first or unfinished backup)
    :param tally: where the copied files and bytes are counted
    """
    target_dir = folder / STORE_FOLDER / SEGMENTS
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for source in snapshot.segments:
        name = f"{STORE_FOLDER}/{SEGMENTS}/{source.name}"
        target = target_dir / source.name
        have = target.stat().st_size if name in previous and target.is_file() else -1
        if 0 <= have <= source.length and hash_file(target) != previous[name]:
            have = -1  # the copy was damaged since: copied again whole
        if have == source.length:
            tally.hashes[name] = previous[name]
            continue
        # Same name, same file: segments only grow until a compaction writes a new generation
        # (a new name), so what the backup holds is a prefix and only the tail is missing
        # (the caller checked that the store's history goes on from the previous backup's).
        start = have if 0 <= have < source.length else 0
        # A new file renamed over the old one, never an append in place: an older backup
        # kept as hard links (`cp -al`) shares the old file, and must keep its bytes.
        fresh = target_dir / (source.name + ".partial")
        with open_private(fresh) as out:
            if start:
                with open(target, "rb") as kept:
                    shutil.copyfileobj(kept, out, _CHUNK)
            source.file.seek(start)
            remaining = source.length - start
            while remaining:
                chunk = source.file.read(min(_CHUNK, remaining))
                if not chunk:
                    raise BackupError(f"segment {source.name} is shorter than its catalog says")
                out.write(chunk)
                remaining -= len(chunk)
            out.truncate(source.length)
            out.flush()
            os.fsync(out.fileno())
        os.replace(fresh, target)
        tally.files += 1
        tally.bytes += source.length - start
        tally.hashes[name] = hash_file(target)
    segment.fsync_directory(target_dir)


def keep_if_changed(
    folder: Path, name: str, fresh: Path, previous: dict[str, str], tally: CopyTally
) -> None:
    """Move a freshly written copy to `folder/name` unless the backup already holds those bytes.

    :param folder: the backup folder
    :param name: the file's path in the manifest
    :param fresh: the new copy (removed if it is not needed)
    :param previous: the previous manifest
    :param tally: where it is counted if it was copied
    """
    digest = hash_file(fresh)
    target = folder / name
    # (the copy kept is rehashed: one damaged since the last run is replaced)
    if previous.get(name) == digest and target.is_file() and hash_file(target) == digest:
        fresh.unlink()
    else:
        os.replace(fresh, target)
        tally.files += 1
        tally.bytes += target.stat().st_size
    tally.hashes[name] = digest


def write_store_part(
    snapshot: StoreSnapshot, folder: Path, previous: dict[str, str], tally: CopyTally
) -> None:
    """Put the snapshot's catalog, segments and other files into the backup folder.

    :param snapshot: from `take_store_snapshot`, its catalog copy inside `folder/archive`
    :param folder: the backup folder
    :param previous: the previous manifest
    :param tally: where copied files and bytes are counted
    """
    store_folder = folder / STORE_FOLDER
    keep_if_changed(folder, f"{STORE_FOLDER}/{CATALOG}", snapshot.catalog_copy, previous, tally)
    for name, data in snapshot.extra_files.items():
        fresh = store_folder / (name + ".partial")
        with open_private(fresh) as f:
            f.write(data)
        keep_if_changed(folder, f"{STORE_FOLDER}/{name}", fresh, previous, tally)
    copy_segments(snapshot, folder, previous, tally)
    segment.fsync_directory(store_folder)


def remove_unlisted(folder: Path, keep: set[str]) -> None:
    """Delete what the new manifest does not list under `archive/` and `tables/` (old segment
    generations, copies a stopped run left).

    :param folder: the backup folder
    :param keep: the manifest's paths
    """
    for path in folder.glob("*.partial"):  # left by a run that stopped half-way
        if path.name in RUN_PARTIALS:
            path.unlink()
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        if name.startswith(("archive/", "tables/")) and name not in keep:
            path.unlink()


def verify_store_copy(folder: Path, key: bytes | None = None) -> list[Problem]:
    """Check the backed-up archive's checksums and hash chain, without writing into `folder`.

    :param folder: the backup folder
    :param key: the archive key, to open sealed frames (a backup never holds it)
    """
    store_folder = folder / STORE_FOLDER
    catalog = store_folder / CATALOG
    if not catalog.is_file():
        return [Problem(None, None, f"{STORE_FOLDER}/{CATALOG} is missing")]
    with tempfile.TemporaryDirectory() as scratch:
        lookups: sqlite3.Connection | None = None
        try:
            catalog = upgraded_copy(catalog, Path(scratch))  # (a backup an earlier version made)
            lookups = connect(catalog, read_only=True)
            conn = lookups
            codec = FrameCodec(
                key,
                lambda key_id: keyring.load_wrapped_key(conn, key_id),
                lambda dict_id: keyring.load_dictionary(conn, dict_id),
            )
            try:  # one line for a wrong or missing key, not one per sealed record
                keyring.check_archive_key(conn, codec)
            except CatalogUnavailable:
                raise
            except ArchiveStoreError as e:  # not damage: the backup may be sound
                return [Problem(None, None, f"cannot be checked: {e} (give the archive key "
                                            "the backup was made with)")]
            return verify_store(catalog, store_folder / SEGMENTS, Path(scratch) / ".lock", codec)
        except sqlite3.DatabaseError as e:
            return [Problem(None, None, f"{STORE_FOLDER}/{CATALOG} cannot be read: {e}")]
        finally:
            if lookups is not None:
                lookups.close()


def archived_in_backup(folder: Path, record_ids: Iterable[str]) -> set[str]:
    """Those of the ids a backup holds archived, read without writing into `folder`.

    :param folder: the backup folder
    :param record_ids: the ids to look up
    """
    with tempfile.TemporaryDirectory() as scratch:
        catalog = upgraded_copy(folder / STORE_FOLDER / CATALOG, Path(scratch))
        conn = connect(catalog, read_only=True)
        try:
            held: set[str] = set()
            for chunk in chunked(record_ids):
                held.update(row[0] for row in conn.execute(
                    f"SELECT record_id FROM records WHERE state = {ARCHIVED} "
                    f"AND record_id IN ({placeholders(len(chunk))})", chunk
                ))
            return held
        finally:
            conn.close()


def make_private(folder: Path) -> None:
    """Owner-only modes for a folder and everything in it: a backup holds the catalog, token
    hashes, the audit log's searches and (embedded) the active records in plain text.

    :param folder: the folder
    """
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        private = 0o700 if path.is_dir() else 0o600
        with suppress(OSError):  # (another owner's file is left as it is)
            if path.stat().st_mode & 0o777 != private:
                path.chmod(private)


def stage_store(folder: Path, store_dir: Path, listed: set[str]) -> Path:
    """Copy the backed-up store into a staging folder inside `store_dir`; returns it.

    Everything a recovery writes is written here first, so a full disk or a crash fails it
    with the installation's own store untouched; `install_staged_store` then only deletes and
    renames, which need no space. A staging folder a failed recovery left is replaced.

    :param folder: the backup folder
    :param store_dir: the installation's archive folder
    :param listed: the manifest's paths: a file the backup holds but does not list (put there
        after it was made) is not the backup's, and is not installed
    """
    source = folder / STORE_FOLDER
    staged = store_dir / STAGING
    shutil.rmtree(staged, ignore_errors=True)
    (staged / SEGMENTS).mkdir(parents=True)
    try:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.relative_to(folder).as_posix() in listed:
                target = staged / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                crash_point("recover.stage_file")
                shutil.copyfile(path, target)
                target.chmod(0o600)  # private, as the store's own files
                with open(target, "rb+") as f:
                    os.fsync(f.fileno())
        for directory in sorted({p.parent for p in staged.rglob("*")} | {staged}):
            segment.fsync_directory(directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def staged_copy(path: Path) -> Path:
    """Where a recovery stages its copy of a file it replaces (the embedded database), beside it.

    :param path: the file
    """
    return path.with_name(path.name + STAGING)


@contextmanager
def _recover_lock(store_dir: Path) -> Iterator[bool]:
    """Try the installation's recovery lock, without waiting: whether it is held."""
    fd = os.open(store_dir / RECOVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(fd)


@contextmanager
def recovering_alone(store_dir: Path) -> Iterator[None]:
    """Hold the installation's recovery lock: a second recovery at once is refused, and a
    `RECOVERING` file found while holding it was left by one that stopped.

    :param store_dir: the installation's archive folder (made if missing)
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    with _recover_lock(store_dir) as held:
        if not held:
            raise BackupError(f"another recovery of the installation in {store_dir} is running")
        yield


def discard_stale_staging(store_dir: Path, database: Path | None) -> None:
    """Delete what a recovery killed before it replaced anything left staged: a copy of the
    backup's store (and of its database), which may hold what was erased since. Only with no
    `RECOVERING` file (nothing of it was installed) and no recovery running.

    :param store_dir: the installation's archive folder
    :param database: the SQLite active database a recovery may have staged a copy of, if any
    """
    staged = [store_dir / STAGING] + ([] if database is None else [staged_copy(database)])
    if not any(path.exists() for path in staged) or (store_dir / RECOVERING).exists():
        return  # (a recovery that stopped half-way: its run again replaces them)
    # (a folder this process may not write has nothing of it to delete either)
    with suppress(OSError), _recover_lock(store_dir) as held:
        if held:  # (else a recovery is staging right now)
            shutil.rmtree(staged[0], ignore_errors=True)
            for path in staged[1:]:
                path.unlink(missing_ok=True)


def mark_recovering(store_dir: Path, backup: Path, **details: object) -> None:
    """Say, durably, that a recovery from `backup` is replacing the installation.

    :param store_dir: the installation's archive folder
    :param backup: the backup folder
    :param details: what a run that finishes this one reports too (JSON values)
    """
    fresh = store_dir / (RECOVERING + ".partial")
    fresh.write_text(json.dumps({"backup": str(backup.resolve()), **details}) + "\n",
                     encoding="utf-8")
    with open(fresh, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(fresh, store_dir / RECOVERING)
    segment.fsync_directory(store_dir)


def interrupted_recovery(store_dir: Path) -> dict[str, object] | None:
    """What `mark_recovering` wrote for a recovery that did not finish (its `backup` and
    details), or None.

    :param store_dir: the installation's archive folder
    """
    try:
        text = (store_dir / RECOVERING).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("backup"), str):
        return {"backup": "DIR"}  # (written whole by a rename, so not expected)
    return value


def end_recovering(store_dir: Path) -> None:
    """The recovery finished: the installation is whole again.

    :param store_dir: the installation's archive folder
    """
    (store_dir / RECOVERING).unlink(missing_ok=True)
    segment.fsync_directory(store_dir)


def install_staged_store(staged: Path, store_dir: Path) -> None:
    """Replace the store in `store_dir` with the one `stage_store` staged (the store must not
    be open): the old catalog and segments are deleted, the staged files renamed into place.

    :param staged: what `stage_store` returned
    :param store_dir: the installation's archive folder
    """
    (store_dir / SEGMENTS).mkdir(parents=True, exist_ok=True)
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm", "catalog.db-journal"):
        (store_dir / name).unlink(missing_ok=True)
    for path in (store_dir / SEGMENTS).iterdir():
        if path.is_file():
            path.unlink()
    for path in sorted(staged.rglob("*")):
        if path.is_file():
            target = store_dir / path.relative_to(staged)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    segment.fsync_directory(store_dir / SEGMENTS)
    segment.fsync_directory(store_dir)
    shutil.rmtree(staged)


@contextmanager
def snapshot_closing(snapshot: StoreSnapshot) -> Iterator[StoreSnapshot]:
    """Close the snapshot's files on leaving the block.

    :param snapshot: from `take_store_snapshot`
    """
    try:
        yield snapshot
    finally:
        snapshot.close()
