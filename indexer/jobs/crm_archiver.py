"""The archiving job over the CRM's own tables (`[[active.table]]`).

Rows are moved by process: the tree their mapped parent columns make, across tables. A process
moves when every row of it is aged (by its own category's policy, and a restored row not before
its restore has aged too) and none is held; a row something outside the mapping still references
keeps its whole process in place (`blocked`, with the constraint's name in the log and in
`job_run_blocks`).

The order is the one that makes moves from Archivist's own table crash-safe: the records are
written to the store (marked `pending` delete) before the rows are deleted; the deletes of a batch
commit in one transaction, each process under its own SAVEPOINT, children before parents; the
marks are cleared after. `reconcile_crm_pending` settles whatever a crash interrupted: by the
ledger of rows that left (`archived_process_members`) where it tells, else by looking at the rows
themselves.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, select, text, tuple_
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveItem, ArchiveStore, CatalogEntry
from archive_store.faults import crash_point
from archivist.archive_head import note_archive_head
from archivist.crm_ledger import add_members, find_members, record_blocks
from archivist.crm_rows import (
    CrmTable,
    CrmTables,
    ForeignKeyRef,
    database_reason,
    inspect_foreign_keys,
    keys_by_table,
    out_of_range,
    row_to_record,
)
from archivist.errors import InvalidRecord
from archivist.holds import load_hold_set
from archivist.processes import find_processes
from archivist.records import parse_record, parse_utc
from archivist.retention import RetentionRules, archive_cutoff
from indexer.jobs.collector import collector_paused
from indexer.jobs.reconcile import KEPT_ACTIVE, Settlement, live_processes, restores_that_reached
from indexer.processes import CatalogSource

log = logging.getLogger(__name__)
ACTOR = "archiver"
RECONCILE_ACTOR = "reconcile"
_CHUNK = 500

IndexBatch = Callable[[Sequence[tuple[Any, datetime]]], int]


@dataclass
class CrmRow:
    """One row of a mapped table and the record it becomes."""

    table: CrmTable
    key: Any
    record: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict, repr=False)  # the row as read

    @property
    def record_id(self) -> str:
        """The row's record id."""
        return str(self.record["id"])

    @property
    def parent_id(self) -> str | None:
        """The record id of its parent row, if any."""
        return self.record.get("parent_id")


@dataclass
class CrmProcess:
    """The rows of one process, root first."""

    root_id: str
    rows: list[CrmRow]

    @property
    def record_ids(self) -> list[str]:
        """The record ids of its rows."""
        return [row.record_id for row in self.rows]


@dataclass
class CrmArchiveReport:
    """What one run over the CRM's tables moved, and what it left because it is referenced."""

    archived: int = 0
    indexed: int = 0
    blocked: int = 0
    held_back: int = 0  # processes with an aged row left active: a row not aged, or held
    by_category: Counter[str] = field(default_factory=Counter)
    blocked_by: Counter[str] = field(default_factory=Counter)  # constraint -> records
    refused: int = 0  # records left active because the CRM refused their DELETE
    refused_by: Counter[str] = field(default_factory=Counter)  # "table: reason" -> records


