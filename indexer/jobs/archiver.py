"""The archiving job: move aged, unheld records from the active database into the archive store.

Order per batch, so that a crash at any instant loses nothing: the store write is durable and
committed in the catalog (marked `pending` delete) before the active rows are deleted; the mark
is cleared only after the delete committed. `reconcile_pending` finishes an interrupted batch.

Restores run beside a batch (the move lock is shared): a record being restored is left out of
the batch by the store. Legal holds are read with the batch: a hold placed while a batch is
moving covers its records from the next batch on, and keeps those already moved from disposal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveItem, ArchiveStore
from archive_store.faults import crash_point
from archivist.active_db import (
    ActiveRecord,
    delete_records,
    record_columns,
    select_records,
)
from archivist.holds import load_hold_set
from archivist.records import Record
from archivist.retention import RetentionRules, archive_cutoff
from indexer.jobs.reconcile import reconcile_pending

ACTOR = "archiver"

IndexBatch = Callable[[Sequence[tuple[Record, datetime]]], int]

# Archived records handed to the indexer at once. Each hand-over adds a segment to every shard
# it touches, and every server process then reopens those shards and warms them again (tens of
# milliseconds each, while its searches wait), so a run's batches of all its policy groups are
# indexed together; a large backlog becomes searchable this many records at a time.
INDEX_EVERY = 20_000


@dataclass(frozen=True)
class ArchiveReport:
    """What one run of the archiving job moved (or, in a dry run, would move)."""

    archived: int = 0
    indexed: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def archive_due_records(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    archived_at: datetime,
    *,
    batch_size: int = 1000,
    index_batch: IndexBatch | None = None,
    index_every: int = INDEX_EVERY,
    should_stop: Callable[[], bool] = lambda: False,
) -> ArchiveReport:
    """Archive every aged record not under legal hold, batch by batch.

    :param as_of: the job's "now" for retention ages.
    :param archived_at: the time stamped on the archived entries (the real clock).
    :param index_batch: hands archived records to the indexer; returns how many it indexed.
        It gets them once at least ``index_every`` have been moved, and the rest at the end.
    :param should_stop: checked between batches; True ends the run after the current batch.
    """
    reconcile_pending(sessions, store, archived_at)
    archived = indexed = 0
    by_category: Counter[str] = Counter()
    to_index: list[tuple[Record, datetime]] = []
    # One policy group at a time, so each batch is an index range scan, not a table scan.
    for aged in _aged_groups(rules, as_of):
        while not should_stop():
            moved = _archive_one_batch(sessions, store, aged, archived_at, batch_size)
            if not moved:
                break
            archived += len(moved)
            by_category.update(record.category for record in moved)
            if index_batch is not None:
                to_index.extend((record, archived_at) for record in moved)
                if len(to_index) >= index_every:
                    indexed += index_batch(to_index)
                    to_index = []
    if index_batch is not None and to_index:
        indexed += index_batch(to_index)
    return ArchiveReport(archived, indexed, dict(sorted(by_category.items())))


def preview_archive(session: Session, rules: RetentionRules, as_of: datetime) -> dict[str, int]:
    """How many records an archive run at `as_of` would move, by category."""
    stmt = (
        select(ActiveRecord.category, func.count())
        .where(or_(*_aged_groups(rules, as_of)) & _not_held(session))
        .group_by(ActiveRecord.category)
        .order_by(ActiveRecord.category)
    )
    return {category: count for category, count in session.execute(stmt)}


def _archive_one_batch(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    aged: ColumnElement[bool],
    archived_at: datetime,
    batch_size: int,
) -> list[Record]:
    # Three short steps, none holding the active database's write lock across the store's
    # write, so restores and audit entries need not wait for the whole batch: read the batch,
    # write it to the store (marked `pending` delete), delete the active rows still as read.
    # A row the CRM changed meanwhile is not deleted, and reconcile settles it.
    with store.moving():  # shared with restores; reconcile waits for it
        with sessions.begin() as session:
            stmt = (
                select(*record_columns())
                .where(aged & _not_held(session))
                .order_by(ActiveRecord.updated_at_utc)
                .limit(batch_size)
            )
            records = select_records(session, stmt)
        if not records:
            return []
        crash_point("archive.before_store")
        stored = store.archive_batch([_item(r) for r in records], archived_at, ACTOR)
        crash_point("archive.after_store")
        # (a record being restored is left out by the store, and stays active)
        moving = {entry.record_id for entry in stored}
        with sessions.begin() as session:
            deleted = delete_records(
                session, [(r.id, r.updated_at) for r in records if r.id in moving]
            )
            crash_point("archive.after_delete")
        crash_point("archive.after_commit")
        store.clear_pending(deleted)
    if len(deleted) != len(moving):
        reconcile_pending(sessions, store, archived_at)
    return [r for r in records if r.id in deleted]


def _aged_groups(rules: RetentionRules, as_of: datetime) -> list[ColumnElement[bool]]:
    """One condition per policy: the aged rows of each own-policy category, then the rest."""
    own = sorted(rules.categories)
    groups: list[ColumnElement[bool]] = [
        (ActiveRecord.category == name)
        & (ActiveRecord.updated_at_utc <= archive_cutoff(rules.categories[name], as_of))
        for name in own
    ]
    default_aged = ActiveRecord.updated_at_utc <= archive_cutoff(rules.default, as_of)
    groups.append(ActiveRecord.category.not_in(own) & default_aged if own else default_aged)
    return groups


def _not_held(session: Session) -> ColumnElement[bool]:
    """Rows no legal hold covers (holds are read afresh for every batch)."""
    holds = load_hold_set(session)
    return holds.exclusion(ActiveRecord.id, ActiveRecord.customer_id, ActiveRecord.category)


def _item(record: Record) -> ArchiveItem:
    return ArchiveItem(
        record_id=record.id,
        record=record.to_json(),
        category=record.category,
        customer_id=record.customer_id,
        created_at=record.created,
        updated_at=record.updated,
    )
