"""Backup and recovery of a whole installation: archive store, active database, own tables.

A backup folder holds `archive/` (the store, see `archive_store.backup`), the active database
and `backup.json`, all listed with their SHA-256 in `MANIFEST`. With the embedded SQLite active
database, `active.db` is a copy of the whole file (active records, legal holds, API tokens, job
runs, audit log, disposal list); with any other database, and with the CRM's own tables mapped
(in a SQLite file too), `tables/*.jsonl` hold Archivist's own tables and the CRM's records stay
the CRM's to back up: a recovery never puts the CRM's rows back as they were.

Consistency: the active database and the catalog are copied while the store's move lock is held
alone (`settling`), so no record is between the two places: each is in exactly one of them in
the backup. Archive runs and restores wait for those copies (seconds), not for the segments,
which are copied afterwards from files opened at the same moment.

The search index is not backed up: recovery rebuilds it from the store, which is what a backup
can prove sound (the index has no checksums of its own) and keeps backups at about the store's
size.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from archive_store.backup import (
    MANIFEST,
    RUN_PARTIALS,
    STORE_FOLDER,
    BackupDamaged,
    BackupError,
    CopyTally,
    check_manifest,
    copy_sqlite,
    end_recovering,
    hash_file,
    install_staged_store,
    interrupted_recovery,
    keep_if_changed,
    load_manifest,
    make_private,
    mark_recovering,
    open_private,
    recovering_alone,
    remove_unlisted,
    snapshot_closing,
    stage_store,
    staged_copy,
    take_store_snapshot,
    verify_store_copy,
    write_manifest,
    write_store_part,
)
from archive_store.crypto import KEY_ENV, KeyMissing, WrongKey, load_key
from archive_store.errors import StoreReadOnly
from archive_store.faults import crash_point
from archive_store.segment import fsync_directory
from archivist.active_db import (
    ACTIVE_TABLE,
    AuditEntry,
    Base,
    JobRun,
    Lease,
    UTCDateTime,
    count_active,
    register_all_tables,
    sqlite_path,
    utcnow,
)
from archivist.archive_head import set_archive_head
from archivist.audit import AuditEvent, iter_chain_problems, write_audit
from archivist.config import Config
from archivist.crm_rows import count_crm_rows
from archivist.ledgers import create_ledger
from archivist.records import format_utc
from archivist.tokens import (
    apply_revocation_ledger,
    ledger_earlier_revocations,
    revocation_ledger_path,
)
from archivist.web_sessions import WebSession
from indexer.jobs.crm_recovery import (
    crm_rows_lost_by,
    describe_lost_crm_rows,
    mark_live_crm_rows_restored,
)
from indexer.jobs.erasure import apply_erasure_ledger, ledger_path
from indexer.jobs.indexing import rebuild_index
from indexer.jobs.reconcile import reconcile_pending
from indexer.services import Services

log = logging.getLogger(__name__)
FORMAT = 1
METADATA = "backup.json"
ACTIVE_DB = "active.db"
TABLES_FOLDER = "tables"
# Archivist's own tables, copied on their own when the active database is not embedded SQLite.
# Leases are left out on purpose: a recovered installation starts with no job running.
ALWAYS_TABLES = ("legal_holds", "api_tokens", "job_runs", "audit_log", "disposals")
OWN_TABLES = (
    # the active records themselves, backed up in the same moment as the store (on PostgreSQL
    # the active database is Archivist's; empty when the CRM's own tables are mapped)
    ACTIVE_TABLE.name,
    *ALWAYS_TABLES,
    # with the CRM's tables mapped: which records left together, and what blocked a run
    "archived_process_members", "job_run_blocks",
)
JOB = "backup"
_ROWS_PER_BATCH = 2000  # rows a table dump fetches, or a recovery inserts, at a time


class InstallationNotEmpty(BackupError):
    """Recovery was asked into an installation that already holds records."""

    code = "installation_not_empty"


@dataclass(frozen=True)
class BackupReport:
    """What `backup create` did: records the backup holds, files and bytes it copied."""

    records: int
    files: int
    bytes: int
    active: int
    archived: int


@dataclass(frozen=True)
class RecoverReport:
    """What `backup recover` put in place."""

    active: int
    archived: int
    indexed: int
    created_at: str
    crm_rows_lost: int = 0  # forced: CRM rows archived after the backup, now in neither place
    # The erasure ledger that was looked for and not found: erasures made after the backup
    # was taken could not be made again (the key copied, or given in the environment, and the
    # ledger left behind: `backup create` makes it before the first erasure), so their records
    # may be back.
    missing_erasure_ledger: Path | None = None
    # ... and the revocation ledger: tokens revoked after the backup was taken work again
    missing_revocation_ledger: Path | None = None


def whole_file_database(config: Config) -> Path | None:
    """The SQLite file a backup copies whole: the embedded active database, whose every table
    is Archivist's. A file holding the CRM's own tables (mapped) is the CRM's: None."""
    return None if config.tables else sqlite_path(config.active_url)