def archive_crm_tables(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    crm: CrmTables,
    refs: Sequence[ForeignKeyRef],
    rules: RetentionRules,
    as_of: datetime,
    archived_at: datetime,
    *,
    batch_size: int = 1000,
    index_batch: IndexBatch | None = None,
    index_every: int = 20_000,
    on_moved: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    job_run_id: int | None = None,
    dry_run: bool = False,
    kinds: tuple[str, ...] | None = None,
) -> CrmArchiveReport:
    """Archive every aged, unheld, unreferenced process of the mapped tables.

    :param refs: foreign keys from outside the mapping (`inspect_foreign_keys`).
    :param as_of: the job's "now" for retention ages; `archived_at` is stamped on the entries.
    :param index_batch: hands archived records (JSON values) to the indexer.
    :param on_moved: told how many records each batch moved, as soon as it has moved them
        (so a run that fails later still records what it did).
    :param job_run_id: the `job_runs` row the blocked rows are written beside.
    :param dry_run: count what would move (in `by_category`) without moving anything.
    :param kinds: the kinds a record may have (`[records] kinds`); a row of another kind
        stays in the CRM, logged. None allows any.
    """
    if not dry_run:
        reconcile_crm_pending(sessions, store, crm, archived_at)
    report = CrmArchiveReport()
    decided: set[str] = set()
    to_index: list[tuple[Any, datetime]] = []
    loosest = max(
        archive_cutoff(policy, as_of) for policy in (rules.default, *rules.categories.values())
    )
    stopped = False
    for crm_table in crm.tables:
        after: Any = None
        while not (stopped := should_stop()):
            # (one batch at a time with any other archive run: see ArchiveStore.archiving)
            batch_lock = store.archiving() if not dry_run else nullcontext()
            with batch_lock, collector_paused():  # one batch's rows live until it ends
                with sessions.begin() as session:
                    keys = _aged_keys(session, crm_table, loosest, after, batch_size)
                    if not keys:
                        break
                    after = keys[-1]
                    seeds = [k for k in keys if crm_table.record_id(k) not in decided]
                    holds = load_hold_set(session)
                processes = _load_readable(sessions, crm, crm_table, seeds)
                processes = [p for p in processes if p.root_id not in decided]
                for process in processes:
                    decided.update(process.record_ids)
                due = _due(processes, store, rules, as_of, holds, kinds)
                report.held_back += len(processes) - len(due)
                with sessions.begin() as session:
                    blocked = _referenced(session, due, refs)
                movable = [p for p in due if p.root_id not in blocked]
                _report_blocked(sessions, report, due, blocked, job_run_id, dry_run)
                if dry_run:
                    for process in movable:
                        report.archived += len(process.rows)
                        report.by_category.update(r.record["category"] for r in process.rows)
                    continue
                movable = _skip_still_refused(sessions, store, movable, report, job_run_id)
                moved = move_processes(
                    sessions, store, movable, archived_at, report, job_run_id, refs,
                    on_moved=on_moved,
                )
            for process in moved:
                report.archived += len(process.rows)
                report.by_category.update(r.record["category"] for r in process.rows)
                if index_batch is not None:
                    to_index.extend((r.record, archived_at) for r in process.rows)
            if index_batch is not None and len(to_index) >= index_every:
                report.indexed += index_batch(to_index)
                to_index = []
        if stopped:  # (the rest is left to the index catch-up, as in `archive_due_records`)
            break
    if index_batch is not None and to_index and not stopped:
        report.indexed += index_batch(to_index)
    return report


def _aged_keys(
    session: Session, crm_table: CrmTable, cutoff: datetime, after: Any, limit: int
) -> list[Any]:
    updated = crm_table.updated_column
    bound = cutoff if crm_table.codecs[updated.name] == "timestamptz" else _naive(cutoff)
    key = crm_table.key_column
    stmt = select(key).where(updated <= bound).order_by(key).limit(limit)
    if after is not None:
        stmt = stmt.where(key > after)
    return list(session.scalars(stmt))


def load_processes(
    session: Session, crm: CrmTables, seeds: dict[str, list[Any]], *, lock: bool = False
) -> list[CrmProcess]:
    """The whole processes the seed rows (table name -> keys) belong to: up to each root
    through the parent columns, then down to every descendant, across tables."""
    rows: dict[str, CrmRow] = {}
    frontier = _fetch(session, crm, {crm.by_name[n]: ks for n, ks in seeds.items()}, rows, lock)
    while frontier:  # up: the parents not loaded yet
        wanted: dict[CrmTable, list[Any]] = defaultdict(list)
        for row in frontier:
            parent = row.table.parent
            if parent is not None and row.parent_id is not None and row.parent_id not in rows:
                wanted[parent].append(parent.key_of(row.parent_id))
        frontier = _fetch(session, crm, wanted, rows, lock)
    frontier = list(rows.values())
    while frontier:  # down: the children not loaded yet
        by_table: dict[CrmTable, list[Any]] = defaultdict(list)
        for row in frontier:
            by_table[row.table].append(row.key)
        found: list[CrmRow] = []
        for row in load_children(session, by_table, lock=lock):
            if row.record_id not in rows:
                rows[row.record_id] = row
                found.append(row)
        frontier = found
    return group_processes(rows.values())


def _load_readable(
    sessions: sessionmaker[Session], crm: CrmTables, crm_table: CrmTable, seeds: list[Any]
) -> list[CrmProcess]:
    """The processes of these rows of `crm_table`. If a value in one of them cannot be read
    (a date the driver cannot parse, text that is not UTF-8, ...), each row's process is read
    alone, and a process that cannot be read stays in the CRM, logged, rather than failing the
    run."""
    try:
        with sessions.begin() as session:
            return load_processes(session, crm, {crm_table.name: seeds})
    except Exception as e:
        if not _unreadable(e):
            raise
    processes: dict[str, CrmProcess] = {}
    read: set[str] = set()
    for seed in seeds:
        record_id = crm_table.record_id(seed)
        if record_id in read:
            continue
        try:
            with sessions.begin() as session:
                found = load_processes(session, crm, {crm_table.name: [seed]})
        except Exception as e:
            if not _unreadable(e):
                raise
            log.warning("row %s is not archived: a row of its process holds a value that "
                        "cannot be read (%s: %s)", record_id, type(e).__name__, e)
            continue
        for process in found:
            processes[process.root_id] = process
            read.update(process.record_ids)
    return list(processes.values())


