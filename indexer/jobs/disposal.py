"""Disposal at the end of retention: archived records past `keep_years` are removed for good."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archive_store.faults import crash_point
from archivist.holds import HoldSet, load_hold_set
from archivist.processes import find_processes, may_dispose
from archivist.retention import RetentionRules, disposal_cutoff, is_due_for_disposal
from indexer.jobs.disposal_proof import purge_with_proof, settle_disposal_list
from indexer.processes import ArchivistSource

ACTOR = "disposal"
PURGE_CHUNK = 5000
PROCESS_CHUNK = 1000  # candidates whose processes are looked up together


@dataclass(frozen=True)
class DisposalReport:
    """What one disposal run removed (or, in a dry run, would remove)."""

    purged: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def find_due_for_disposal(
    sessions: sessionmaker[Session], store: ArchiveStore, rules: RetentionRules, as_of: datetime
) -> list[tuple[str, str]]:
    """(record id, category) of every archived record whose whole process may be disposed of:
    every archived record of it past its keep time, and none of its records on hold."""
    return sorted(pair for group in find_due_processes(sessions, store, rules, as_of)
                  for pair in group)


def find_due_processes(
    sessions: sessionmaker[Session], store: ArchiveStore, rules: RetentionRules, as_of: datetime
) -> list[list[tuple[str, str]]]:
    """The archived records of each process that may be disposed of, a list per process."""
    with sessions.begin() as session:
        holds = load_hold_set(session)
        policies = [rules.default, *rules.categories.values()]
        latest_cutoff = max(disposal_cutoff(policy, as_of) for policy in policies)
        candidates: list[str] = []
        for entry in store.iter_catalog(state="archived", updated_before=latest_cutoff):
            policy = rules.policy_for(entry.category)
            if not is_due_for_disposal(entry.updated_at, policy, as_of):
                continue
            if holds.covers(entry.record_id, entry.customer_id, entry.category):
                continue
            candidates.append(entry.record_id)
        due: list[list[tuple[str, str]]] = []
        decided: set[str] = set()
        source = ArchivistSource(session, store)
        for start in range(0, len(candidates), PROCESS_CHUNK):
            chunk = [i for i in candidates[start : start + PROCESS_CHUNK] if i not in decided]
            for process in find_processes(source, chunk):
                decided.update(process.ids)
                if may_dispose(process, rules, holds, as_of):
                    due.append([(m.id, m.category) for m in process.in_state("archived")])
    return due


def dispose_due_records(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    purged_at: datetime,
    *,
    dry_run: bool = False,
    run_by: str = ACTOR,
    on_purged: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DisposalReport:
    """Purge every archived record due for disposal at `as_of` and not under legal hold.

    Each purged record is written to the disposal list (`archivist.disposals`). Disposal runs
    take turns (`ArchiveStore.disposing`). Holds are read again before each chunk: a hold
    placed while the run goes on keeps its records from the next chunk on.

    :param purged_at: the time stamped on the `purged` events (the real clock).
    :param run_by: who runs the disposal (`cli`, `worker`), kept in the disposal list
    :param on_purged: told how many records each chunk purged, as soon as it has.
    :param should_stop: asked between chunks; True ends the run there (the rest is due still)
    """
    if dry_run:
        groups = find_due_processes(sessions, store, rules, as_of)
        due = [pair for group in groups for pair in group]
        by_category = dict(sorted(Counter(category for _, category in due).items()))
        return DisposalReport(len(due), by_category, dry_run=True)
    with store.disposing():
        return _dispose(sessions, store, rules, as_of, purged_at, run_by, on_purged,
                        should_stop)


def _dispose(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    purged_at: datetime,
    run_by: str,
    on_purged: Callable[[int], None] | None,
    should_stop: Callable[[], bool],
) -> DisposalReport:
    settle_disposal_list(sessions, store)  # rows a crashed run left unconfirmed
    with sessions.begin() as session:
        holds_at_start = load_hold_set(session)
    groups = find_due_processes(sessions, store, rules, as_of)
    purged = 0
    by_category: Counter[str] = Counter()
    run_id = uuid.uuid4().hex

    def purge(chunk: list[list[tuple[str, str]]]) -> int:
        chunk = _still_unheld(sessions, store, rules, as_of, chunk, holds_at_start)
        ids = [record_id for group in chunk for record_id, _ in group]
        count = purge_with_proof(
            sessions, store, ids, rules, as_of, purged_at, ACTOR, run_by, run_id
        )
        by_category.update(category for group in chunk for _, category in group)
        if on_purged is not None:
            on_purged(count)
        crash_point("dispose.after_purge")
        return count

    # Whole processes per purge: a crash between two purges never leaves one half disposed.
    chunk: list[list[tuple[str, str]]] = []
    size = 0
    for group in groups:
        chunk.append(group)
        size += len(group)
        if size >= PURGE_CHUNK:
            purged += purge(chunk)
            chunk, size = [], 0
            if should_stop():
                break
    else:
        if chunk:
            purged += purge(chunk)
    return DisposalReport(purged, dict(sorted(by_category.items())))


def _still_unheld(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    chunk: list[list[tuple[str, str]]],
    holds_at_start: HoldSet,
) -> list[list[tuple[str, str]]]:
    """The processes of a chunk no hold placed since the run began covers (any of their
    records, archived or active, as at the start)."""
    with sessions.begin() as session:
        holds = load_hold_set(session)
        if holds == holds_at_start:
            return chunk
        source = ArchivistSource(session, store)
        ids = [record_id for group in chunk for record_id, _ in group]
        free = {
            record_id
            for process in find_processes(source, ids)
            if may_dispose(process, rules, holds, as_of)
            for record_id in process.ids
        }
    return [group for group in chunk if all(record_id in free for record_id, _ in group)]