def create_backup(services: Services, folder: Path, at: datetime) -> BackupReport:
    """Back up the installation into `folder`, online, copying only what changed.

    The old manifest is removed first: a run that stops half-way leaves a folder that `verify`
    calls unfinished, and the next run copies everything again. The erasure and revocation
    ledgers are created beside the key file if nothing wrote them yet, so that a copy of the
    key and its ledgers taken for a recovery holds them, and a recovery that finds one missing
    knows it was not copied; tokens an earlier version revoked without a ledger are listed.

    :param services: the installation, open
    :param folder: the backup folder (created if missing)
    :param at: the time stamped on the backup
    :raises StoreReadOnly: the archive folder is read-only (see `_refuse_read_only`)
    """
    folder = Path(folder)
    _refuse_read_only(services)
    _check_folder(services.config, folder)
    _create_ledgers(services.config)
    ledger_earlier_revocations(services.sessions, revocation_ledger_path(services.config.key_file))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    (folder / STORE_FOLDER).mkdir(mode=0o700, exist_ok=True)
    with _writing(folder):
        make_private(folder)  # (what a stopped run left too, before anything is added)
        _mark_unfinished(folder)
        try:
            return _create(services, folder, at)
        except OSError as e:
            if e.filename:  # (says which file already)
                raise
            raise BackupError(f"cannot write the backup in {folder}: "
                              f"{e.strerror or e}") from e


def _refuse_read_only(services: Services) -> None:
    """A backup only reads the archive, but takes the store's locks, files in the archive
    folder opened for writing, so that no record moves between the active database and the
    archive while both are copied: with that folder read-only it cannot."""
    store = services.store
    if store.read_only:
        raise StoreReadOnly(
            f"the archive folder {store.directory} is read-only: a backup locks the archive "
            "(lock files in that folder) so that no record moves while the active database "
            "and the catalog are copied; run it where the folder can be written"
        )


def _create_ledgers(config: Config) -> None:
    """The erasure and revocation ledgers, empty, where erasures and token revocations write
    them (beside `[archive] key_file`, with the key given in the environment too). A folder
    they cannot be made in fails no backup: an erasure would fail there as well, and a
    recovery warns that it found no ledger."""
    for path in (ledger_path(config.key_file), revocation_ledger_path(config.key_file)):
        try:
            create_ledger(path)
        except OSError as e:
            log.warning("cannot create the ledger %s (%s): a recovery of this backup will "
                        "warn that it finds none", path, e)


def _previous_head(folder: Path) -> object:
    """The catalog head the folder's last backup recorded (None if it has none)."""
    try:
        return json.loads((folder / METADATA).read_text(encoding="utf-8")).get("catalog_head")
    except (OSError, ValueError, AttributeError):
        return None


