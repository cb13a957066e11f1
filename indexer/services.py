"""The long-lived parts one process works with: database, sessions, archive store, index."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore, ArchiveStoreError
from archive_store.crypto import KEY_ENV, load_key, make_key_file
from archivist.active_db import (
    create_schema,
    make_engine,
    make_read_sessions,
    make_sessions,
    upgrade_schema,
)
from archivist.config import Config
from archivist.crm_rows import CrmTables, ForeignKeyRef, inspect_foreign_keys, open_crm_tables
from indexer.errors import IndexUnavailable
from indexer.index import SearchIndex


def make_text_source(store: ArchiveStore) -> Callable[[str], tuple[str, str] | None]:
    """Where search hits read a record's subject and body: the encrypted archive store, so
    that the index keeps no record text in stored fields (one seek per hit)."""

    def load_texts(record_id: str) -> tuple[str, str] | None:
        try:
            record = store.get(record_id)
        except ArchiveStoreError:  # purged, erased or restored meanwhile, or damaged: no text
            return None
        return str(record.get("subject") or ""), str(record.get("body") or "")

    return load_texts


def _open_crm_tables(
    engine: Engine, config: Config
) -> tuple[CrmTables | None, tuple[ForeignKeyRef, ...]]:
    """The CRM's mapped tables, checked against the live database (none when not mapped)."""
    if not config.tables:
        return None, ()
    with engine.connect() as connection:
        crm = open_crm_tables(connection, config.tables)
        return crm, tuple(inspect_foreign_keys(connection, crm))


@dataclass
class Services:
    """Everything a command, the worker or the web app needs, opened once from a config."""

    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArchiveStore
    index: SearchIndex
    read_sessions: sessionmaker[Session]
    """For transactions that only read (see ``make_read_sessions``)."""
    crm: CrmTables | None = None
    """The CRM's own tables, when `[[active.table]]` maps them (checked at open)."""
    crm_refs: tuple[ForeignKeyRef, ...] = ()
    """Foreign keys from outside the mapping onto mapped tables: they block an archive."""

    @classmethod
    def open(
        cls, config: Config, *, create: bool = False, broken_index_ok: bool = False
    ) -> Services:
        """Open the active database, the archive store and the index named in the config.

        :param create: create missing tables and folders, and the archive key file (what
            `archivist init` does).
        :param broken_index_ok: an index that cannot be opened is left unopened rather than
            refused (for `verify`, which reports it): every use of it raises the reason.
        :raises KeyMissing, WrongKey: before anything is written.
        """
        engine = make_engine(config.active_url)
        try:
            crm, crm_refs = _open_crm_tables(engine, config)  # a bad mapping: before all else
            env_key = os.environ.get(KEY_ENV)
            if create and not env_key:
                make_key_file(config.key_file)
            key = load_key(config.key_file, env_key)
            store = ArchiveStore.open(
                config.archive_dir, segment_max_bytes=config.segment_max_bytes, key=key
            )
        except BaseException:
            engine.dispose()
            raise
        if create:
            create_schema(engine)
        else:
            upgrade_schema(engine)  # a database from before `parent_id` gains the column
        try:
            index = SearchIndex.open(
                config.index_dir,
                shard_period=config.shard_period,
                worker_nice=config.index_worker_nice,
                store_text=False,
            )
        except IndexUnavailable:
            if not broken_index_ok:
                store.close()
                raise
            index = SearchIndex(
                config.index_dir, config.shard_period, config.index_worker_nice, store_text=False
            )
        index.text_source = make_text_source(store)
        sessions, read_sessions = make_sessions(engine), make_read_sessions(engine)
        services = cls(config, engine, sessions, store, index, read_sessions)
        services.crm, services.crm_refs = crm, crm_refs
        return services

    def close(self) -> None:
        """Release files and connections."""
        self.index.close()
        self.store.close()
        self.engine.dispose()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
