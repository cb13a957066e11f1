"""Restore into the CRM's own tables: an archived process goes back as the rows it was.

Every archived record of the process is marked `pending` insert first; the rows are inserted in
one transaction, parents before children, with the same primary key and every column written
explicitly (so column defaults do not apply; INSERT triggers fire, as for any insert, and may
change what is written). A key taken again by the CRM meanwhile makes the whole process
`already_active`, with nothing written. `reconcile_crm_pending` settles a restore a crash
interrupted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore, NotArchived, RecordNotFound
from archive_store.faults import crash_point
from archivist.crm_ledger import process_members, remove_members
from archivist.crm_rows import CrmTable, CrmTables, insert_statement, record_to_row
from indexer.crm_archiver import CrmRow, group_processes, reconcile_crm_pending
from indexer.errors import AlreadyActive, RestoreRefused
from indexer.index import SearchIndex


def restore_crm_process(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchIndex | None,
    crm: CrmTables,
    record_id: str,
    actor: str,
    now: datetime,
) -> list[str]:
    """Restore an archived record and every archived record of its process into the CRM's
    tables; returns the ids restored, root first.

    :raises RecordNotFound: the id was never archived.
    :raises NotArchived: it is restored or purged already.
    :raises RestoreInProgress: another restore of it is under way.
    :raises AlreadyActive: a key of the process is taken again in the CRM's tables.
    """
    store.info(record_id)  # RecordNotFound before anything else
    with sessions.begin() as session:
        members = process_members(session, record_id)
    unsettled: Exception | None = None
    restored: list[str] = []
    with store.moving():
        entries = {}
        try:
            for member in members:
                try:
                    entries[member] = store.begin_restore(member)
                except (NotArchived, RecordNotFound):
                    if member == record_id:
                        raise
                    # restored or purged on its own: the rest of the process still comes back
        except BaseException:
            for member in entries:
                store.abort_restore(member)
            raise
        rows = _rows(crm, {m: store.get(m) for m in entries})
        ordered = [row for process in group_processes(rows) for row in process.rows]
        try:
            with sessions.begin() as session:
                _insert(session, ordered)
                remove_members(session, entries)
                crash_point("restore.after_insert")
        except (AlreadyActive, RestoreRefused):
            for member in entries:
                store.abort_restore(member)
            raise
        except Exception as e:
            unsettled = e
        else:
            crash_point("restore.after_commit")
            for row in ordered:
                store.complete_restore(row.record_id, now, actor)
            restored = [row.record_id for row in ordered]
    if unsettled is not None:
        reconcile_crm_pending(sessions, store, crm, now)
        raise unsettled
    if index is not None:  # leave search now, not at the next catch-up
        with store.indexing():
            current = [store.get(rid) for rid in restored]
            index.delete(restored, current=current)
            store.mark_indexed([(rid, entries[rid].version, "restored") for rid in restored])
    return restored


def _rows(crm: CrmTables, records: dict[str, dict[str, Any]]) -> list[CrmRow]:
    rows = []
    for record_id, record in records.items():
        crm_table = crm.table_of(record_id)
        if crm_table is None:
            raise RestoreRefused(f"record {record_id!r} belongs to no mapped table")
        rows.append(CrmRow(crm_table, crm_table.key_of(record_id), record))
    return rows


def _insert(session: Session, rows: Sequence[CrmRow]) -> None:
    """Insert the rows (parents first, as ordered); refuse the lot if any key is taken."""
    by_table: dict[CrmTable, list[CrmRow]] = defaultdict(list)
    for row in rows:
        by_table[row.table].append(row)
    for crm_table, members in by_table.items():
        keys = [row.key for row in members]
        key_column = crm_table.key_column
        for start in range(0, len(keys), 500):
            stmt = select(key_column).where(key_column.in_(keys[start:start + 500]))
            taken = session.scalars(stmt).first()
            if taken is not None:
                raise AlreadyActive(
                    f"record {crm_table.record_id(taken)!r}: {crm_table.name} holds a row with "
                    "its key again; the process was not restored over it"
                )
    depth = {row.record_id: _depth(row, rows) for row in rows}
    ordered = sorted(rows, key=lambda row: depth[row.record_id])  # stable: parents first
    for (_, crm_table), group in groupby(ordered, key=lambda r: (depth[r.record_id], r.table)):
        members = list(group)
        try:
            values = [record_to_row(crm_table, row.record) for row in members]
        except ValueError as e:
            raise RestoreRefused(str(e)) from None
        def columns_of(value: dict[str, Any]) -> tuple[str, ...]:
            return tuple(value)

        for columns, same in groupby(values, key=columns_of):
            params = [{f"v_{k}": v for k, v in row.items()} for row in same]
            try:
                session.execute(insert_statement(crm_table, columns), params)
            except IntegrityError as e:
                raise _refusal(e, crm_table) from None


def _depth(row: CrmRow, rows: Sequence[CrmRow]) -> int:
    parents = {r.record_id: r.parent_id for r in rows}
    depth, parent = 0, row.parent_id
    while parent is not None and parent in parents and depth <= len(rows):
        depth, parent = depth + 1, parents[parent]
    return depth


def _refusal(e: IntegrityError, crm_table: CrmTable) -> Exception:
    diag = getattr(e.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or "a constraint"
    if getattr(e.orig, "sqlstate", None) == "23505":  # unique_violation
        return AlreadyActive(
            f"{crm_table.name} refuses a row of the process ({constraint} is taken); "
            "the process was not restored"
        )
    return RestoreRefused(
        f"{crm_table.name} refuses a row of the process ({constraint}); "
        "the process was not restored"
    )
