"""Keep the search index in step with the archive store, exactly once.

The catalog's `indexed` flag is cleared in the same commit that changes a record's state
(archived, restored, purged), and set again only after the index committed the matching change
for that state and version. A crash in between leaves the flag clear, so the next catch-up
redoes the (idempotent) index change; a state change that happens meanwhile is never masked.

Records to add are staged: written as segments with no lock held (by both cores when there
are many), then attached under the lock after checking which are still unchanged. Only
removals (and indexes from before the current schema) are written under the lock. Merging
small segments runs after the lock is released.

A removal only marks a document deleted: its words stay in its segment's files until that is
rewritten. Records purged or erased while segments holding them were written without the lock
(staged) are therefore scrubbed afterwards (`scrub_gone_since`): each segment holding one is
rewritten without it, as an erasure does. A rebuild does the same in its new index before it
swaps it in (`rebuild_index`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from archive_store import ArchiveStore, Problem
from archive_store.errors import RecordNotFound
from archive_store.faults import crash_point
from archive_store.models import CatalogEntry
from indexer.errors import IndexUnavailable
from indexer.processes import with_process_ids
from indexer.search import RebuildReplay, SearchEngine

CATCH_UP_BATCH = 500  # one batch holds the index lock; restores wait at most that long
BULK_MIN = 1  # records to add from which they are staged (SearchIndex.stage)
BULK_PROCESSES = 20_000  # records to stage from which both cores (two processes) write them
BULK_MAX = 20_000  # records staged at once (held in memory, sent to the index workers)
MISSING_FROM_INDEX = "archived but missing from the index"
STILL_IN_INDEX = "but still in the index"  # after the state: "erased but still in the index"
NEVER_ARCHIVED = "in the index but never archived"

log = logging.getLogger(__name__)


def drop_restored(
    store: ArchiveStore, index: SearchEngine, restored: Sequence[dict[str, Any]]
) -> None:
    """Take records a restore has just committed out of search now, not at the next catch-up.

    The restore has happened whatever this meets: if the index cannot be written (its files
    lost, cut, unreadable or read-only), that is logged as a warning (the restore succeeded)
    and the catalog still marks the records unindexed, so the catch-up drops them once the
    index can be written again.

    :param restored: the restored records, as archived (their `created_at` finds their shard)
    """
    try:
        with store.indexing():
            # Read under the lock: a record archived again since its restore (and indexed by
            # a catch-up meanwhile) stays in search.
            entries = store.entries(r["id"] for r in restored)
            gone = [r for r in restored
                    if r["id"] in entries and entries[r["id"]].state != "archived"]
            ids = [r["id"] for r in gone]
            index.delete(ids, current=gone)
            store.mark_indexed((i, entries[i].version, "restored") for i in ids)
    except Exception as e:
        log.warning(
            "%d records restored, but the index cannot be written: %s: %s",
            len(restored), type(e).__name__, str(e),  # (not `e`: its traceback holds open files)
        )


def sync_index(
    store: ArchiveStore,
    index: SearchEngine,
    *,
    known: Mapping[str, dict[str, Any]] | None = None,
    batch_size: int = CATCH_UP_BATCH,
    bulk_min: int = BULK_MIN,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Apply every pending change to the index; returns how many records it indexed or removed.

    With at least ``bulk_min`` records to add (0: never), up to ``BULK_MAX`` of them are first
    written without any lock (:func:`_add_staged`); the rest goes in batches of ``batch_size``,
    each read, written and marked under the index lock.

    :param known: record JSON values the caller already holds (a batch it just archived), so
        they need not be read back from the store.
    """
    known = known or {}
    finish_rebuild(store, index)
    done = 0
    while not should_stop():
        if bulk_min:
            adds = [e for e in store.iter_unindexed(BULK_MAX) if e.state == "archived"]
            if len(adds) >= bulk_min:
                added = _add_staged(store, index, adds, known)
                if added is not None:
                    done += added
                    continue
                bulk_min = 0  # shards from before the current schema: one batch at a time
        # Read, write and mark as one step: a restore or purge in between would otherwise let
        # a stale add put a record that left the archive back into search.
        with store.indexing():
            entries = store.iter_unindexed(batch_size)
            if not entries:
                break
            adding = [e for e in entries if e.state == "archived"]
            records = with_process_ids(
                store, (known.get(e.record_id) or store.get(e.record_id) for e in adding)
            )
            docs = [(record, e.archived_at) for record, e in zip(records, adding, strict=True)]
            index.add(
                docs, first_versions=[e.record_id for e in entries if e.version == 1], merge=False
            )
            index.delete(e.record_id for e in entries if e.state != "archived")
            crash_point("index.before_mark")
            store.mark_indexed((e.record_id, e.version, e.state) for e in entries)
        index.merge_segments()  # outside the store's lock: restores need not wait for it
        done += len(entries)
    return done


