"""A queue for the writers of one SQLite file, across threads and processes.

SQLite lets one writer in at a time; the others poll in its busy handler, sleeping 1, 2, 5,
10, 15, 20, 25, ... 100 ms between tries. With a few writers at once (each server process's
audit log, a restore, the worker's batch), a one-row write could wait 50 ms or more for a lock
that was free after 2. Here a writer first takes a lock of its own: a thread lock, then flock
on a file beside the database. The kernel wakes the next writer as soon as the lock is given
back, and SQLite's write lock, taken right after, is then free.

Only transactions that begin ``IMMEDIATE`` (every transaction that may write) queue; readers
never do. Other programs writing the same file are not held up: they meet SQLite's lock as
before, and ours wait for them in the busy handler.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

WAIT_SECONDS = 60.0  # as long as the busy timeout: then "database is locked", as SQLite says


class WriterQueue:
    """One writer at a time per database file. Any thread may release it (a connection may
    be closed by another thread than the one that began its transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid = os.getpid()
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def acquire(self) -> None:
        """Wait for our turn to write (up to ``WAIT_SECONDS`` within this process)."""
        if self._pid != os.getpid():  # forked: the parent's lock state is not ours
            self._pid, self._thread_lock, self._fd = os.getpid(), threading.Lock(), None
        if not self._thread_lock.acquire(timeout=WAIT_SECONDS):
            raise sqlite3.OperationalError("database is locked")
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            # Blocking: a process holds it only inside a write transaction, and a dead one
            # lets go with its file descriptor.
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Let the next writer in."""
        if self._pid != os.getpid():
            return  # a turn taken before a fork: the parent gives it back
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


class QueuedConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions take their turn in a `WriterQueue`.

    `begin_write` starts the transaction; `commit`, `rollback` and `close` end the turn.
    """

    queue: WriterQueue  # set on the subclass `connection_factory` makes per database

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writing = False

    def begin_write(self) -> None:
        """Wait for our turn, then ``BEGIN IMMEDIATE``."""
        self.queue.acquire()
        self._writing = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._end_turn()
            raise

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._end_turn()

    def _end_turn(self) -> None:
        if self._writing:
            self._writing = False
            self.queue.release()


def writers_lock_path(database: Path) -> Path:
    """The lock file the writers of `database` queue on (beside it)."""
    return database.with_name(database.name + "-writers.lock")


def connection_factory(database: Path) -> type[QueuedConnection]:
    """A connection class for `sqlite3.connect(factory=...)` queueing writers of `database`."""
    queue = WriterQueue(writers_lock_path(database))
    return type("QueuedConnection", (QueuedConnection,), {"queue": queue})
