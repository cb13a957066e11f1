"""The long-lived parts one process works with: database, sessions, archive store, index."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.active_db import create_schema, make_engine, make_read_sessions, make_sessions
from archivist.config import Config
from indexer.whoosh.index import SearchIndex


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

    @classmethod
    def open(cls, config: Config, *, create: bool = False) -> Services:
        """Open the active database, the archive store and the index named in the config.

        :param create: create missing tables and folders (what `archivist init` does).
        """
        engine = make_engine(config.active_url)
        if create:
            create_schema(engine)
        store = ArchiveStore.open(config.archive_dir, segment_max_bytes=config.segment_max_bytes)
        index = SearchIndex.open(
            config.index_dir,
            shard_period=config.shard_period,
            worker_nice=config.index_worker_nice,
        )
        sessions, read_sessions = make_sessions(engine), make_read_sessions(engine)
        return cls(config, engine, sessions, store, index, read_sessions)

    def close(self) -> None:
        """Release files and connections."""
        self.index.close()
        self.store.close()
        self.engine.dispose()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