def _add_staged(
    store: ArchiveStore,
    index: SearchEngine,
    adds: list[CatalogEntry],
    known: Mapping[str, dict[str, Any]],
) -> int | None:
    """Stage archived records, then attach and mark those still unchanged.

    Staging takes no lock, so restores and purges go on meanwhile. Then, one shard at a time
    under the index lock, a record whose state or version changed since it was read is left
    out (marked deleted in its new segment) and stays unindexed for the next round. Returns
    how many were indexed, or None if the index cannot stage these records.
    """

    def docs() -> Iterator[tuple[dict[str, Any], datetime]]:
        for start in range(0, len(adds), 1000):  # read while the index workers write
            found: list[tuple[dict[str, Any], datetime]] = []
            for e in adds[start : start + 1000]:
                try:
                    found.append((known.get(e.record_id) or store.get(e.record_id), e.archived_at))
                except RecordNotFound:
                    continue  # purged since: the check below leaves it out
            records = with_process_ids(store, (record for record, _ in found))
            yield from zip(records, (at for _, at in found), strict=True)

    start = store.last_seq()
    staged = index.stage(docs(), processes=len(adds) >= BULK_PROCESSES)
    if staged is None:
        return None
    crash_point("index.staged")
    by_id = {e.record_id: e for e in adds}
    done = 0
    try:
        # One shard at a time, each a short hold of the index lock: a restore waits for at
        # most one shard's attach.
        for name, ids in sorted(staged.shards.items()):
            with store.indexing():
                now = store.entries(ids)
                still = [
                    e
                    for e in (by_id[rid] for rid in ids)
                    if (c := now.get(e.record_id)) is not None
                    and (c.state, c.version, c.indexed) == ("archived", e.version, False)
                ]
                attached = index.attach(
                    staged,
                    {e.record_id for e in still},
                    first_versions=[e.record_id for e in still if e.version == 1],
                    merge=False,
                    shards=[name],
                )
                if attached is None:  # rebuilt meanwhile: the rebuild's catch-up sees to them
                    return done
                crash_point("index.before_mark")
                store.mark_indexed((e.record_id, e.version, e.state) for e in still)
                done += len(still)
        scrub_gone_since(store, index, start, among=by_id)
    finally:
        index.discard(staged)
    index.merge_segments()  # outside the store's lock: restores need not wait for it
    return done


def scrub_gone_since(
    store: ArchiveStore, index: SearchEngine, after_seq: int, among: Collection[str] = ()
) -> int:
    """Rewrite the index segments holding records purged or erased after entry `after_seq`,
    so their words leave the index's files and not only its answers; returns how many
    segments were rewritten.

    :param after_seq: `store.last_seq()` taken before the index was written from the store
    :param among: only these records (the ones written), if given
    """
    gone = store.gone_since(after_seq)
    if among:
        gone = [record_id for record_id in gone if record_id in among]
    if not gone:
        return 0
    with store.indexing():
        return index.erase(gone)


def rebuild_index(store: ArchiveStore, index: SearchEngine, *, progress: bool = False) -> int:
    """Build the whole index afresh from the archive store alone, swap it in, then catch up.

    The store is read without holding any lock, so archiving, restores and erasures go on, on
    the live index; the records archived after the starting point are not read. Under the
    index lock, the records restored, purged or erased since the starting point are taken out
    of the new index (the purged and erased ones out of its files), it is swapped in, and
    every change since the starting point is marked unindexed, so that the catch-up applies
    the rest there (records archived meanwhile). Killed after the swap and before that mark,
    the new index keeps a note of the starting point, and the next catch-up marks them
    (`finish_rebuild`).
    """
    start = store.last_seq()
    note = json.dumps({"seq": start, "head": store.entry_hash_at(start)})
    total = store.counts()["archived"]
    # (what is archived after `start` is the catch-up's, so none is read twice)
    archived = store.iter_records("archived", up_to_seq=start)
    records = _with_processes(store, ((record, entry.archived_at) for entry, record in archived))

    @contextmanager
    def going_live() -> Iterator[RebuildReplay]:
        crash_point("index.rebuild_built")  # (the new index complete, not live yet)
        # Held from reading what left the archive to the mark: an erasure or restore either
        # is read here, or changes the index after the swap, which is then the new one.
        with store.indexing():
            yield RebuildReplay(store.restored_since(start), store.gone_since(start), note)
            crash_point("index.rebuild_swapped")
            store.mark_rebuilt(start)

    count = index.rebuild(
        _read_points(records), total=total, progress=progress, going_live=going_live
    )
    sync_index(store, index)
    return count


