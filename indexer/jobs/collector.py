"""Pausing Python's cyclic garbage collector for one batch of a bulk job.

A batch keeps thousands of small objects alive until it ends (records, their JSON, catalog
rows). The collector counts every allocation and, while the batch lives, promotes those objects
and scans them again and again; at 100,000 records that scanning took a fifth of an archive
run. The batch's objects are freed by reference counting anyway. Collection resumes when the
batch ends, and a young-generation collection then frees any cycle the batch left, so memory
stays bounded by one batch.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Pauses:
    """How many batches have the collector paused (threads may run batches side by side)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.resume = False  # whether the collector was on when the first pause began


_pauses = _Pauses()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run one batch with the cyclic collector off; it is on again once no batch runs."""
    with _pauses.lock:
        if _pauses.depth == 0:
            _pauses.resume = gc.isenabled()
            gc.disable()
        _pauses.depth += 1
    try:
        yield
    finally:
        with _pauses.lock:
            _pauses.depth -= 1
            if _pauses.depth == 0 and _pauses.resume:
                gc.enable()
                gc.collect(1)