def _unreadable(error: Exception) -> bool:
    """Whether reading rows failed on a value rather than on the database."""
    # (OverflowError: a time in range where the session reads it, past year 9999 in UTC)
    if isinstance(error, ValueError | TypeError | OverflowError | DataError):
        return True
    return isinstance(error, OperationalError) and "decode" in str(error.orig)


def load_children(
    session: Session, parents: dict[CrmTable, list[Any]], *, lock: bool = False
) -> list[CrmRow]:
    """The rows whose parent column names one of these parents (table -> keys): their
    children, in every mapped child table. The parents themselves need not be in the CRM.

    :param session: a session on the CRM's database
    :param parents: the parents' table and keys
    :param lock: lock the rows read (`FOR UPDATE`)
    """
    found: list[CrmRow] = []
    for parent, keys in parents.items():
        for child in parent.children:
            column = child.parent_column
            assert column is not None
            for chunk in _chunks(keys):
                stmt = select(*child.select_columns()).where(column.in_(chunk))
                found.extend(
                    _row(child, values)
                    for values in session.execute(_locked(stmt, lock)).mappings()
                )
    return found


def group_processes(rows: Iterable[CrmRow]) -> list[CrmProcess]:
    """Split rows into processes by their parent ids, each root first, parents before children."""
    by_id = {row.record_id: row for row in rows}
    root_of: dict[str, str] = {}

    def root(record_id: str) -> str:
        path = []
        current = record_id
        while current not in root_of:
            path.append(current)
            parent = by_id[current].parent_id
            if parent is None or parent not in by_id or parent in path:
                root_of[current] = current
                break
            current = parent
        found = root_of[current]
        for step in path:
            root_of[step] = found
        return found

    groups: dict[str, list[CrmRow]] = defaultdict(list)
    for record_id in by_id:
        groups[root(record_id)].append(by_id[record_id])
    processes = []
    depth = row_depths(by_id.values())
    for root_id, members in groups.items():
        members.sort(key=lambda m: depth[m.record_id])
        processes.append(CrmProcess(root_id, members))
    return processes


def _parent_loop(process: CrmProcess) -> list[str]:
    """The rows of a process whose parents lead back to them through other rows, if any.

    A foreign key checked at the end of each statement lets the CRM make such a loop (rows
    inserted or updated together), and deleting them together works; a restore inserts the
    rows parents first, one row at a time, and could never insert them back.
    """
    parents = {row.record_id: row.parent_id for row in process.rows}
    walk_of: dict[str, int] = {}  # each row is walked once (a reply chain may be long)
    for walk, start in enumerate(parents):
        path: list[str] = []
        current: str | None = start
        while current in parents and current not in walk_of:
            walk_of[current] = walk
            path.append(current)
            current = parents[current]
        if current is not None and walk_of.get(current) == walk:  # back into this walk
            loop = path[path.index(current):]
            if len(loop) > 1:  # (a row its own parent goes back alone)
                return loop
    return []


def row_depths(rows: Iterable[CrmRow]) -> dict[str, int]:
    """How many ancestors each row has among `rows`: sorted by it, parents come before their
    children. Each row is walked once (a process may hold 100,000 rows, or one long chain of
    replies); a loop of parents is cut where it closes.

    :param rows: the rows, by any order
    """
    parent_of = {row.record_id: row.parent_id for row in rows}
    depth: dict[str, int] = {}
    for start in parent_of:
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node in parent_of and node not in depth and node not in on_path:
            path.append(node)
            on_path.add(node)
            node = parent_of[node]
        base = depth[node] if node in depth else -1
        for steps, record_id in enumerate(reversed(path), start=1):
            depth[record_id] = base + steps
    return depth


def _fetch(
    session: Session,
    crm: CrmTables,
    wanted: dict[CrmTable, list[Any]],
    rows: dict[str, CrmRow],
    lock: bool,
) -> list[CrmRow]:
    found: list[CrmRow] = []
    for crm_table, keys in wanted.items():
        for chunk in _chunks(list(dict.fromkeys(keys))):
            stmt = select(*crm_table.select_columns()).where(crm_table.key_column.in_(chunk))
            for values in session.execute(_locked(stmt, lock)).mappings():
                row = _row(crm_table, values)
                if row.record_id not in rows:
                    rows[row.record_id] = row
                    found.append(row)
    return found


def _locked(stmt: Any, lock: bool) -> Any:
    return stmt.with_for_update() if lock else stmt


def _row(crm_table: CrmTable, values: Any) -> CrmRow:
    record = row_to_record(crm_table, values)
    # the key as its record id names it: a char(n) key without its padding, so that a text
    # parent column of a child holding the same value finds it
    return CrmRow(crm_table, crm_table.key_of(record["id"]), record, dict(values))


