"""What one state of the index looks like to searches: its shards' searchers and statistics,
and the change stamps that tell when to open a new one."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from indexer.whoosh.shards import GlobalStats, ShardView


def write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Replace a small file whole (CURRENT, META, STAMP): readers see the old text or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def stat_key(path: Path) -> str | None:
    """Return a change stamp file's text (None if missing), to tell whether the index changed."""
    # Content, not mtime: two commits within the file system's timestamp granularity would
    # otherwise look like one.
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None



class Snapshot:
    """Searchers and caches for one state of the index.

    ``partial`` names the shards whose searcher leaves out segments added since ``pending``
    (a monotonic time), or that are left out themselves (see ``SearchIndex.keep_fresh``).
    """

    def __init__(
        self,
        gen: Path,
        key: tuple[Any, ...],
        views: list[ShardView],
        partial: frozenset[str] = frozenset(),
        pending: float | None = None,
    ) -> None:
        self.gen = gen
        self.key = key
        self.views = views
        self.stats = GlobalStats([v.cache for v in views])
        self.partial = partial
        self.pending = pending if partial else None
