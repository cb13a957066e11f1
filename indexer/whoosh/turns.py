"""Searches in one process take turns in arrival order, and step aside for urgent work.

A search holds the GIL for tens of milliseconds, so a process runs one at a time (Whoosh's
searchers also share file positions). ``threading.Lock`` is not fair: under load a search
could wait behind many later ones, which is what a latency's tail is made of. Here each search
waits for its ticket. A restore is urgent: an admin waits on it, and it takes a few
milliseconds of CPU; the running search pauses at its next checkpoint (between shards, between
hits) until the restore is done, instead of sharing the GIL and the core with it. The pause
has a time limit: an urgent block that waits longer (for an archive batch's lock) lets the
searches go on meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """A fair lock for searches, with checkpoints where urgent work goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the next ticket to hand out
        self._serving = 0  # the ticket whose turn it is
        self._abandoned: set[int] = set()
        self._urgent: list[float] = []  # the deadlines of the urgent blocks running

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this caller's turn (in arrival order, after urgent work), then hold it."""
        with self._cond:
            ticket = self._next
            self._next += 1
            try:
                while True:
                    pause = self._pause()
                    if self._serving == ticket and pause is None:
                        break
                    self._cond.wait(pause)
            except BaseException:
                self._abandon(ticket)
                raise
        try:
            yield
        finally:
            with self._cond:
                self._advance()

    def idle(self) -> bool:
        """Whether no search holds a turn or waits for one (read without the lock: a hint)."""
        return self._serving == self._next

    def checkpoint(self) -> None:
        """Called by the search holding the turn: wait here while urgent work runs."""
        if self._urgent:  # read without the lock: the usual case costs nothing
            with self._cond:
                while (pause := self._pause()) is not None:
                    self._cond.wait(pause)

    @contextmanager
    def urgent(self, limit: float = 0.1) -> Iterator[None]:
        """Run a block before any further search step in this process, for up to ``limit``
        seconds; after that, searches go on beside it."""
        deadline = time.monotonic() + limit
        with self._cond:
            self._urgent.append(deadline)
        try:
            yield
        finally:
            with self._cond:
                self._urgent.remove(deadline)
                self._cond.notify_all()

    def _pause(self) -> float | None:
        """How long searches should still wait for urgent work (under the lock); None: not."""
        if not self._urgent:
            return None
        left = max(self._urgent) - time.monotonic()
        return left if left > 0 else None

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    def _abandon(self, ticket: int) -> None:
        if ticket == self._serving:
            self._advance()
        else:
            self._abandoned.add(ticket)