def _due(
    processes: list[CrmProcess],
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    holds: Any,
    kinds: tuple[str, ...] | None = None,
) -> list[CrmProcess]:
    """The processes whose every row is aged (restore grace included), valid and unheld."""
    catalog = store.entries(rid for p in processes for rid in p.record_ids)
    due = []
    for process in processes:
        loop = _parent_loop(process)
        if loop:
            log.warning("process %s (%d rows) not archived: rows %s are each other's parents in "
                        "a loop, which a restore could not insert back", process.root_id,
                        len(process.rows), ", ".join(loop))
            continue
        ok = True
        for row in process.rows:
            record = row.record
            if out_of_range(row.values):
                log.warning("row %s is not archived: it holds an infinite, BC or post-9999 "
                            "date, which could not come back as it is", row.record_id)
                ok = False
                break
            if record["updated_at"] is None:
                column = row.table.updated_column.name
                # (SQLite keeps any value: text that is no date and time has no age either)
                what = "NULL" if row.values.get(column) is None else "not a date and time"
                log.warning("row %s is not archived: its updated_at column (%s) is %s, so it "
                            "has no age", row.record_id, column, what)
                ok = False
                break
            cutoff = archive_cutoff(rules.policy_for(record["category"]), as_of)
            entry = catalog.get(row.record_id)
            if entry is not None and entry.state == "archived" and entry.pending is None:
                # the CRM used an archived row's key again: an id lives in one place only
                log.warning("row %s is not archived: its id is archived already", row.record_id)
                ok = False
                break
            last = parse_utc(record["updated_at"])
            # (an erasure of the archived versions leaves the active row its restore grace)
            if (
                entry is not None and entry.state in ("restored", "erased")
                and entry.restored_at is not None
            ):
                last = max(last, entry.restored_at)
            if last > cutoff or holds.covers(
                row.record_id, record["customer_id"], record["category"]
            ):
                ok = False
                break
            try:
                parse_record(record, kinds, column_limits=False)
            except InvalidRecord as e:
                log.warning("row %s is not archived: %s", row.record_id, e)
                ok = False
                break
        if ok and _held_through_the_archive(store, process, holds):
            ok = False
        if ok:
            due.append(process)
    return due


def _held_through_the_archive(store: ArchiveStore, process: CrmProcess, holds: Any) -> bool:
    """Whether a hold covers a record of the process that already left the CRM: rows the CRM
    added under an archived row (a table without a foreign key lets it) belong to that row's
    process, and a hold on any record of a process holds all of it."""
    parent_id = process.rows[0].parent_id  # the root's: a row outside the CRM, if any
    if parent_id is None:
        return False
    relatives = archived_tree(store, parent_id, ("archived", "restored"))
    return any(holds.covers(e.record_id, e.customer_id, e.category) for e in relatives)


def archived_tree(
    store: ArchiveStore, record_id: str, states: tuple[str, ...] = ("archived",)
) -> list[CatalogEntry]:
    """The records of a record's process that the archive holds in one of `states`, as their
    `parent_id` links make it: up from the record while the parent is there, then down to
    every descendant there. Empty if the record itself is not there in one of `states`."""
    def held(record_ids: list[str]) -> dict[str, CatalogEntry]:
        return {i: e for i, e in store.entries(record_ids).items() if e.state in states}

    top = held([record_id]).get(record_id)
    if top is None:
        return []
    seen = {record_id}
    while top.parent_id is not None and top.parent_id not in seen:
        parent = held([top.parent_id]).get(top.parent_id)
        if parent is None:
            break
        seen.add(parent.record_id)
        top = parent
    tree, frontier, known = [top], [top.record_id], {top.record_id}
    while frontier:
        children = [
            e for e in store.child_entries(frontier)
            if e.state in states and e.record_id not in known
        ]
        known.update(e.record_id for e in children)
        tree.extend(children)
        frontier = [e.record_id for e in children]
    return tree


def _referenced(
    session: Session, processes: list[CrmProcess], refs: Sequence[ForeignKeyRef]
) -> dict[str, tuple[str, str]]:
    """Root id -> (constraint, referencing table) of the processes something outside the
    mapping still references."""
    blocked: dict[str, tuple[str, str]] = {}
    by_target: dict[str, list[tuple[CrmRow, str]]] = defaultdict(list)
    for process in processes:
        for row in process.rows:
            by_target[row.table.name].append((row, process.root_id))
    for ref in refs:
        targets = by_target.get(ref.target.name)
        if not targets:
            continue
        table = ref.target.table.metadata.tables.get(ref.table)
        if table is None:
            schema, _, name = ref.table.rpartition(".")
            table = Table(
                name, ref.target.table.metadata, schema=schema or None,
                autoload_with=session.connection(),
            )
        source_cols = [table.c[c] for c in ref.columns]
        values: dict[tuple[Any, ...], str] = {}
        for row, root in targets:
            key = tuple(row.values[c] for c in ref.target_columns)
            values[key] = root
        for chunk in _chunks(list(values)):
            lhs = source_cols[0] if len(source_cols) == 1 else tuple_(*source_cols)
            rhs = [v[0] for v in chunk] if len(source_cols) == 1 else chunk
            stmt = select(*source_cols).where(lhs.in_(rhs)).distinct()
            for hit in session.execute(stmt):
                root = values[tuple(hit)]
                blocked.setdefault(root, (ref.name, ref.table))
    return blocked


