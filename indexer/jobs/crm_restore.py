"""Restore into the CRM's own tables: an archived process goes back as the rows it was.

Every archived record of the process is marked `pending` insert first; the rows are inserted in
one transaction, parents before children, with the same primary key and every column written
explicitly but the generated ones (so column defaults do not apply; INSERT triggers fire, as
for any insert, and may change what is written). A key taken again by the CRM meanwhile makes
the whole process `already_active`; any other refusal of the database, or a row not in its
table after its INSERT, `restore_refused`; either way with nothing written.
The insert's transaction also takes the records out of the ledger of rows that left
(`archived_process_members`): `reconcile_crm_pending` settles a restore a crash interrupted by
whether they are still in it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore, NotArchived, RecordNotFound, RestoreInProgress
from archive_store.faults import crash_point
from archivist.crm_ledger import process_members, remove_members
from archivist.crm_rows import (
    CrmTable,
    CrmTables,
    database_reason,
    find_crm_ids,
    insert_statement,
    insert_values,
    record_to_row,
    stored_as_is,
    text_columns,
)
from indexer.errors import AlreadyActive, CrmTablesChanged, RestoreRefused, TooMany
from indexer.jobs.crm_archiver import (
    CrmRow,
    archived_tree,
    group_processes,
    reconcile_crm_pending,
    row_depths,
)
from indexer.jobs.indexing import drop_restored
from indexer.jobs.reconcile import restores_asked_for
from indexer.jobs.restore import (
    BulkRestoreReport,
    Skipped,
    drop_unindexed_restores,
    out_of_search,
)
from indexer.search import SearchEngine
from indexer.services import Services


def current_crm_tables(services: Services) -> CrmTables:
    """The mapped tables as the CRM has them now, for a restore: the rows go back into the
    columns the tables have today, not those they had when the server or worker started.

    :raises RestoreRefused: the mapping no longer fits the tables (a mapped table or column
        is gone).
    """
    try:
        return services.crm_tables_now()
    except CrmTablesChanged as e:
        raise RestoreRefused(str(e)) from None


def restore_crm_process(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    crm: CrmTables,
    record_id: str,
    actor: str,
    now: datetime,
    reason: str | None = None,
) -> list[str]:
    """Restore an archived record and every archived record of its process into the CRM's
    tables; returns the ids restored, parents before children.

    :raises RecordNotFound: the id was never archived.
    :raises NotArchived: it is restored or purged already.
    :raises RestoreInProgress: another restore of it is under way.
    :raises AlreadyActive: a key of the process is taken again in the CRM's tables.
    :raises RestoreRefused: the tables refuse a row for another reason (a constraint).
    """
    try:
        return _restore_crm_process(sessions, store, index, crm, record_id, actor, now, reason)
    except RestoreInProgress:
        # The mark may be a crashed run's leftover rather than a move under way: settle
        # (which waits for moves under way to end), then try once more.
        completed = _settle(sessions, store, index, crm, now)
        finished = restores_asked_for(store, completed, [record_id])
        if finished:  # an interrupted restore of this process: this one completed it
            return finished[0]
        return _restore_crm_process(sessions, store, index, crm, record_id, actor, now, reason)


def _settle(
    sessions: sessionmaker[Session], store: ArchiveStore, index: SearchEngine | None,
    crm: CrmTables, now: datetime,
) -> list[str]:
    """Settle pending moves; returns the records whose interrupted restore this completed,
    out of search already."""
    return out_of_search(store, index, reconcile_crm_pending(sessions, store, crm, now).restored)


def _restore_crm_process(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    crm: CrmTables,
    record_id: str,
    actor: str,
    now: datetime,
    reason: str | None,
) -> list[str]:
    try:
        entry = store.info(record_id)  # RecordNotFound before anything else
    except RecordNotFound:
        with sessions.begin() as session:
            if find_crm_ids(session, crm, [record_id]):  # not archived, as a restored one
                raise AlreadyActive(
                    f"record {record_id} is in the CRM's tables and was never archived"
                ) from None
        raise
    if entry.state != "archived":
        drop_unindexed_restores(store, index, [record_id])
        raise NotArchived(f"record {record_id} is {entry.state}, not archived")
    with sessions.begin() as session:
        members = _process(session, store, record_id)
    # members restored or purged on their own since are not brought back with the rest
    entries = store.entries(members)
    group = [m for m in members if m in entries and entries[m].state == "archived"]
    unsettled: Exception | None = None
    restored: list[str] = []
    with store.moving():
        problem = store.begin_restores([group])[0]
        if problem is not None:
            failed, code = problem
            error = {"not_found": RecordNotFound, "not_archived": NotArchived}.get(
                code, RestoreInProgress
            )
            raise error(f"record {failed!r} cannot be restored ({code}); "
                        f"nothing of the process of {record_id!r} was restored")
        rows = _rows(crm, {m: store.get(m) for m in group})
        ordered = [row for process in group_processes(rows) for row in process.rows]
        try:
            with sessions.begin() as session:
                _insert(session, ordered)
                remove_members(session, group)
                crash_point("restore.after_insert")
        except (AlreadyActive, RestoreRefused):
            store.abort_restores(group)
            raise
        except Exception as e:
            unsettled = e
        else:
            crash_point("restore.after_commit")
            restored = [row.record_id for row in ordered]
            store.complete_restores(restored, now, actor, reason)
            crash_point("restore.before_index")
    if unsettled is not None:
        reconcile_crm_pending(sessions, store, crm, now)
        raise unsettled
    if index is not None:
        drop_restored(store, index, [row.record for row in ordered])
    return restored


def restore_crm_many(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    crm: CrmTables,
    record_ids: Iterable[str],
    actor: str,
    now: datetime,
    reason: str,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BulkRestoreReport:
    """Restore these archived records with the rest of their processes, a process at a time;
    the records that cannot be restored are skipped and listed with their code."""
    ids = list(dict.fromkeys(record_ids))
    if limit is not None and len(ids) > limit:
        raise TooMany(
            f"{len(ids)} records match, more than the {limit} one request may restore; "
            "narrow the search or use `archivist restore`"
        )
    report = BulkRestoreReport(matched=len(ids), dry_run=dry_run)
    entries = store.entries(ids)
    finished: set[str] = set()
    if not dry_run and any(e.pending is not None for e in entries.values()):
        # A mark may be a crashed run's leftover rather than a move under way: settle (which
        # waits for moves under way to end) before planning, as a single restore does. An
        # interrupted restore of the processes asked for is completed: restored by this one.
        completed = _settle(sessions, store, index, crm, now)
        for group in restores_asked_for(store, completed, ids):
            report.restored.extend(group)
            report.processes += 1
            finished.update(group)
        entries = store.entries(ids)
    groups: dict[str, list[str]] = {}
    asked: dict[str, list[str]] = {}  # the requested ids of each group, by its first one
    group_of: dict[str, str] = {}  # each planned member's group
    with sessions.begin() as session:
        live = find_crm_ids(session, crm, [i for i in ids if i not in entries])
        for record_id in ids:
            if record_id in finished:
                continue
            entry = entries.get(record_id)
            code = (
                ("already_active" if record_id in live else "not_found") if entry is None
                else "already_active" if entry.state == "restored"
                else "not_archived" if entry.state != "archived"
                else "restore_in_progress" if entry.pending is not None
                else None
            )
            if code is not None:
                report.skipped.append(Skipped(record_id, code))
                continue
            if record_id in group_of:
                asked[group_of[record_id]].append(record_id)
                continue
            groups[record_id] = _process(session, store, record_id)
            for member in groups[record_id]:
                group_of.setdefault(member, record_id)
            asked[record_id] = [record_id]
    planned = sum(len(group) for group in groups.values())
    if dry_run:
        report.restored = [i for group in groups.values() for i in group]
        report.processes = len(groups)
        return report
    for record_id in groups:
        try:
            restored = restore_crm_process(
                sessions, store, index, crm, record_id, actor, now, reason
            )
        except (AlreadyActive, RestoreRefused, NotArchived, RecordNotFound,
                RestoreInProgress) as e:
            # every id asked for in the process is listed: none of it was restored
            report.skipped.extend(Skipped(i, e.code, str(e)) for i in asked[record_id])
            continue
        report.restored.extend(restored)
        report.processes += 1
        if progress is not None:
            progress(len(restored), planned)
    return report


def _process(session: Session, store: ArchiveStore, record_id: str) -> list[str]:
    """The records of an archived record's process: those that left the CRM with it, and
    those archived before or after under the same root (a table without a foreign key lets
    the CRM add rows under an archived one)."""
    tree = [entry.record_id for entry in archived_tree(store, record_id)]
    return list(dict.fromkeys([*process_members(session, record_id), *tree]))


def _rows(crm: CrmTables, records: dict[str, dict[str, Any]]) -> list[CrmRow]:
    rows = []
    for record_id, record in records.items():
        crm_table = crm.table_of(record_id)
        if crm_table is None:
            raise RestoreRefused(f"record {record_id!r} belongs to no mapped table")
        rows.append(CrmRow(crm_table, crm_table.key_of(record_id), record))
    return rows


def _insert(session: Session, rows: Sequence[CrmRow]) -> None:
    """Insert the rows (parents first, as ordered); refuse the lot if any key is taken, if
    the database refuses a row, or if a row is not in its table afterwards."""
    by_table: dict[CrmTable, list[CrmRow]] = defaultdict(list)
    for row in rows:
        by_table[row.table].append(row)
    for crm_table, members in by_table.items():
        taken = _present_keys(session, crm_table, [row.key for row in members])
        if taken:
            raise AlreadyActive(
                f"record {crm_table.record_id(taken[0])!r}: {crm_table.name} holds a row with "
                "its key again; the process was not restored over it"
            )
    _insert_rows(session, rows)
    for crm_table, members in by_table.items():
        there = {crm_table.record_id(k) for k in _present_keys(
            session, crm_table, [row.key for row in members])}
        missing = [row.record_id for row in members if row.record_id not in there]
        if missing:  # a BEFORE INSERT trigger returned NULL, or changed the key
            raise RestoreRefused(
                f"{crm_table.name} did not keep the restored row of record {missing[0]!r} "
                "(an INSERT trigger or rule skipped or changed it); the process was not restored"
            )


def _present_keys(session: Session, crm_table: CrmTable, keys: list[Any]) -> list[Any]:
    """Which of these keys the table holds."""
    key_column = crm_table.key_column
    found: list[Any] = []
    for start in range(0, len(keys), 500):
        stmt = select(key_column).where(key_column.in_(keys[start:start + 500]))
        found.extend(session.scalars(stmt))
    return found


def _insert_rows(session: Session, rows: Sequence[CrmRow]) -> None:
    """INSERT the rows, a statement per depth, table and shape of row."""
    depth = row_depths(rows)
    ordered = sorted(rows, key=lambda row: depth[row.record_id])  # stable: parents first
    for (_, crm_table), group in groupby(ordered, key=lambda r: (depth[r.record_id], r.table)):
        members = list(group)
        try:
            values = [
                (insert_values(crm_table, record_to_row(crm_table, row.record)),
                 text_columns(row.record), stored_as_is(row.record))
                for row in members
            ]
        except ValueError as e:
            raise RestoreRefused(str(e)) from None

        def shape(value: tuple[dict[str, Any], frozenset[str], bool]) -> tuple[Any, ...]:
            return tuple(value[0]), value[1], value[2]

        for (columns, as_text, as_stored), same in groupby(values, key=shape):
            params = [{f"v_{k}": v for k, v in row.items()} for row, _, _ in same]
            try:
                session.execute(
                    insert_statement(crm_table, columns, as_text, as_stored), params
                )
            except IntegrityError as e:
                raise _refusal(e, crm_table) from None
            except DBAPIError as e:  # a trigger raised, a type the value no longer fits, ...
                if e.connection_invalidated:
                    raise
                raise RestoreRefused(
                    f"{crm_table.name} refuses a row of the process ({database_reason(e)}); "
                    "the process was not restored"
                ) from None


def _refusal(e: IntegrityError, crm_table: CrmTable) -> Exception:
    diag = getattr(e.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or "a constraint"
    key_constraint = crm_table.table.primary_key.name
    # The keys were checked free just before: a clash on the key itself is a row the CRM made
    # meanwhile (`already_active`); any other unique column is a refusal like a `CHECK`.
    if getattr(e.orig, "sqlstate", None) == "23505" and (
        key_constraint is None or constraint == key_constraint
    ):
        return AlreadyActive(
            f"{crm_table.name} refuses a row of the process ({constraint} is taken); "
            "the process was not restored"
        )
    return RestoreRefused(
        f"{crm_table.name} refuses a row of the process ({constraint}); "
        "the process was not restored"
    )