def finish_rebuild(store: ArchiveStore, index: SearchEngine) -> bool:
    """Mark unindexed what changed since a rebuild began, if it was killed after its index
    went live and before it did so; returns whether one was (a small file read when not).

    What it had taken out of its index before the swap stays out; the records archived
    meanwhile, marked indexed in the index it replaced, are then indexed by the catch-up.
    """
    if index.unfinished_rebuild() is None:
        return False
    with store.indexing():
        note = index.unfinished_rebuild()  # (another process may have finished it meanwhile)
        if note is None:
            return False
        start = _rebuild_start(store, note)
        if start is not None:
            store.mark_rebuilt(start)
        else:  # (recovered from a backup since, the recovery rebuilds the index itself)
            log.warning("the note of an index rebuild killed before its catch-up is unreadable "
                        "or names another history of the archive; if `archivist verify` finds "
                        "records missing from the index, `archivist index --rebuild` mends it")
        index.rebuild_finished(note)
    log.info("recorded the catch-up of an index rebuild killed as it went live")
    return True


def _rebuild_start(store: ArchiveStore, note: str) -> int | None:
    """The starting point a rebuild's note names, None if it is unreadable or names another
    history of the store (one recovered from a backup since)."""
    try:
        began = json.loads(note)
        start, head = int(began["seq"]), began["head"]
    except (ValueError, TypeError, KeyError):
        return None
    return start if store.entry_hash_at(start) == head else None


def _read_points(
    pairs: Iterable[tuple[dict[str, Any], datetime]],
) -> Iterator[tuple[dict[str, Any], datetime]]:
    """Pass the records on, with a crash point every 1,000 (`index.rebuild_read`): the crash
    tests kill a rebuild there while its index workers are writing."""
    for n, pair in enumerate(pairs, 1):
        if n % 1000 == 0:
            crash_point("index.rebuild_read")
        yield pair


def rebuild_if_outdated(
    store: ArchiveStore, index: SearchEngine, announce: Callable[[str], None] = lambda _: None
) -> bool:
    """Rebuild an index an earlier version built (see `SearchEngine.outdated`), after telling
    `announce` why; returns whether it did. A missing or damaged index is left as it is, for
    `verify` to name and `index --rebuild` to make again."""
    try:
        reason = index.outdated()
    except IndexUnavailable:
        return False
    if reason is None:
        return False
    announce(reason)
    rebuild_index(store, index)
    return True


def check_index_agreement(store: ArchiveStore, index: SearchEngine) -> tuple[list[Problem], int]:
    """Compare the index with the catalog: same ids, same state.

    Returns the problems and how many records still wait for catch-up: archived ones not in
    the index yet, restored or purged ones still in it. Not problems: the catalog knows the
    index does not reflect them yet, and the next catch-up (or job run) applies them. So do
    the records archived during a rebuild killed as its index went live (`finish_rebuild`).
    """
    note = index.unfinished_rebuild()
    rebuilt_from = _rebuild_start(store, note) if note is not None else None
    indexed = set(index.iter_ids())
    problems: list[Problem] = []
    waiting = 0
    for entry in store.iter_catalog():
        in_index = entry.record_id in indexed
        indexed.discard(entry.record_id)
        if entry.state == "archived" and not in_index:
            if entry.indexed and (rebuilt_from is None or entry.seq <= rebuilt_from):
                problems.append(Problem(entry.record_id, None, MISSING_FROM_INDEX))
            else:
                waiting += 1
        elif entry.state != "archived" and in_index:
            if entry.indexed:
                problems.append(Problem(entry.record_id, None, f"{entry.state} {STILL_IN_INDEX}"))
            else:
                waiting += 1
    for record_id in sorted(indexed):
        problems.append(Problem(record_id, None, NEVER_ARCHIVED))
    return problems, waiting


def _with_processes(
    store: ArchiveStore, items: Iterator[tuple[dict[str, Any], datetime]]
) -> Iterator[tuple[dict[str, Any], datetime]]:
    """The items with each record's process root added, looked up a thousand at a time."""
    chunk: list[tuple[dict[str, Any], datetime]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= 1000:
            yield from zip(with_process_ids(store, (r for r, _ in chunk)),
                           (at for _, at in chunk), strict=True)
            chunk = []
    if chunk:
        yield from zip(with_process_ids(store, (r for r, _ in chunk)),
                       (at for _, at in chunk), strict=True)
