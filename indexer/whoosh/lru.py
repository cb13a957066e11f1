"""A thread-safe least-recently-used cache with a budget (bytes, or entries)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class SizedLru(Generic[V]):
    """Keeps values while their summed sizes fit the budget, dropping the least recently used.

    A value larger than a quarter of the budget is not kept: it would push out everything else.
    """

    def __init__(self, budget: int, size_of: Callable[[V], int] = lambda _v: 1) -> None:
        """:param budget: the most the kept values may add up to, in ``size_of`` units.
        :param size_of: a value's size (default: 1, so the budget counts entries)."""
        self.budget = budget
        self.used = 0
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """Return the kept value, or None."""
        with self._lock:
            got = self._entries.get(key)
            if got is None:
                return None
            self._entries.move_to_end(key)
            return got[0]

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """Return the kept value, or ``make()``'s, kept (made outside the lock)."""
        got = self.get(key)
        if got is None:
            got = make()
            self.put(key, got)
        return got

    def put(self, key: Hashable, value: V) -> None:
        """Keep a value unless it is too large (a key kept already keeps its value)."""
        size = self._size_of(value)
        if size > self.budget // 4:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                _key, (_old, old_size) = self._entries.popitem(last=False)
                self.used -= old_size

    def drop(self, stale: Callable[[Any], bool]) -> int:
        """Drop every entry whose key is ``stale``; returns how many (a scan of every key)."""
        with self._lock:
            gone = [key for key in self._entries if stale(key)]
            for key in gone:
                self.used -= self._entries.pop(key)[1]
        return len(gone)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._entries)