def _mark_unfinished(folder: Path) -> None:
    """Give a folder that holds no backup yet a `backup.json` that says one is being made:
    a first run that stops half-way (a full disk) leaves a folder the next run recognises
    as its own and writes into again, and that `verify` calls unfinished (no MANIFEST)."""
    if (folder / METADATA).exists():
        return
    fresh = folder / (METADATA + ".partial")
    with open_private(fresh, "w") as f:
        f.write(json.dumps({"format": FORMAT, "finished": False}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(fresh, folder / METADATA)
    fsync_directory(folder)


def _holds_only_partial_copies(folder: Path) -> bool:
    """Whether everything in the folder is a copy a backup run writes before it keeps it (a
    `.partial` file, or the journal of one) where a run writes them: what a first run that
    stopped half-way left, if it left no `backup.json`."""
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if name not in (STORE_FOLDER, f"{STORE_FOLDER}/segments", TABLES_FOLDER):
                return False
        elif name not in RUN_PARTIALS and not (
            name.startswith((f"{STORE_FOLDER}/", f"{TABLES_FOLDER}/"))
            and name.endswith((".partial", ".partial-journal"))
        ):
            return False
    return True


def _check_folder(config: Config, folder: Path) -> None:
    """Refuse a folder that is (or holds, or lies in) the installation's own files, and a
    folder that holds other files and no backup: a backup run deletes what it does not list."""
    if folder.is_symlink() and not folder.exists():
        raise BackupError(f"{folder} is a link to nothing: back up into a folder")
    target = folder.resolve()
    own = [("archive folder", config.archive_dir), ("index folder", config.index_dir),
           ("archive key file", config.key_file)]
    database = sqlite_path(config.active_url)
    if database is not None:
        own.append(("active database", database))
    for label, path in own:
        path = path.resolve()
        if target == path or path.is_relative_to(target) or target.is_relative_to(path):
            raise BackupError(f"{folder} overlaps the installation's {label} ({path}): "
                              "back up into a folder of its own")
    if target.is_dir() and any(target.iterdir()) and not any(
        (target / name).exists() for name in (MANIFEST, METADATA, _OLD_LOCK_FILE)
    ) and not _holds_only_partial_copies(target):
        raise BackupError(f"{folder} holds other files and no backup: back up into an empty "
                          "folder or an earlier backup")


_OLD_LOCK_FILE = ".backup.lock"  # where earlier versions locked a folder: not in MANIFEST


@contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """One `backup create` at a time per folder: two would mix their files. The folder itself
    is locked, so that it holds nothing its MANIFEST does not list."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup is being written into {folder}") from None
        (folder / _OLD_LOCK_FILE).unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _create(services: Services, folder: Path, at: datetime) -> BackupReport:
    previous = load_manifest(folder)
    (folder / MANIFEST).unlink(missing_ok=True)
    run = _start_run(services, at)
    tally = CopyTally()
    database = whole_file_database(services.config)
    try:
        fresh_active = folder / (ACTIVE_DB + ".partial")
        with services.store.settling():  # no move under way: active + catalog agree
            snapshot = take_store_snapshot(
                services.store, folder / STORE_FOLDER / "catalog.db.partial"
            )
            try:
                if database is not None:
                    copy_sqlite(database, fresh_active)
                else:
                    table_files, active = _dump_tables(services, folder)
            except BaseException:
                snapshot.close()
                raise
        with snapshot_closing(snapshot):
            head = snapshot.head()
            if previous and not snapshot.descends_from(_previous_head(folder)):
                previous = {}  # another history (a recovered store, another archive): copy all
            write_store_part(snapshot, folder, previous, tally)
        if database is not None:
            keep_if_changed(folder, ACTIVE_DB, fresh_active, previous, tally)
            active = _count_active_copy(folder / ACTIVE_DB)
        else:
            for name, fresh in table_files.items():
                keep_if_changed(folder, name, fresh, previous, tally)
        metadata = {
            "format": FORMAT,
            "created_at": format_utc(at),
            "active_database": "sqlite" if database is not None else "tables",
            "active": active,
            "archived": snapshot.archived,
            "catalog_head": head,  # the next run checks that the store goes on from here
        }
        fresh_metadata = folder / (METADATA + ".partial")
        with open_private(fresh_metadata, "w") as f:
            f.write(json.dumps(metadata, indent=2) + "\n")
        # renamed over, never written in place: a hard-linked older backup keeps its own
        os.replace(fresh_metadata, folder / METADATA)
        tally.hashes[METADATA] = hash_file(folder / METADATA)
        write_manifest(folder, tally.hashes)
        remove_unlisted(folder, set(tally.hashes))
        make_private(folder)
    except BaseException as e:
        _finish_run(services, run, f"{type(e).__name__}: {e}")
        raise
    _finish_run(services, run, None, records=active + snapshot.archived)
    return BackupReport(active + snapshot.archived, tally.files, tally.bytes, active,
                        snapshot.archived)


def verify_backup(folder: Path, key: bytes | None) -> list[str]:
    """Every problem of a backup folder, one line each: files against the manifest, then the
    backed-up archive's checksums and hash chain. Empty when the backup is sound.

    :param folder: the backup folder
    :param key: the archive key, to open the sealed frames (never in a backup); None for an
        archive kept without encryption
    """
    folder = Path(folder)
    problems = check_manifest(folder)
    if any(p.startswith(f"missing: {MANIFEST}") for p in problems):
        return problems
    listed = load_manifest(folder)
    if f"{STORE_FOLDER}/catalog.db" not in listed:
        problems.append(f"missing: {STORE_FOLDER}/catalog.db is not in the manifest")
    try:
        kind = load_metadata(folder).get("active_database")
    except BackupDamaged as e:
        problems.append(str(e))
        kind = None
    # what recovery needs of the active side, for the database the backup says it holds
    needed: list[str] = []
    if kind == "sqlite":
        needed = [ACTIVE_DB]
    elif kind == "tables":
        needed = [f"{TABLES_FOLDER}/{name}.jsonl" for name in ALWAYS_TABLES]
    problems.extend(f"missing: {name} is not in the manifest" for name in needed
                    if name not in listed)
    for problem in verify_store_copy(folder, key):
        where = f"record {problem.record_id}: " if problem.record_id else ""
        problems.append(f"archive: {where}{problem.reason}")
    if (folder / ACTIVE_DB).is_file():
        problems.extend(f"{ACTIVE_DB}: {p}" for p in _audit_chain_problems(folder / ACTIVE_DB))
    return problems


def _audit_chain_problems(path: Path) -> list[str]:
    """Breaks in the backed-up audit log's hash chain (read-only; the file is not changed)."""
    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        if not inspect(engine).has_table(AuditEntry.__tablename__):
            return []
        with Session(engine) as session:
            return list(iter_chain_problems(session))
    except SQLAlchemyError as e:
        return [f"cannot be read: {e}"]
    finally:
        engine.dispose()


def load_metadata(folder: Path) -> dict[str, Any]:
    """The backup's `backup.json`."""
    try:
        value: dict[str, Any] = json.loads((Path(folder) / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BackupDamaged(f"{folder}: {METADATA} cannot be read: {e}") from None
    return value


def recover_backup(
    config: Config, folder: Path, at: datetime, *, force: bool = False, actor: str = "cli"
) -> RecoverReport:
    """Make the installation of `config` what the backup in `folder` holds.

    Refused if the backup does not verify, or if the installation holds records already (unless
    `force`). The server and the worker must be stopped. Afterwards: the store and the active
    database as backed up, moves a crash left pending settled, and the index rebuilt. A
    recovery that stopped after it began to replace the installation (its `RECOVERING` file
    says so; nothing else opens the installation then) is done again whole, without refusal.

    :param config: the installation to recover into
    :param folder: the backup folder
    :param at: the time stamped on whatever reconcile settles
    :param force: replace an installation that holds records
    :param actor: who recovers, in the audit log of the recovered installation
    """
    folder = Path(folder)
    if not os.environ.get(KEY_ENV) and not config.key_file.exists():
        raise KeyMissing(  # (not `init`: a new key would not open the backup)
            f"recovering needs the archive key the backup was made with: copy it to "
            f"{config.key_file}, with its erasure ledger beside it, or give {KEY_ENV}"
        )
    problems = verify_backup(folder, load_key(config.key_file, os.environ.get(KEY_ENV)))
    if problems:
        raise BackupDamaged(f"backup {folder} does not verify: {problems[0]}"
                            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    metadata = load_metadata(folder)
    # The file is replaced only by a copy of a whole embedded database; otherwise Archivist's
    # own tables are loaded from the backup (its `tables/`, or its copy of such a file).
    database = whole_file_database(config)
    if metadata.get("active_database") != "sqlite":
        database = None
    if config.tables and metadata.get("active"):
        raise BackupError(
            f"this backup holds {metadata['active']} active records of Archivist's own table; "
            "this installation maps the CRM's own tables ([[active.table]]): recover it into "
            "an installation without them"
        )
    with recovering_alone(config.archive_dir):
        return _recover(config, folder, metadata, database, at, force, actor)


def _recover(
    config: Config, folder: Path, metadata: dict[str, Any], database: Path | None,
    at: datetime, force: bool, actor: str,
) -> RecoverReport:
    """`recover_backup` once the backup verified, holding the recovery lock."""
    # A run that stopped half-way left the installation partly replaced: this one replaces it
    # all again, whatever it holds, and reports the CRM rows that run found lost (from the
    # same backup; another one is a choice of its own, and what it loses cannot be counted
    # any more: the live ledger may be the first backup's by now).
    earlier = interrupted_recovery(config.archive_dir)
    if earlier is None:
        lost = _refuse_unless_empty(config, folder, force, loads_tables=database is None)
    elif earlier["backup"] == str(folder.resolve()):
        lost = int(str(earlier.get("crm_rows_lost") or 0))
    elif not force:
        raise BackupError(
            f"a recovery from the backup {earlier['backup']} stopped half-way: run it again "
            f"with that backup, or pass --force to recover {folder} instead (with the CRM's "
            "tables mapped, the rows that loses are not counted then)"
        )
    else:
        lost = 0
        log.warning("recovering %s over a recovery from %s that stopped half-way",
                    folder, earlier["backup"])
    # Every byte is copied before anything of the installation is replaced: a full disk fails
    # the recovery here and leaves the installation as it was.
    staged = stage_store(folder, config.archive_dir, set(load_manifest(folder)))
    staged_database = None if database is None else staged_copy(database)
    try:
        if staged_database is not None:
            staged_database.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / ACTIVE_DB, staged_database)
            staged_database.chmod(0o600)
            with open(staged_database, "rb+") as f:
                os.fsync(f.fileno())
        # From here on the installation is replaced: until the erasure and revocation ledgers
        # are applied again below, only a recovery may open it.
        mark_recovering(config.archive_dir, folder, crm_rows_lost=lost)
        if staged_database is None:
            with Services.open(config, recovering=True) as services:
                # one transaction: all rows or none
                _load_tables(services, folder, metadata.get("active_database") == "sqlite")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        if staged_database is not None:
            staged_database.unlink(missing_ok=True)
        if earlier is None:  # (nothing was replaced: `_load_tables` is all or nothing)
            end_recovering(config.archive_dir)
        raise
    install_staged_store(staged, config.archive_dir)
    if database is not None and staged_database is not None:
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(database) + suffix).unlink(missing_ok=True)  # a stale WAL would replay
        os.replace(staged_database, database)
        fsync_directory(database.parent)
    crash_point("recover.installed")
    with Services.open(config, create=True, recovering=True) as services:
        with services.sessions.begin() as session:
            session.execute(delete(Lease))
            # the recovered catalog's end is the store's now (see archivist.archive_head)
            set_archive_head(session, services.store.last_seq())
        reconcile_pending(services.sessions, services.store, at)
        # What was erased after the backup was taken stays erased: the ledger lives beside the
        # key file, outside every backup. Before the rebuild, so its text never reaches the index.
        erasures = ledger_path(config.key_file)
        missing_ledger = None if erasures.exists() else erasures
        apply_erasure_ledger(services, at)
        if services.crm is not None:
            mark_live_crm_rows_restored(services, at)
        with services.sessions.begin() as session:
            # Tokens revoked since the backup stay revoked; every browser signs in again (a
            # session signed out since would otherwise be live again).
            revocations = revocation_ledger_path(config.key_file)
            missing_revocations = None if revocations.exists() else revocations
            apply_revocation_ledger(session, revocations, at)
            session.execute(delete(WebSession))
        counts = services.store.counts()
        with services.read_sessions.begin() as session:  # as `stats` counts them
            active = (count_active(session) if services.crm is None
                      else count_crm_rows(session, services.crm))
        # Audited before the installation is whole again, so that a recovery is on record
        # even if the index rebuild below is killed.
        details = {"backup_created_at": str(metadata.get("created_at")), "active": active,
                   "archived": counts["archived"], "force": force, "crm_rows_lost": lost,
                   "erasure_ledger_found": missing_ledger is None,
                   "revocation_ledger_found": missing_revocations is None}
        write_audit(services.sessions, [
            AuditEvent(utcnow(), actor, "recover", str(folder.absolute()), "ok", details)
        ])
        # Whole again: an index rebuild that fails or is killed is done again by
        # `archivist index --rebuild`, from a store nothing erased is back in.
        end_recovering(config.archive_dir)
        crash_point("recover.before_index")
        indexed = rebuild_index(services.store, services.index)
    return RecoverReport(
        active, counts["archived"], indexed, str(metadata.get("created_at")), lost,
        missing_ledger, missing_revocations,
    )


def _refuse_unless_empty(config: Config, folder: Path, force: bool, *, loads_tables: bool) -> int:
    """Refuse to replace an installation that holds records, and (with the CRM's tables
    mapped) one whose CRM rows the backup would lose, unless `force`; returns how many CRM
    rows a forced recovery loses.

    :param loads_tables: the recovery loads the backup's tables through the installation
        (rather than putting a whole SQLite file in place)
    """
    # (an installation `init` made before the backup's key was copied in holds nothing sealed
    # with its own key: it takes the backup's)
    try:
        services = Services.open(config, create=True, take_key_if_empty=True, recovering=True)
    except WrongKey as e:
        # Its archive is sealed with another key than the backup's (which the key file now
        # holds): it cannot be counted, only replaced.
        if not force:
            raise InstallationNotEmpty(
                f"the installation of {config.path} holds an archive sealed with another key "
                f"than the backup's ({e}): recover into an empty one, or pass --force to "
                "replace it"
            ) from None
        if loads_tables or config.tables:
            # The backup's tables are loaded, or the CRM's rows counted, through the
            # installation, which this key cannot open.
            raise BackupError(
                f"the archive in {config.archive_dir} is sealed with another key than the "
                "backup's, and its active database is read through it: move that folder "
                "away first, then recover"
            ) from None
        log.warning("recovery forced over an archive sealed with another key: %s", e)
        return 0
    with services:
        counts = services.store.counts()
        held = counts["archived"] + counts["restored"] + counts["purged"] + counts["erased"]
        with services.read_sessions.begin() as session:
            active = count_active(session)  # (the CRM's rows, if mapped, are not replaced)
        lost = []
        if services.crm is not None:
            lost = crm_rows_lost_by(services, folder)
        if (held or active) and not force:
            noun = "record" if active == 1 else "records"
            holds = "" if services.crm is not None else f"{active} active {noun} and "
            raise InstallationNotEmpty(
                f"the installation of {config.path} already holds {holds}"
                f"{held} in its archive ({counts['archived']} archived, {counts['restored']} "
                f"restored, {counts['purged']} purged, {counts['erased']} erased)"
                + (f"; and {describe_lost_crm_rows(lost)}" if lost else "")
                + ": recover into an empty one, or pass --force to replace them"
                + (" and lose those rows" if lost else "")
            )
        if lost and not force:
            raise BackupError(
                f"{describe_lost_crm_rows(lost)}: recover a newer backup, or pass --force to "
                "accept losing them"
            )
        if lost:
            log.warning("recovery forced: %s", describe_lost_crm_rows(lost))
        return len(lost)


def last_backup(services: Services) -> JobRun | None:
    """The most recent backup that finished without error, if any."""
    with services.read_sessions.begin() as session:
        stmt = (
            select(JobRun)
            .where(JobRun.job == JOB, JobRun.finished_at.is_not(None), JobRun.error.is_(None))
            .order_by(JobRun.id.desc())
            .limit(1)
        )
        return session.scalars(stmt).first()


@dataclass(frozen=True)
class BackupStatus:
    """What the admin page says about backups: the last one, and whether it is too old."""

    last_finished_at: datetime | None
    last_records: int
    max_age_days: int
    overdue: bool


def backup_status(services: Services, now: datetime) -> BackupStatus:
    """The last finished backup and whether none is younger than `[backup] max_age_days`."""
    max_age = services.config.backup.max_age_days
    run = last_backup(services)
    finished = run.finished_at if run is not None else None
    overdue = finished is None or finished < now - timedelta(days=max_age)
    return BackupStatus(finished, run.archived if run is not None else 0, max_age, overdue)


def _start_run(services: Services, at: datetime) -> JobRun:
    with services.sessions.begin() as session:
        run = JobRun(job=JOB, started_at=at, archived=0, purged=0, indexed=0)
        session.add(run)
    return run


def _finish_run(services: Services, run: JobRun, error: str | None, records: int = 0) -> None:
    run.finished_at, run.error, run.archived = utcnow(), error, records
    with services.sessions.begin() as session:
        session.merge(run)


def _count_active_copy(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'active_records'"
        ).fetchone()
        if not row[0]:
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM active_records").fetchone()[0])
    finally:
        conn.close()


def _own_tables(services: Services) -> list[Any]:
    register_all_tables()
    present = set(inspect(services.engine).get_table_names())
    return [t for t in Base.metadata.sorted_tables if t.name in OWN_TABLES and t.name in present]


def _dump_tables(services: Services, folder: Path) -> tuple[dict[str, Path], int]:
    """Write each of Archivist's own tables as JSON Lines (`.partial` files) from one snapshot;
    returns them and how many active records they hold."""
    (folder / TABLES_FOLDER).mkdir(mode=0o700, exist_ok=True)
    written: dict[str, Path] = {}
    active = 0
    with services.read_sessions.begin() as session:
        if services.engine.dialect.name == "postgresql":  # every table as of one moment
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        for table in _own_tables(services):
            fresh = folder / TABLES_FOLDER / f"{table.name}.jsonl.partial"
            query = select(table).order_by(*table.primary_key.columns)
            with open_private(fresh, "w") as f:
                for row in session.execute(query.execution_options(yield_per=_ROWS_PER_BATCH)):
                    values = {
                        key: value.isoformat() if isinstance(value, datetime) else value
                        for key, value in row._mapping.items()
                    }
                    f.write(json.dumps(values, ensure_ascii=False, sort_keys=True) + "\n")
                    active += table.name == ACTIVE_TABLE.name
            written[f"{TABLES_FOLDER}/{table.name}.jsonl"] = fresh
    return written, active


def _load_tables(services: Services, folder: Path, from_copy: bool) -> None:
    """Replace Archivist's own tables with the backed-up rows, in one transaction.

    :param from_copy: read them from the backup's copy of a whole SQLite file (`active.db`),
        not from its `tables/`
    """
    copy = folder / ACTIVE_DB
    source = create_engine(f"sqlite:///file:{copy}?mode=ro&uri=true") if from_copy else None
    try:
        with services.sessions.begin() as session:
            tables = _own_tables(services)
            for table in reversed(tables):
                session.execute(delete(table))
            for table in tables:
                rows: list[dict[str, Any]] = []
                for values in _backed_up_rows(folder, table, source):
                    rows.append(values)
                    if len(rows) >= _ROWS_PER_BATCH:
                        session.execute(table.insert(), rows)
                        rows = []
                if rows:
                    session.execute(table.insert(), rows)
                _advance_sequence(session, table)
    finally:
        if source is not None:
            source.dispose()


def _backed_up_rows(folder: Path, table: Any, source: Engine | None) -> Iterator[dict[str, Any]]:
    """One of Archivist's own tables as the backup holds it: its JSON Lines file, or the
    table in the backup's copy of a whole SQLite file (`source`: one a backup of CRM tables
    in such a file held before it kept Archivist's own tables alone)."""
    if source is not None:
        inspector = inspect(source)
        if inspector.has_table(table.name):
            # a copy an older version made lacks the newer columns: they take their defaults
            present = {column["name"] for column in inspector.get_columns(table.name)}
            columns = [column for column in table.columns if column.name in present]
            with source.connect() as connection:
                for row in connection.execute(select(*columns)):
                    yield dict(row._mapping)
        return
    path = folder / TABLES_FOLDER / f"{table.name}.jsonl"
    if not path.is_file():
        return
    times = {c.name for c in table.columns if isinstance(c.type, UTCDateTime)}
    with open(path, encoding="utf-8") as f:
        for line in f:
            values = json.loads(line)
            for name in times & values.keys():
                if values[name] is not None:
                    values[name] = datetime.fromisoformat(values[name])
            yield values


def _advance_sequence(session: Session, table: Any) -> None:
    """On PostgreSQL, move a serial key's sequence past the rows inserted with their ids."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for column in table.primary_key.columns:
        if column.autoincrement is True or (
            column.autoincrement == "auto" and column.type.python_type is int
        ):
            session.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                    f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"
                )
            )
