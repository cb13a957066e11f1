"""A record's process for the record view when the CRM's own tables are mapped.

The archive knows the rows a process was archived with; once they are restored, or when the
CRM adds rows to a restored process (or, in tables without foreign keys, under a row still
archived), the live rows are in the CRM's tables, which Archivist's own active table never
holds. So the view reads them there, and shows them `active`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from archive_store import ArchiveStore
from archivist.crm_rows import CrmTable, CrmTables
from archivist.processes import ACTIVE
from indexer.jobs.crm_archiver import CrmRow, load_children, load_processes
from indexer.processes import MAX_PROCESS_VIEW, ProcessNode, ProcessView, view_process
from indexer.services import Services


def view_record_process_now(services: Services, record_id: str) -> ProcessView:
    """The record's process with its live rows, read from the CRM's tables as the services
    found them; if the CRM changed them since (a column dropped), as they are now.

    :raises CrmTablesChanged: the mapping no longer fits the tables
    """
    with services.read_sessions.begin() as session:
        try:
            return view_record_process(session, services.store, services.crm, record_id)
        except DBAPIError as e:
            if services.crm is None or e.connection_invalidated:
                raise
    crm = services.crm_tables_now()
    with services.read_sessions.begin() as session:
        return view_record_process(session, services.store, crm, record_id)


def view_record_process(
    session: Session, store: ArchiveStore, crm: CrmTables | None, record_id: str
) -> ProcessView:
    """The process of a record as the record view lists it, wherever its active rows live.

    :param crm: the mapped CRM tables, or None when records live in Archivist's own table
    """
    view = view_process(session, store, record_id)
    if crm is None:
        return view
    seeds: dict[str, list[Any]] = defaultdict(list)
    archived: dict[CrmTable, list[Any]] = defaultdict(list)
    for node in view.records:
        crm_table = crm.table_of(node.id)
        if crm_table is None:
            continue
        key = crm_table.key_of(node.id)
        if node.state == "archived":
            archived[crm_table].append(key)
        else:
            seeds[crm_table.name].append(key)
    for row in load_children(session, archived):  # live rows the CRM added under archived ones
        seeds[row.table.name].append(row.key)
    if not seeds:
        return view
    live = {row.record_id: row for p in load_processes(session, crm, seeds) for row in p.rows}
    nodes = [_active(live.pop(node.id)) if node.id in live else node for node in view.records]
    nodes.extend(_active(row) for row in live.values())  # added by the CRM after the restore
    return ProcessView(view.root, _parents_first(nodes)[:MAX_PROCESS_VIEW], view.archived)


def _active(row: CrmRow) -> ProcessNode:
    return ProcessNode(
        row.record_id, row.parent_id, row.record.get("kind"), row.record.get("subject"), ACTIVE
    )


def _parents_first(nodes: list[ProcessNode]) -> list[ProcessNode]:
    """The nodes by depth in their tree, in their order within a depth (a stable sort)."""
    parent_of = {node.id: node.parent_id for node in nodes}

    def depth(node_id: str) -> int:
        seen = {node_id}
        parent = parent_of.get(node_id)
        while parent is not None and parent in parent_of and parent not in seen:
            seen.add(parent)
            parent = parent_of[parent]
        return len(seen) - 1

    return sorted(nodes, key=lambda node: depth(node.id))