def _report_blocked(
    sessions: sessionmaker[Session],
    report: CrmArchiveReport,
    processes: list[CrmProcess],
    blocked: dict[str, tuple[str, str]],
    job_run_id: int | None,
    dry_run: bool,
) -> None:
    rows: list[tuple[str, str, str]] = []
    for process in processes:
        if process.root_id not in blocked:
            continue
        constraint, table = blocked[process.root_id]
        log.warning(
            "process %s (%d rows) not archived: still referenced from %s through %s",
            process.root_id, len(process.rows), table, constraint,
        )
        report.blocked += len(process.rows)
        report.blocked_by[constraint] += len(process.rows)
        rows.extend((rid, constraint, table) for rid in process.record_ids)
    if rows and not dry_run:
        with sessions.begin() as session:
            record_blocks(session, job_run_id, rows)


def move_processes(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    processes: list[CrmProcess],
    archived_at: datetime,
    report: CrmArchiveReport | None = None,
    job_run_id: int | None = None,
    refs: Sequence[ForeignKeyRef] = (),
    on_moved: Callable[[int], None] | None = None,
) -> list[CrmProcess]:
    """Store the processes, then delete their rows; returns the processes that moved.

    :param refs: foreign keys from outside the mapping, checked again once the rows are locked
    :param on_moved: told how many records moved once their rows are deleted, before the
        store's last steps (which may fail: the run still counts them)
    """
    if not processes:
        return []
    with store.moving():  # shared with restores; reconcile waits for it
        items = [_item(row.record) for p in processes for row in p.rows]
        crash_point("archive.before_store")
        stored = {
            entry.record_id: entry.seq
            for entry in store.archive_batch(items, archived_at, ACTOR)
        }
        crash_point("archive.after_store")
        # a process one of whose records is being restored stays whole where it is
        whole = [p for p in processes if all(rid in stored for rid in p.record_ids)]
        whole_roots = {p.root_id for p in whole}
        kept = [
            rid for p in processes if p.root_id not in whole_roots
            for rid in p.record_ids if rid in stored
        ]
        outcome = delete_and_commit(sessions, whole, stored, refs, head=store.last_seq())
        deleted = set(outcome.deleted)
        moved = [p for p in whole if p.root_id in deleted]
        if on_moved is not None and moved:
            on_moved(sum(len(p.rows) for p in moved))
        crash_point("archive.after_commit")
        store.clear_pending(outcome.deleted)
        # the rows are live: say so (no restore grace, they never left)
        store.complete_restores([*kept, *outcome.kept], archived_at, ACTOR, KEPT_ACTIVE,
                                grace=False)
    if outcome.blocked and report is not None:
        _report_blocked(
            sessions, report, whole, outcome.blocked, job_run_id, dry_run=False
        )
    if outcome.refused and report is not None:
        _report_refused(sessions, report, whole, outcome.refused, job_run_id)
    return moved


def _report_refused(
    sessions: sessionmaker[Session],
    report: CrmArchiveReport,
    processes: list[CrmProcess],
    refused: dict[str, tuple[str, str]],
    job_run_id: int | None,
) -> None:
    rows: list[tuple[str, str, str]] = []
    for process in processes:
        if process.root_id not in refused:
            continue
        table, reason = refused[process.root_id]
        report.refused += len(process.rows)
        report.refused_by[f"{table}: {reason}"] += len(process.rows)
        rows.extend((rid, reason[:256], table) for rid in process.record_ids)
    with sessions.begin() as session:
        record_blocks(session, job_run_id, rows)


def _skip_still_refused(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    processes: list[CrmProcess],
    report: CrmArchiveReport,
    job_run_id: int | None,
) -> list[CrmProcess]:
    """The processes to move, less those the CRM refused to delete last time and still does.

    A refusal is only found by deleting, after the records were stored; storing and undoing
    them again every run would grow the store and their histories for nothing. So a process
    with a row kept active by the run that stored it is first deleted in a transaction that
    is rolled back (its triggers' writes with it): refused again, it is reported and not
    stored; deleted, it moves as usual (the trigger or rule was changed since).
    """
    catalog = store.entries(rid for p in processes for rid in p.record_ids)
    suspect = [
        p for p in processes
        if any(_kept_active_when_stored(catalog.get(rid)) for rid in p.record_ids)
    ]
    if not suspect:
        return processes
    session = sessions()
    try:
        outcome = delete_processes(session, suspect, {}, refs=())
    finally:
        session.rollback()
        session.close()
    if outcome.refused:
        _report_refused(sessions, report, suspect, outcome.refused, job_run_id)
    return [p for p in processes if p.root_id not in outcome.refused]


