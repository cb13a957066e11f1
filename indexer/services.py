"""The long-lived parts one process works with: database, sessions, archive store, index."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore, RecordNotFound
from archive_store.backup import (
    RecoveryInterrupted,
    discard_stale_staging,
    interrupted_recovery,
)
from archive_store.crypto import KEY_ENV, KeyMissing, load_key, make_key_file
from archive_store.errors import CatalogBehind
from archivist.active_db import (
    create_schema,
    find_archive_traces,
    make_engine,
    make_read_sessions,
    make_sessions,
    sqlite_path,
    upgrade_schema,
)
from archivist.archive_head import recorded_archive_head
from archivist.config import Config
from archivist.crm_rows import CrmTables, ForeignKeyRef, inspect_foreign_keys, open_crm_tables
from archivist.errors import ArchiveMissing, ConfigError, NotInitialised
from indexer.errors import CrmTablesChanged, IndexerError, IndexMissing, IndexUnavailable
from indexer.search import SearchEngine

OpenIndex = Callable[[Config, ArchiveStore, bool], SearchEngine]
"""Opens a search engine for an installation: (config, its store, broken_ok)."""


def make_text_source(store: ArchiveStore) -> Callable[[str], tuple[str, str] | None]:
    """Where search hits read a record's subject and body: the encrypted archive store, so
    that the index keeps no record text in stored fields (one seek per hit)."""

    def load_texts(record_id: str) -> tuple[str, str] | None:
        try:
            record = store.get(record_id)
        except RecordNotFound:  # purged or erased meanwhile: no text
            return None
        # a damaged or missing segment raises (`SegmentCorrupt`): a blank hit or export row
        # would pass for the record's real text
        return str(record.get("subject") or ""), str(record.get("body") or "")

    return load_texts


def make_texts_source(store: ArchiveStore) -> Callable[[list[str]], dict[str, tuple[str, str]]]:
    """`make_text_source` for many hits at once (an export): each segment file is opened
    once and read in file order; records purged or erased meanwhile are left out, a damaged
    or missing segment raises as for one."""

    def load_many(record_ids: list[str]) -> dict[str, tuple[str, str]]:
        return {
            record_id: (str(record.get("subject") or ""), str(record.get("body") or ""))
            for record_id, record in store.get_many(record_ids).items()
        }

    return load_many


def search_index_exists(config: Config) -> bool:
    """Whether the configured index folder holds an index (`verify` looks before opening
    one: opening makes an empty index where there is none)."""
    from indexer.whoosh.index import SearchIndex

    return SearchIndex.exists_in(config.index_dir)


def open_search_engine(
    config: Config, store: ArchiveStore, broken_ok: bool = False
) -> SearchEngine:
    """Open the search engine named by the config: the one place that picks an engine.

    The engine's package is imported here, on first use, so that commands that never search
    (``stats``, ``hold``, ``import``) do not load it.

    :param store: where hits read their text (the index keeps none in plain text)
    :param broken_ok: an index that cannot be opened is left unopened rather than refused
        (for `verify`, which reports it): every use of it raises the reason; a missing one
        is made empty (for `index --rebuild`).
    :raises IndexMissing: the folder holds no index while the catalog says records are in one
    """
    from indexer.whoosh.index import SearchIndex

    if not broken_ok and not search_index_exists(config):
        indexed = store.counts()["indexed"]
        if indexed:  # an empty index made here would answer every search with nothing
            raise IndexMissing(
                f"there is no index in {config.index_dir}, yet {indexed} archived records "
                "were indexed (a folder deleted, or a volume not mounted): mount or restore "
                "it, or run `archivist index --rebuild`"
            )
    try:
        index = SearchIndex.open(
            config.index_dir,
            shard_period=config.shard_period,
            worker_nice=config.index_worker_nice,
            store_text=False,
        )
    except IndexUnavailable:
        if not broken_ok:
            raise
        index = SearchIndex(
            config.index_dir, config.shard_period, config.index_worker_nice, store_text=False
        )
    index.text_source = make_text_source(store)
    index.texts_source = make_texts_source(store)
    return index



def _keep_private(folder: Path) -> None:
    """The archive or index folder readable by its owner alone (0700): the index holds the
    records' words and addresses in plain text, and a lock file another account could open
    would let it stall every erasure. Made so if it was made with the umask's mode (by an
    earlier version, or by the engine that made it); a missing folder stays missing (a lost
    index is not made again, empty), another owner's or a read-only one stays as it is.

    :param folder: the folder
    """
    with contextlib.suppress(OSError):
        seen = folder.stat()
        if seen.st_mode & 0o077 and seen.st_uid == os.geteuid():
            folder.chmod(seen.st_mode & 0o700)


def refuse_catalog_behind(engine: Engine, archive_dir: Path) -> None:
    """Refuse an archive whose catalog ends before the newest entry an archive run saw it
    commit (see `archivist.archive_head`), before the store is opened: opening it would take
    the segment data of the lost writes for a crashed writer's leftovers and delete it.

    :raises CatalogBehind: naming both ends and what to do
    """
    head = ArchiveStore.committed_head_in(archive_dir)
    if head is None:
        return
    with engine.connect() as connection:
        seen = recorded_archive_head(connection)
    if seen > head:
        # Read again: the recorded head never passes the catalog's end, so one read after it
        # is behind only if the catalog lost writes, not because a run committed meanwhile.
        head = ArchiveStore.committed_head_in(archive_dir) or 0
    if seen > head:
        raise CatalogBehind(
            f"the archive catalog {archive_dir / 'catalog.db'} ends at entry {head}, but an "
            f"archive run committed entry {seen} to it before deleting those records from the "
            "active database: the catalog has lost its latest writes (its catalog.db-wal file "
            "deleted, or an older copy of catalog.db put back), and the records of those "
            "writes are in neither place. Nothing was changed: put the lost file back, or "
            "recover the archive from a backup (`archivist backup recover DIR --force`)"
        )


def count_indexed_documents(config: Config) -> int:
    """How many records the configured index holds, 0 if it holds none or cannot be read
    (it is not made where there is none)."""
    from indexer.whoosh.index import SearchIndex

    if not search_index_exists(config):
        return 0
    try:
        index = SearchIndex.open(config.index_dir, store_text=False)
    except IndexerError:
        return 0
    try:
        return index.doc_count()
    except IndexerError:
        return 0
    finally:
        index.close()


def refuse_a_missing_archive(config: Config, engine: Engine) -> None:
    """Refuse to go on without an archive catalog where records were archived before: the
    index holds documents, or the active database remembers archive runs. A folder deleted
    or a volume not mounted would otherwise be taken for a new installation, and what is
    archived next would be hidden once the real archive is back.

    :raises ArchiveMissing: with what says an archive was there
    """
    indexed = count_indexed_documents(config)
    trace = (
        f"the index in {config.index_dir} holds {indexed} archived records" if indexed
        else find_archive_traces(engine)
    )
    if trace is not None:
        raise ArchiveMissing(
            f"there is no archive in {config.archive_dir}, yet {trace} (a folder deleted, or "
            "a volume not mounted): mount or restore it (`archivist backup recover`); "
            "nothing was created there"
        )


def _open_crm_tables(
    engine: Engine, config: Config, *, refs: bool = True
) -> tuple[CrmTables | None, tuple[ForeignKeyRef, ...]]:
    """The CRM's mapped tables, checked against the live database (none when not mapped),
    and with `refs` the foreign keys onto them from outside the mapping."""
    if not config.tables:
        return None, ()
    with engine.connect() as connection:
        crm = open_crm_tables(connection, config.tables)
        return crm, tuple(inspect_foreign_keys(connection, crm)) if refs else ()


@dataclass
class Services:
    """Everything a command, the worker or the web app needs, opened once from a config."""

    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArchiveStore
    read_sessions: sessionmaker[Session]
    """For transactions that only read (see ``make_read_sessions``)."""
    open_index: OpenIndex = open_search_engine
    """How the search engine is opened (tests hold every engine to one suite this way)."""
    broken_index_ok: bool = False
    crm: CrmTables | None = None
    """The CRM's own tables, when `[[active.table]]` maps them, as they were at open (moves
    use `reflect_crm`: the CRM may change its tables while a worker or server runs)."""
    _index: SearchEngine | None = None
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        create: bool = False,
        broken_index_ok: bool = False,
        open_index: OpenIndex = open_search_engine,
        take_key_if_empty: bool = False,
        recovering: bool = False,
    ) -> Services:
        """Open the active database and the archive store named in the config; the search
        index opens on first use.

        :param create: create missing tables and folders, and the archive key file (what
            `archivist init` does).
        :param broken_index_ok: an index that cannot be opened is left unopened rather than
            refused (for `verify`, which reports it): every use of it raises the reason.
        :param open_index: opens the search engine (default: the one the config names).
        :param take_key_if_empty: an archive that holds no entry yet takes the key given even
            if `init` made it with another (a recovery is about to replace it anyway).
        :param recovering: opened by `backup recover`, which may find its own interrupted run.
        :raises KeyMissing, WrongKey: before anything is written.
        :raises RecoveryInterrupted: a recovery began to replace the installation and did not
            finish; only `backup recover` may open it.
        """
        stopped = None if recovering else interrupted_recovery(config.archive_dir)
        if stopped is not None:
            source = stopped["backup"]
            raise RecoveryInterrupted(
                f"a recovery from the backup {source} stopped half-way: the installation in "
                f"{config.archive_dir} is partly replaced; run `archivist backup recover "
                f"{source} --config {config.path}` again to finish it"
            )
        database = sqlite_path(config.active_url)
        if not (create or recovering) and database is not None and not database.exists():
            # (connecting would make an empty one, and then fail on the tables it lacks)
            raise NotInitialised(
                f"no active database at {database}: check [active] url, or run "
                "`archivist init` first"
            )
        engine = make_engine(config.active_url, create=create)
        if not recovering:
            discard_stale_staging(config.archive_dir, database)
        try:
            if create:  # an unreachable database: refused before any folder or key is made
                engine.connect().close()
            crm, _ = _open_crm_tables(engine, config, refs=False)  # a bad mapping: first
            if not ArchiveStore.exists_in(config.archive_dir):
                if not recovering:  # (a recovery puts the archive back from a backup)
                    refuse_a_missing_archive(config, engine)
                if not create:
                    raise NotInitialised(
                        f"no archive in {config.archive_dir}: run `archivist init` first"
                    )
            env_key = os.environ.get(KEY_ENV)
            if not env_key and not config.key_file.exists() and (
                ArchiveStore.is_encrypted_in(config.archive_dir)
            ):  # (`init` must not make a new key: it would not open it, yet pass for its own)
                raise KeyMissing(
                    f"the archive in {config.archive_dir} is encrypted and its key file "
                    f"{config.key_file} is missing: put the key back, or give {KEY_ENV}"
                )
            if create and not env_key:
                make_key_file(config.key_file)
            key = load_key(config.key_file, env_key)
            if not recovering:  # (a recovery replaces the catalog, and sets the head anew)
                refuse_catalog_behind(engine, config.archive_dir)
            if create:
                config.archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for folder in (config.archive_dir, config.index_dir):
                _keep_private(folder)
            store = ArchiveStore.open(
                config.archive_dir, segment_max_bytes=config.segment_max_bytes, key=key,
                take_key_if_empty=take_key_if_empty,
            )
        except BaseException:
            engine.dispose()
            raise
        if create:
            create_schema(engine)
        else:
            upgrade_schema(engine)  # a database from before `parent_id` gains the column
        sessions, read_sessions = make_sessions(engine), make_read_sessions(engine)
        services = cls(
            config, engine, sessions, store, read_sessions, open_index, broken_index_ok
        )
        services.crm = crm
        if create:
            try:
                services.index  # noqa: B018 (opening it creates its folder)
            except BaseException:
                services.close()
                raise
            _keep_private(config.index_dir)
        return services

    def reflect_crm(
        self, *, refs: bool = False
    ) -> tuple[CrmTables | None, tuple[ForeignKeyRef, ...]]:
        """The CRM's mapped tables as the database has them now, checked against the mapping
        again, and with `refs` the foreign keys onto them from outside the mapping: what an
        archive run or a restore works from, so that a column or a referencing table the CRM
        added after these services opened is neither lost nor cascaded into.

        :raises ConfigError: the mapping no longer fits the tables (a table or column gone).
        """
        return _open_crm_tables(self.engine, self.config, refs=refs)

    def crm_tables_now(self) -> CrmTables:
        """The CRM's mapped tables as they are now (see `reflect_crm`), for a job that moves
        rows; only with `[[active.table]]`.

        :raises CrmTablesChanged: the mapping no longer fits the tables
        """
        try:
            crm, _ = self.reflect_crm()
        except ConfigError as e:
            raise CrmTablesChanged(f"the CRM's tables no longer fit the mapping: {e}") from None
        assert crm is not None, "not an installation on the CRM's own tables"
        return crm

    @property
    def index(self) -> SearchEngine:
        """The search engine, opened on first use."""
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = self.open_index(self.config, self.store, self.broken_index_ok)
        return self._index

    def close(self) -> None:
        """Release files and connections."""
        if self._index is not None:
            self._index.close()
        self.store.close()
        self.engine.dispose()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
