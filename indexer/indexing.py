"""Keep the search index in step with the archive store, exactly once.

The catalog's `indexed` flag is cleared in the same commit that changes a record's state
(archived, restored, purged), and set again only after the index committed the matching change
for that state and version. A crash in between leaves the flag clear, so the next catch-up
redoes the (idempotent) index change; a state change that happens meanwhile is never masked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archive_store import ArchiveStore, Problem
from archive_store.faults import crash_point
from indexer.index import SearchIndex

CATCH_UP_BATCH = 500  # one batch holds the index lock; restores wait at most that long


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
        # Read, write and mark as one step: a restore or purge in between would otherwise let
        # a stale add put a record that left the archive back into search.
        with store.indexing():
            entries = store.iter_unindexed(batch_size)
            if not entries:
                break
            docs = [
                (known.get(e.record_id) or store.get(e.record_id), e.archived_at)
                for e in entries
                if e.state == "archived"
            ]
            index.add(docs, first_versions=[e.record_id for e in entries if e.version == 1])
            index.delete(e.record_id for e in entries if e.state != "archived")
            crash_point("index.before_mark")
            store.mark_indexed((e.record_id, e.version, e.state) for e in entries)
        done += len(entries)
    return done


def rebuild_index(store: ArchiveStore, index: SearchIndex, *, progress: bool = False) -> int:
    """Build the whole index afresh from the archive store alone, swap it in, then catch up.

    The store is read without holding the move lock, so archiving and restores go on; every
    change after the starting point is marked unindexed once the new index is live, and the
    catch-up applies it there.
    """
    start = store.last_seq()
    total = store.counts()["archived"]
    records = ((record, entry.archived_at) for entry, record in store.iter_records("archived"))
    count = index.rebuild(records, total=total, progress=progress)
    with store.indexing():  # no index change + mark may straddle this reset
        store.mark_rebuilt(start)
    sync_index(store, index)
    return count


def check_index_agreement(store: ArchiveStore, index: SearchIndex) -> tuple[list[Problem], int]:
    """Compare the index with the catalog: same ids, same state.

    Returns the problems and how many archived records still wait for catch-up (not a problem:
    the catalog knows they are not indexed yet).
    """
    indexed = set(index.iter_ids())
    problems: list[Problem] = []
    waiting = 0
    for entry in store.iter_catalog():
        in_index = entry.record_id in indexed
        indexed.discard(entry.record_id)
        if entry.state == "archived" and not in_index:
            if entry.indexed:
                problems.append(
                    Problem(entry.record_id, None, "archived but missing from the index")
                )
            else:
                waiting += 1
        elif entry.state != "archived" and in_index and entry.indexed:
            problems.append(Problem(entry.record_id, None, f"{entry.state} but still in the index"))
    for record_id in sorted(indexed):
        problems.append(Problem(record_id, None, "in the index but never archived"))
    return problems, waiting
