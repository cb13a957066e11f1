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

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveItem, ArchiveStore
from archive_store.faults import crash_point
from archivist.active_db import (
    LOCK_ORDER,
    ActiveRecord,
    delete_records,
    find_child_links,
    find_links,
    record_columns,
    select_records,
)
from archivist.archive_head import note_archive_head
from archivist.holds import load_hold_set
from archivist.processes import (
    ACTIVE,
    Member,
    Process,
    find_processes,
    find_roots,
    may_archive,
)
from archivist.records import Record
from archivist.retention import RetentionRules, archive_cutoff
from indexer.jobs.collector import collector_paused
from indexer.jobs.reconcile import KEPT_ACTIVE, reconcile_pending
from indexer.processes import ArchivistSource

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
    blocked: int = 0  # records left in the CRM's tables because something else references them
    blocked_by: dict[str, int] = field(default_factory=dict)  # constraint name -> records
    refused: int = 0  # records left in the CRM's tables because it refused their DELETE
    refused_by: dict[str, int] = field(default_factory=dict)  # "table: reason" -> records
    held_back: int = 0
    """Processes with an aged record left active: a record of theirs not aged, or held."""


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
    on_moved: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ArchiveReport:
    """Archive every process whose active records are all aged and none is held, batch by batch.

    A batch holds whole processes only (one larger than `batch_size` is a batch of its own),
    written to the store in one commit and deleted from the active database in one
    transaction, so no run and no crash leaves a process split.

    :param as_of: the job's "now" for retention ages.
    :param archived_at: the time stamped on the archived entries (the real clock).
    :param index_batch: hands archived records to the indexer; returns how many it indexed.
        It gets them once at least ``index_every`` have been moved, and the rest at the end.
    :param on_moved: told how many records each batch moved, as soon as their active rows are
        deleted (so a run that fails later, even in that batch's last step, still records
        what it did).
    :param should_stop: checked between batches; True ends the run after the current batch,
        leaving what it moved since the last hand-over to the indexer to the index catch-up
        (the worker's, or the next run's), so that a stopping worker exits within seconds.
    """
    reconcile_pending(sessions, store, archived_at)
    archived = indexed = 0
    by_category: Counter[str] = Counter()
    to_index: list[tuple[Record, datetime]] = []
    held_back: set[str] = set()  # roots of processes this run leaves active
    stopped = False
    # One policy group at a time, so each batch is an index range scan, not a table scan.
    for aged in _aged_groups(rules, as_of):
        cursor: tuple[datetime, str] | None = None
        while not (stopped := should_stop()):
            with store.archiving(), collector_paused():
                with sessions.begin() as session:
                    plan = _plan_batch(session, store, rules, as_of, aged, cursor, batch_size,
                                       held_back)
                if plan is None:
                    break
                cursor = plan.cursor
                if not plan.processes:
                    continue
                moved = _archive_processes(
                    sessions, store, plan.processes, archived_at, plan.read, on_moved
                )
            archived += len(moved)
            by_category.update(record.category for record in moved)
            if index_batch is not None:
                to_index.extend((record, archived_at) for record in moved)
                if len(to_index) >= index_every:
                    indexed += index_batch(to_index)
                    to_index = []
        if stopped:
            break
    if index_batch is not None and to_index and not stopped:
        indexed += index_batch(to_index)
    return ArchiveReport(archived, indexed, dict(sorted(by_category.items())),
                         held_back=len(held_back))


def preview_archive(
    session: Session, store: ArchiveStore, rules: RetentionRules, as_of: datetime,
    batch_size: int = 1000,
) -> tuple[dict[str, int], int]:
    """What an archive run at `as_of` would move, by category, and how many processes with an
    aged record it would hold back (a record of theirs not aged, in restore grace, or held)."""
    by_category: Counter[str] = Counter()
    decided: set[str] = set()  # roots: held back, or counted as moving
    moving = 0
    for aged in _aged_groups(rules, as_of):
        cursor: tuple[datetime, str] | None = None
        while True:
            plan = _plan_batch(session, store, rules, as_of, aged, cursor, batch_size, decided,
                               skip_held=False)  # held ones are read, to be counted
            if plan is None:
                break
            cursor = plan.cursor
            for process in plan.processes:
                decided.add(process.root)
                moving += 1
                by_category.update(m.category for m in process.in_state(ACTIVE))
    return dict(sorted(by_category.items())), len(decided) - moving