def _kept_active_when_stored(entry: CatalogEntry | None) -> bool:
    """Whether the run that stored this version left its row in the CRM (restored with no
    restore time, as only the archive job restores): the CRM changed it or refused its
    delete."""
    return entry is not None and entry.state == "restored" and entry.restored_at is None


@dataclass
class DeleteOutcome:
    """What `delete_processes` did."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # changed meanwhile, blocked or refused
    blocked: dict[str, tuple[str, str]] = field(default_factory=dict)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # root -> (table, why)


class _DeleteRefused(Exception):
    """The CRM did not delete a row of the process: a DELETE trigger or rule kept it, or the
    DELETE failed (a trigger raised)."""

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(f"{table}: {reason}")
        self.table, self.reason = table, reason


def delete_and_commit(
    sessions: sessionmaker[Session],
    processes: list[CrmProcess],
    seqs: Mapping[str, int],
    refs: Sequence[ForeignKeyRef] = (),
    head: int | None = None,
) -> DeleteOutcome:
    """`delete_processes` in a transaction of its own.

    :param head: the catalog's newest entry, committed before: recorded with the delete (see
        `archivist.archive_head`)
    """
    with sessions.begin() as session:
        if head is not None:
            note_archive_head(session, head)
        outcome = delete_processes(session, processes, seqs, refs)
        crash_point("archive.after_delete")
    return outcome


def delete_processes(
    session: Session,
    processes: list[CrmProcess],
    seqs: Mapping[str, int],
    refs: Sequence[ForeignKeyRef] = (),
) -> DeleteOutcome:
    """Delete the rows of each process as they were stored, children before parents.

    The rows are locked and looked at again first: a process the CRM changed meanwhile (a row
    changed, deleted or re-keyed, a child row added or moved in) stays whole, and so does one
    that something outside the mapping (`refs`) started to reference (an `ON DELETE CASCADE`
    would have taken that row with it, unseen). The rest are deleted together under one
    SAVEPOINT; if a foreign key or the CRM (a trigger, a rule, a deferred check) refuses that,
    each process is deleted under its own, so the one refused stays whole and the others go.

    :param seqs: the catalog entry of the version each record was stored as, for the ledger
        of rows that left (a trial delete rolled back may pass none)
    """
    outcome = DeleteOutcome()
    changed = _changed(session, processes)
    changed |= _grown(session, processes)
    for process in processes:
        if process.root_id in changed:
            log.info("process %s changed while it was archived; it stays active",
                     process.root_id)
            outcome.kept.extend(process.record_ids)
    unchanged = [p for p in processes if p.root_id not in changed]
    for root, reference in _referenced(session, unchanged, refs).items():
        outcome.blocked[root] = reference
    for process in unchanged:
        if process.root_id in outcome.blocked:
            outcome.kept.extend(process.record_ids)
    unchanged = [p for p in unchanged if p.root_id not in outcome.blocked]
    try:
        with session.begin_nested():
            _delete_rows(session, unchanged, seqs)
    except (IntegrityError, _DeleteRefused):
        pass
    else:
        outcome.deleted.extend(rid for p in unchanged for rid in p.record_ids)
        return outcome
    for process in unchanged:
        try:
            with session.begin_nested():
                _delete_rows(session, [process], seqs)
        except IntegrityError as e:
            diag = getattr(e.orig, "diag", None)
            constraint = getattr(diag, "constraint_name", None) or "?"
            referencing = getattr(diag, "table_name", None) or "?"
            outcome.blocked[process.root_id] = (constraint, referencing)
            outcome.kept.extend(process.record_ids)
        except _DeleteRefused as e:
            log.warning("process %s (%d rows) not archived: %s refuses its DELETE: %s",
                        process.root_id, len(process.rows), e.table, e.reason)
            outcome.refused[process.root_id] = (e.table, e.reason)
            outcome.kept.extend(process.record_ids)
        else:
            outcome.deleted.extend(process.record_ids)
    return outcome


def _delete_rows(
    session: Session, processes: list[CrmProcess], seqs: Mapping[str, int]
) -> None:
    """Delete the processes' rows deepest first (children before parents, across tables), a
    statement per depth and table; remember which process each row left with, as which
    version (`seqs`). The rows are locked, and there (`_changed`).

    :raises _DeleteRefused: a row was not deleted, or the DELETE failed
    """
    depth_of: dict[tuple[int, CrmTable], list[Any]] = defaultdict(list)
    for process in processes:
        depths = row_depths(process.rows)
        for row in process.rows:
            depth_of[(depths[row.record_id], row.table)].append(row.key)
    for (_, crm_table), keys in sorted(depth_of.items(), key=lambda item: -item[0][0]):
        for chunk in _chunks(keys):
            if _delete_keys(session, crm_table, chunk) != len(chunk):
                raise _DeleteRefused(crm_table.name, "a DELETE trigger or rule kept the row")
    _run_deferred_checks(session, sorted({table.name for _, table in depth_of}))
    add_members(session, [
        (rid, p.root_id, seqs.get(rid)) for p in processes for rid in p.record_ids
    ])


def _delete_keys(session: Session, crm_table: CrmTable, keys: list[Any]) -> int:
    """DELETE these rows; how many the database says it deleted."""
    try:
        result = session.execute(
            crm_table.table.delete().where(crm_table.key_column.in_(keys))
        )
    except IntegrityError:
        raise
    except DBAPIError as e:  # a trigger raised, say; a lost connection is no refusal
        if e.connection_invalidated:
            raise
        raise _DeleteRefused(crm_table.name, database_reason(e)) from e
    return int(getattr(result, "rowcount", 0))


def _run_deferred_checks(session: Session, tables: list[str]) -> None:
    """Run now the checks PostgreSQL would defer to the commit (deferred foreign keys and
    constraint triggers), so that one refusing a process's delete fails its SAVEPOINT, not the
    whole batch's commit.

    :param tables: the tables the deletes were in, to name in a refusal
    :raises _DeleteRefused: a deferred trigger raised
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    try:
        session.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
    except IntegrityError:
        raise
    except DBAPIError as e:
        if e.connection_invalidated:
            raise
        raise _DeleteRefused(", ".join(tables), database_reason(e)) from e


