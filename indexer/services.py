"""The long-lived parts one process works with: database, sessions, archive store, index."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.active_db import create_schema, make_engine, make_read_sessions, make_sessions
from archivist.config import Config
from indexer.search import SearchEngine


def open_search_engine(config: Config) -> SearchEngine:
    """Open the search engine named by the config: the one place that picks an engine.

    The engine's package is imported here, on first use, so that commands that never search
    (``stats``, ``hold``, ``import``) do not load it.
    """
    from indexer.whoosh.index import SearchIndex

    return SearchIndex.open(
        config.index_dir,
        shard_period=config.shard_period,
        worker_nice=config.index_worker_nice,
    )


@dataclass
class Services:
    """Everything a command, the worker or the web app needs, opened once from a config."""

    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArchiveStore
    read_sessions: sessionmaker[Session]
    """For transactions that only read (see ``make_read_sessions``)."""
    open_index: Callable[[Config], SearchEngine] = open_search_engine
    """How the search engine is opened (tests hold every engine to one suite this way)."""
    _index: SearchEngine | None = None
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        config: Config,
        *,
        create: bool = False,
        open_index: Callable[[Config], SearchEngine] = open_search_engine,
    ) -> Services:
        """Open the active database and the archive store named in the config; the search
        index opens on first use.

        :param create: create missing tables and folders (what `archivist init` does).
        :param open_index: opens the search engine (default: the one the config names).
        """
        engine = make_engine(config.active_url)
        if create:
            create_schema(engine)
        store = ArchiveStore.open(config.archive_dir, segment_max_bytes=config.segment_max_bytes)
        sessions, read_sessions = make_sessions(engine), make_read_sessions(engine)
        services = cls(config, engine, sessions, store, read_sessions, open_index)
        if create:
            services.index  # noqa: B018 (opening it creates its folder)
        return services

    @property
    def index(self) -> SearchEngine:
        """The search engine, opened on first use."""
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = self.open_index(self.config)
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