@dataclass(frozen=True)
class _Plan:
    """One batch: whole processes ready to move, and where the next batch's scan starts."""

    processes: list[Process]
    cursor: tuple[datetime, str]
    read: dict[str, Record] = field(default_factory=dict)  # records the scan already read


def _plan_batch(
    session: Session,
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    aged: ColumnElement[bool],
    cursor: tuple[datetime, str] | None,
    batch_size: int,
    decided: set[str],
    skip_held: bool = True,
) -> _Plan | None:
    """Read the next aged records after `cursor` and the processes they belong to.

    Processes that may not move are added to `decided` (their roots) and left out; None
    when the scan is done.

    :param skip_held: leave out records a hold covers from the read itself (a run: they cannot
        move); a preview reads them, so that their processes count as held back
    """
    where = aged & _not_held(session) if skip_held else aged
    if cursor is not None:
        at, last_id = cursor
        where = where & (ActiveRecord.updated_at_utc >= at) & or_(
            ActiveRecord.updated_at_utc > at, ActiveRecord.id > last_id
        )
    stmt = (
        select(*record_columns())
        .where(where)
        .order_by(ActiveRecord.updated_at_utc, ActiveRecord.id)
        .limit(batch_size)
    )
    read = {r.id: r for r in select_records(session, stmt)}
    if not read:
        return None
    seeds = [(r.id, r.updated) for r in read.values()]
    holds = load_hold_set(session)
    source = ArchivistSource(session, store)
    # Most records are processes of their own (no parent, no children): those need no walk,
    # only a look at the catalog for a restore time (the restore grace).
    lone_ids = [i for i, r in read.items() if r.parent_id is None]
    if lone_ids:
        linked = {link.parent_id for link in find_child_links(session, lone_ids)}
        linked.update(e.parent_id for e in store.child_entries(lone_ids))
        lone_ids = [i for i in lone_ids if i not in linked]
    catalog = store.entries(lone_ids)
    processes: dict[str, Process] = {}
    roots: dict[str, str] = {}
    for record_id in lone_ids:
        entry = catalog.get(record_id)
        if entry is not None and entry.state == "archived":
            continue  # a move of it is under way: left to the general path below
        r = read[record_id]
        restored_at = entry.restored_at if entry is not None else None
        member = Member(r.id, None, ACTIVE, r.category, r.customer_id, r.updated, restored_at)
        processes[record_id] = Process(record_id, (member,))
        roots[record_id] = record_id
    others = [seed_id for seed_id, _ in seeds if seed_id not in roots]
    if others:
        roots.update(find_roots(source, others))
        wanted = [seed_id for seed_id in others if roots.get(seed_id) not in decided]
        processes.update((p.root, p) for p in find_processes(source, wanted))
    chosen: list[Process] = []
    size = 0
    cursor = (seeds[-1][1], seeds[-1][0])
    for seed_id, seed_at in seeds:
        root = roots.get(seed_id)
        if root is None or root in decided or root not in processes:
            continue
        process = processes.pop(root)
        if not may_archive(process, rules, holds, as_of):
            decided.add(root)
            continue
        chosen.append(process)
        size += len(process.in_state(ACTIVE))
        if size >= batch_size:  # the rest of this page is read again by the next batch
            cursor = (seed_at, seed_id)
            break
    return _Plan(chosen, cursor, read)