def _grown(session: Session, processes: list[CrmProcess]) -> set[str]:
    """The roots of processes under whose rows the CRM added a row to a mapped child table, or
    moved one there, since the processes were read.

    A row moved in from another process of the batch counts too: the process it left stays
    because the row changed, but deleting the one it joined would take the row with it (an
    `ON DELETE CASCADE`), and the row's only archived copy would be the one before the move.
    """
    root_of = {row.record_id: p.root_id for p in processes for row in p.rows}
    parents: dict[CrmTable, list[Any]] = defaultdict(list)
    for process in processes:
        for row in process.rows:
            parents[row.table].append(row.key)
    grown: set[str] = set()
    for child in load_children(session, parents):
        if child.parent_id is None or child.parent_id not in root_of:
            continue
        root = root_of[child.parent_id]
        if root_of.get(child.record_id) != root:
            grown.add(root)
    return grown


def _changed(session: Session, processes: list[CrmProcess]) -> set[str]:
    """Lock the processes' rows; the roots of those no longer exactly as stored."""
    by_table: dict[CrmTable, list[tuple[CrmRow, str]]] = defaultdict(list)
    for process in processes:
        for row in process.rows:
            by_table[row.table].append((row, process.root_id))
    changed: set[str] = set()
    for crm_table, rows in by_table.items():
        current: dict[str, dict[str, Any] | None] = {}
        for chunk in _chunks([row.key for row, _ in rows]):
            stmt = (
                select(*crm_table.select_columns())
                .where(crm_table.key_column.in_(chunk))
                .with_for_update()
            )
            for mapping in session.execute(stmt).mappings():
                values = dict(mapping)
                record = row_to_record(crm_table, values)
                # an infinite or BC date the CRM wrote meanwhile reads as NULL: the row is not
                # as stored, and could not come back as it is now
                current[record["id"]] = None if out_of_range(values) else record
        for row, root in rows:
            # deleted or re-keyed by the CRM meanwhile counts as changed: archived, its copy
            # could come back beside the row's new key, or undo the CRM's delete
            if current.get(row.record_id) != row.record:
                changed.add(root)
    return changed


