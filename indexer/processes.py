"""Processes across both places: the active database and the archive catalog.

`ArchivistSource` answers the look-ups of `archivist.processes` from Archivist's own active
table and the store's catalog, so the grouping rules themselves stay independent of where
records live. A record archived but not yet deleted from the active database (a move under
way) counts as archived; a restored one that is active again counts as active, with its
restore time for the restore grace.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore, ArchiveStoreError, CatalogEntry
from archivist.active_db import ActiveLink, find_active, find_child_links, find_links
from archivist.processes import ACTIVE, Member, Process, find_processes, find_roots

MAX_PROCESS_VIEW = 1000


@dataclass
class ArchivistSource:
    """A `ProcessSource` over the active database (a session) and the archive catalog."""

    session: Session
    store: ArchiveStore

    def members(self, ids: Collection[str]) -> dict[str, Member]:
        """The known records among these ids."""
        ids = list(ids)
        return _combine(find_links(self.session, ids), self.store.entries(ids))

    def children(self, ids: Collection[str]) -> list[Member]:
        """The known records whose `parent_id` is one of these ids."""
        links = {link.id: link for link in find_child_links(self.session, ids)}
        entries = {e.record_id: e for e in self.store.child_entries(ids)}
        # A child known on one side only may still be known on the other under another parent
        # (re-imported elsewhere after a restore): look that side up for those ids alone.
        links.update(find_links(self.session, entries.keys() - links.keys()))
        entries.update(self.store.entries(links.keys() - entries.keys()))
        return list(_combine(links, entries).values())


def _combine(
    active: dict[str, ActiveLink], catalog: dict[str, CatalogEntry]
) -> dict[str, Member]:
    out: dict[str, Member] = {}
    for record_id in {*active, *catalog}:
        entry = catalog.get(record_id)
        link = active.get(record_id)
        if entry is not None and entry.state == "archived":
            out[record_id] = Member(
                record_id, entry.parent_id, "archived", entry.category, entry.customer_id,
                entry.updated_at,
            )
        elif link is not None:
            restored_at = entry.restored_at if entry is not None else None
            out[record_id] = Member(
                record_id, link.parent_id, ACTIVE, link.category, link.customer_id,
                link.updated_at, restored_at,
            )
        elif entry is not None and entry.state == "restored":
            out[record_id] = Member(
                record_id, entry.parent_id, "restored", entry.category, entry.customer_id,
                entry.updated_at, entry.restored_at,
            )
    return out


def process_of(session: Session, store: ArchiveStore, record_id: str) -> Process | None:
    """The process a record belongs to, or None if the record is not known."""
    found = find_processes(ArchivistSource(session, store), [record_id])
    return found[0] if found else None


def find_archived_parents(store: ArchiveStore, ids: Collection[str]) -> dict[str, str | None]:
    """The `parent_id` of those ids the archive knows (archived or restored), for imports."""
    return {i: e.parent_id for i, e in store.entries(ids).items() if e.state != "purged"}


@dataclass
class CatalogSource:
    """A `ProcessSource` over the archive catalog alone (archived and restored records): what
    the index is built from, so that it can be rebuilt from the store alone."""

    store: ArchiveStore

    def members(self, ids: Collection[str]) -> dict[str, Member]:
        """The archived or restored records among these ids."""
        return _combine({}, self.store.entries(ids))

    def children(self, ids: Collection[str]) -> list[Member]:
        """The archived or restored records whose `parent_id` is one of these ids."""
        return list(_combine({}, {e.record_id: e for e in self.store.child_entries(ids)}).values())


def with_process_ids(
    store: ArchiveStore, records: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Copies of archived records carrying their process's root as `process_id`, as the index
    wants them (records with no parent skip the look-up: they are their own root)."""
    records = list(records)
    linked = [r["id"] for r in records if r.get("parent_id") is not None]
    roots = find_roots(CatalogSource(store), linked) if linked else {}
    return [{**r, "process_id": roots.get(r["id"], r["id"])} for r in records]


def index_roots(
    sessions: sessionmaker[Session], store: ArchiveStore, root_id: str
) -> tuple[str, ...]:
    """The roots the index gives the archived records of the process whose root is `root_id`.

    The index is built from the archive alone, so it roots a record at its top archived (or
    restored) ancestor. That is the process's root unless a record of the process is only in
    the active database (a parent imported after its children were archived): each archived
    part below it has its own top. Those are found by walking the process, as the record view
    does, but only when an active record hangs below the root's archived tree (the catalog's
    links, one query): a walk of a large process takes seconds. Empty when `root_id` is not
    the root of a process.
    """
    entry = store.entries([root_id]).get(root_id)
    with sessions.begin() as session:
        if entry is not None and entry.state == "archived":
            if entry.parent_id is not None and _known(session, store, entry.parent_id):
                return ()  # its parent is in the process: not its root
            if not find_child_links(session, store.tree_ids(root_id)):
                return (root_id,)  # nearly always: no active record below its archived tree
        process = process_of(session, store, root_id)
    if process is None or process.root != root_id:
        return ()
    archived = [m.id for m in process.members if m.state == "archived"]
    tops = find_roots(CatalogSource(store), archived) if archived else {}
    return tuple(sorted(set(tops.values())))


def _known(session: Session, store: ArchiveStore, record_id: str) -> bool:
    """Whether Archivist knows this record (active, archived or restored)."""
    return bool(ArchivistSource(session, store).members([record_id]))


def process_roots(
    sessions: sessionmaker[Session], store: ArchiveStore, tops: Collection[str]
) -> dict[str, str]:
    """The process root of each index root among `tops` whose own parent is known outside the
    archive (see `index_roots`); the others are their process's root already.

    :param tops: roots as the index holds them (a hit's `process_id`)
    """
    entries = store.entries(list(tops))
    above = [i for i, e in entries.items() if e.parent_id is not None]
    if not above:
        return {}
    with sessions.begin() as session:
        roots = find_roots(ArchivistSource(session, store), above)
    return {top: root for top, root in roots.items() if root != top}


@dataclass(frozen=True)
class ProcessNode:
    """One record of a process as the record view lists it."""

    id: str
    parent_id: str | None
    kind: str | None
    subject: str | None
    state: str


@dataclass(frozen=True)
class ProcessView:
    """A record's process: its root and up to `MAX_PROCESS_VIEW` records, parents first."""

    root: str
    records: list[ProcessNode]
    archived: int = 0  # of the whole process, listed or not: what a restore would bring back


def view_process(session: Session, store: ArchiveStore, record_id: str) -> ProcessView:
    """The process of a record for display: each member's kind and subject from wherever it
    lives now (a purged or erased one has none left), and its state (`active` once in the active
    database again)."""
    process = process_of(session, store, record_id)
    if process is None:  # purged or erased, so no longer known: a process of itself
        state = store.info(record_id).state
        return ProcessView(record_id, [ProcessNode(record_id, None, None, None, state)])
    members = process.members[:MAX_PROCESS_VIEW]
    active = find_active(session, [m.id for m in members if m.state == ACTIVE])
    nodes: list[ProcessNode] = []
    for member in members:
        record = active.get(member.id)
        if record is not None:
            nodes.append(ProcessNode(member.id, member.parent_id, record.kind, record.subject,
                                     ACTIVE))
            continue
        try:
            value = store.get(member.id)
        except ArchiveStoreError:
            value = {}
        nodes.append(ProcessNode(member.id, member.parent_id, value.get("kind"),
                                 value.get("subject"), member.state))
    archived = sum(1 for member in process.members if member.state == "archived")
    return ProcessView(process.root, nodes, archived)
