"""Keep the search index in step with the archive store, exactly once.

The catalog's `indexed` flag is cleared in the same commit that changes a record's state
(archived, restored, purged), and set again only after the index committed the matching change
for that state and version. A crash in between leaves the flag clear, so the next catch-up
redoes the (idempotent) index change; a state change that happens meanwhile is never masked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archive_store import ArchiveStore
from indexer.index import SearchIndex

CATCH_UP_BATCH = 2000


def sync_index(
    store: ArchiveStore,
    index: SearchIndex,
    *,
    known: Mapping[str, dict[str, Any]] | None = None,
    batch_size: int = CATCH_UP_BATCH,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Apply every pending change to the index; returns how many records it indexed or removed.

    :param known: record JSON values the caller already holds (a batch it just archived), so
        they need not be read back from the store.
    """
    known = known or {}
    done = 0
    while not should_stop():
        entries = store.iter_unindexed(batch_size)
        if not entries:
            break
        add = [e for e in entries if e.state == "archived"]
        remove = [e.record_id for e in entries if e.state != "archived"]
        index.add(
            (known[e.record_id] if e.record_id in known else store.get(e.record_id), e.archived_at)
            for e in add
        )
        index.delete(remove)
        store.mark_indexed((e.record_id, e.version, e.state) for e in entries)
        done += len(entries)
    return done


def rebuild_index(store: ArchiveStore, index: SearchIndex, *, progress: bool = False) -> int:
    """Build the whole index afresh from the archive store alone, then swap it in."""
    total = store.counts()["archived"]
    records = ((record, entry.archived_at) for entry, record in store.iter_records("archived"))
    count = index.rebuild(records, total=total, progress=progress)
    store.mark_all_indexed()
    return count