def reconcile_crm_pending(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    crm: CrmTables,
    now: datetime,
) -> Settlement:
    """Settle every move a crash interrupted: a record is never both archived and in its
    table, nor in neither.

    A record in the ledger of rows that left (`archived_process_members`, written in the
    delete's transaction) as the version being moved left its table: the delete committed, and
    a row with its key now is one the CRM added since, which stays (as an aged row whose key is
    archived does). An entry of another version (one disposed of or erased since, whose key
    the CRM used again, or one an earlier version wrote without its version) tells nothing
    about this move. Any other delete is settled by what the CRM's tables hold now. An
    interrupted restore is settled by the same ledger, which its insert clears in its own
    transaction (`_restores_committed`); in a database without it (an installation from
    before it), by the rows.

    A process is moved whole or not at all: if the CRM changed one of its rows meanwhile, the
    others stay active with it (its processes are the catalog's, as they were archived), as
    rows that never left: no restore grace, they age by their own `updated_at`. The
    foreign keys onto the mapped tables from outside the mapping are read when rows are about
    to be deleted, so that a table the CRM added since `crm` was read cannot lose rows to an
    `ON DELETE CASCADE`.

    :param crm: the mapped tables, read as recently as the caller could (`reflect_crm`)
    """
    with store.settling():
        pending = list(store.iter_pending())
        if not pending:
            return Settlement(0, [])
        restored: list[str] = []
        archived = {entry.record_id: store.get(entry.record_id) for entry in pending}
        current: dict[str, CrmRow] = {}
        with sessions.begin() as session:
            _fetch(session, crm, keys_by_table(crm, archived), current, False)
            left = find_members(session, archived)
        deleted = {
            e.record_id for e in pending
            if e.pending == "delete_active" and left is not None
            and e.record_id in left and left[e.record_id] == e.seq
        }
        changed = [
            entry.record_id for entry in pending
            if entry.pending == "delete_active" and entry.record_id not in deleted
            and (row := current.get(entry.record_id)) is not None
            and (row.record != archived[entry.record_id] or out_of_range(row.values))
        ]
        # by the catalog's links: the CRM may have deleted a row between them
        keep_whole = live_processes(store, changed)
        inserting = [e.record_id for e in pending if e.pending == "insert_active"]
        if left is not None:
            reached = _restores_committed(store, inserting, set(current), set(left))
        else:
            reached = restores_that_reached(store, {
                record_id: current[record_id].record == archived[record_id]
                for record_id in inserting if record_id in current
            }, missing=[record_id for record_id in inserting if record_id not in current])
        cleared: list[str] = []
        gone: list[str] = []  # archived, and deleted from its table (by the move, or the CRM)
        kept: list[str] = []  # its process stays in the CRM: the rows never left
        to_delete: list[CrmRow] = []
        for entry in pending:
            row = current.get(entry.record_id)
            if entry.pending == "delete_active":
                if entry.record_id in deleted:  # whatever has its key now is the CRM's
                    cleared.append(entry.record_id)
                elif row is None:
                    gone.append(entry.record_id)
                elif entry.record_id not in keep_whole:
                    to_delete.append(row)
                else:  # its process changed in the CRM meanwhile: the rows are live
                    kept.append(entry.record_id)
            elif entry.pending == "insert_active":
                if entry.record_id in reached:  # the restore reached the CRM's tables
                    store.complete_restore(entry.record_id, now, RECONCILE_ACTOR)
                    restored.append(entry.record_id)
                else:
                    store.abort_restore(entry.record_id)
        if to_delete:
            with sessions.begin() as session:
                refs = inspect_foreign_keys(session.connection(), crm)
            seqs = {entry.record_id: entry.seq for entry in pending}
            outcome = delete_and_commit(sessions, group_processes(to_delete), seqs, refs)
            cleared.extend(outcome.deleted)
            kept.extend(outcome.kept)  # changed, blocked or refused: it stays active
            keep_whole |= live_processes(store, outcome.kept)
        for record_id in gone:
            if record_id in keep_whole:  # deleted by the CRM; the rest of its process stays
                kept.append(record_id)
            else:
                cleared.append(record_id)
        # as an uncrashed run says so: live, with no restore grace, since they never left
        store.complete_restores(kept, now, RECONCILE_ACTOR, KEPT_ACTIVE, grace=False)
        store.clear_pending(cleared)
        return Settlement(len(pending), restored)


def _restores_committed(
    store: ArchiveStore, inserting: list[str], present: set[str], left: set[str]
) -> set[str]:
    """Of the records an interrupted restore was putting back, those whose insert committed.

    The insert takes a process's records out of the ledger of rows that left (`left`) in its
    own transaction: a process (by the catalog's links) with a record still in it did not go
    back, whatever row has that key now; one with none left in it did, however the CRM changed
    or deleted its rows since. A record archived while the ledger was not kept (a recovered
    backup that did not hold it) is out of it either way, so a row of the process must also be
    in the CRM's tables: with none there, its records stay archived.

    :param present: the records with a row in the CRM's tables now
    """
    if not inserting:
        return set()
    waiting = set(inserting)
    reached: set[str] = set()
    for process in find_processes(CatalogSource(store), sorted(waiting)):
        ids = {member.id for member in process.members} & waiting
        if ids & present and not ids & left:
            reached |= ids
    return reached


def _item(record: dict[str, Any]) -> ArchiveItem:
    return ArchiveItem(
        record_id=record["id"],
        record=record,
        category=record["category"],
        customer_id=record["customer_id"],
        updated_at=parse_utc(record["updated_at"]),
        parent_id=record.get("parent_id"),
    )


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _chunks(values: list[Any]) -> list[list[Any]]:
    return [values[i:i + _CHUNK] for i in range(0, len(values), _CHUNK)]
