"""Locks shared by the threads of a process and by processes: a lock file + flock."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType


class ProcessLock:
    """Reentrant within a thread, exclusive across threads and processes.

    Each process opens the lock file once (flock is per open file description, so one
    descriptor per process is what makes threads of the same process exclude each other only
    through the thread lock, and processes through flock).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = os.getpid()

    def __enter__(self) -> ProcessLock:
        self._forget_if_forked()
        self._thread_lock.acquire()
        if self._depth == 0:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    @contextmanager
    def held_if_free(self) -> Iterator[bool]:
        """Hold the lock if nobody else does, never waiting; yields whether it is held."""
        self._forget_if_forked()
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            taken = self._depth > 0 or self._try_flock()
        except BaseException:
            self._thread_lock.release()
            raise
        if not taken:
            self._thread_lock.release()
            yield False
            return
        self._depth += 1
        try:
            yield True
        finally:
            self.__exit__(None, None, None)

    def _try_flock(self) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process holds it
            return False
        return True

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's state is not ours
            self._thread_lock, self._depth, self._fd = threading.RLock(), 0, None
            self._pid = os.getpid()

    def close(self) -> None:
        """Close the lock file (the lock must not be held)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SharedLock:
    """A lock taken shared or exclusive, across threads and processes: flock on a lock file.

    Each hold opens the file afresh: flock belongs to an open file description, so two threads
    of one process then conflict exactly as two processes do. A thread may take the lock again
    in the mode it holds (or shared inside exclusive) without waiting; asking for exclusive
    inside shared would wait for itself, so that raises instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock beside other shared holders; waits while anyone holds it exclusive."""
        with self._hold(fcntl.LOCK_SH):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone; waits for every other holder."""
        with self._hold(fcntl.LOCK_EX):
            yield

    @contextmanager
    def _hold(self, mode: int) -> Iterator[None]:
        held: int | None = getattr(self._held, "mode", None)
        if held is not None:
            if mode == fcntl.LOCK_EX and held == fcntl.LOCK_SH:
                raise RuntimeError(f"{self.path.name}: exclusive asked for while held shared")
            yield
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            self._held.mode = mode
            try:
                yield
            finally:
                self._held.mode = None
        finally:
            os.close(fd)  # lets go of the lock