def _archive_processes(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    processes: list[Process],
    archived_at: datetime,
    read: dict[str, Record],
    on_moved: Callable[[int], None] | None = None,
) -> list[Record]:
    # Three short steps, none holding the active database's write lock across the store's
    # write, so restores and audit entries need not wait for the whole batch: read the
    # records, write them to the store (marked `pending` delete), delete the active rows still
    # as read. A process the CRM changed meanwhile (a record updated, added or restored into
    # it) is kept active whole: its records get a `restored` event instead of being deleted.
    with store.moving():  # shared with restores; reconcile waits for it
        ids = [m.id for p in processes for m in p.in_state(ACTIVE)]
        # Records the plan did not read (other members of processes) are read now; a record
        # read then that the CRM changed since is caught before the delete.
        by_id = {i: read[i] for i in ids if i in read}
        missing = [i for i in ids if i not in by_id]
        if missing:
            with sessions.begin() as session:
                by_id.update((r.id, r) for r in _load_records(session, missing))
        crash_point("archive.before_store")
        items = [_item(by_id[i]) for i in ids if i in by_id]
        stored = store.archive_batch(items, archived_at, ACTOR)
        crash_point("archive.after_store")
        # (a record being restored is left out by the store, and stays active)
        moving = {entry.record_id for entry in stored}
        with sessions.begin() as session:
            note_archive_head(session, store.last_seq())  # (see archivist.archive_head)
            whole = _unchanged_processes(session, processes, by_id, moving)
            versions = [
                (by_id[m.id].id, by_id[m.id].updated_at)
                for p in whole for m in p.in_state(ACTIVE)
            ]
            deleted = delete_records(session, versions)
            crash_point("archive.after_delete")
        moved = [by_id[i] for i in ids if i in deleted]
        if on_moved is not None:  # told now: they have left the active database, whatever
            on_moved(len(moved))  # fails below (a full disk clearing the marks)
        crash_point("archive.after_commit")
        store.clear_pending(deleted)
        kept = sorted(moving - deleted)
        if kept:  # archived, but their process changed before the delete: they stay active
            store.complete_restores(kept, archived_at, ACTOR, KEPT_ACTIVE, grace=False)
    return moved




def _load_records(session: Session, ids: list[str], for_update: bool = False) -> list[Record]:
    records: list[Record] = []
    if for_update:
        ids = sorted(ids)  # locked in the one order every transaction locks rows in
    for start in range(0, len(ids), 500):
        stmt = select(*record_columns()).where(ActiveRecord.id.in_(ids[start : start + 500]))
        if for_update:
            stmt = stmt.order_by(LOCK_ORDER).with_for_update()
        records.extend(select_records(session, stmt))
    return records


def _unchanged_processes(
    session: Session, processes: list[Process], read: dict[str, Record], moving: set[str]
) -> list[Process]:
    """The processes whose active records are all still as read and all in the store, with no
    active record outside the batch linked to them (a record added or restored meanwhile).

    "As read" is the whole record, not only its `updated_at`: an import may change a record
    and keep its time. The rows are read again locked (SQLite's write transaction; `FOR
    UPDATE` elsewhere), so none changes between this look and the delete.
    """
    ids = [m.id for p in processes for m in p.in_state(ACTIVE)]
    batch = set(ids)
    now = {r.id: r for r in _load_records(session, ids, for_update=True)}
    children = find_child_links(session, ids)
    outside_parents = {
        m.parent_id for p in processes for m in p.in_state(ACTIVE)
        if m.parent_id is not None and m.parent_id not in batch
    }
    active_parents = set(find_links(session, outside_parents)) if outside_parents else set()
    spoiled = {link.parent_id for link in children if link.id not in batch}
    whole: list[Process] = []
    for process in processes:
        active = process.in_state(ACTIVE)
        if any(
            m.id not in moving
            or m.id not in read
            or now.get(m.id) != read[m.id]
            or m.id in spoiled
            or (m.parent_id in active_parents)
            for m in active
        ):
            continue
        whole.append(process)
    return whole


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
        updated_at=record.updated,
        parent_id=record.parent_id,
    )
