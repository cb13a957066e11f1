"""What one state of the index looks like to searches: its shards' searchers and statistics,
and the change stamps that tell when to open a new one."""

from __future__ import annotations

import fcntl
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
        with open(path, encoding="utf-8", errors="replace") as fh:  # damage: seen elsewhere
            return fh.read()
    except FileNotFoundError:
        return None


class GenerationHolds:
    """This process's shared flocks on the generations it searches (``<gen>/HOLD``).

    A rebuild swaps CURRENT, but processes with searchers on the previous generation may still
    open its shards' files until they refresh, so it cannot simply be deleted. Each process
    holds the generation its searchers use and lets go when it moves on; a generation that is
    not CURRENT is deleted by whoever then finds nobody holding it (see
    ``SearchIndex._remove_unused_generations``), so the index's disk use doubles only while
    some process still reads the old one. (Files already open survive the unlink on Linux.)
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def take(self, gen: Path, *, new: bool = False) -> bool:
        """Hold ``gen``; False if it is gone (deleted since CURRENT was read).

        :param new: ``gen`` was just created by this process (it has no META yet).
        """
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to keep
            self._fds, self._pid = {}, os.getpid()
        if str(gen) in self._fds:
            return True
        try:
            fd = os.open(gen / "HOLD", os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            return False
        except OSError:  # a read-only index folder: nobody can delete it either
            return True
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a deleter holds it
        # Deleted while we waited? (A new one has no META yet: then its HOLD file is unlinked.)
        gone = os.fstat(fd).st_nlink == 0 if new else not (gen / "META").exists()
        if gone:
            os.close(fd)
            return False
        self._fds[str(gen)] = fd
        return True

    def holds(self, gen: Path) -> bool:
        """Whether this process holds ``gen``."""
        return self._pid == os.getpid() and str(gen) in self._fds

    def release_except(self, keep: Path | None) -> None:
        """Let go of every generation but ``keep``."""
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        for key in [k for k in self._fds if keep is None or k != str(keep)]:
            os.close(self._fds.pop(key))


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
