"""Finish moves between the active database and the archive that a crash interrupted.

The store marks a record `pending` before the active database changes; whatever state the
active database reached decides how the move ends, so a record is never in both places or none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.active_db import delete_records, find_active
from archivist.processes import find_processes
from archivist.records import record_from_json
from indexer.processes import ArchivistSource, CatalogSource

ACTOR = "reconcile"


@dataclass(frozen=True)
class Settlement:
    """What settling pending moves did."""

    moves: int  # records whose pending mark it settled
    restored: list[str]  # the records whose interrupted restore it completed


def restores_asked_for(
    store: ArchiveStore, completed: list[str], asked: Iterable[str]
) -> list[list[str]]:
    """The interrupted restores a settling completed that the ids asked for belong to, one
    group per process (a restore brings a process back whole): the completed records grouped
    by the root their parent links in the catalog lead to (the last parent named, when the
    root never left the active database).

    :param completed: the ids whose restore the settling completed (`Settlement.restored`)
    :param asked: the ids a restore was asked for
    """
    wanted = set(completed).intersection(asked)
    if not wanted:
        return []
    parents: dict[str, str | None] = {}
    looking = set(completed)
    while looking:
        found = store.entries(looking)
        parents.update((i, found[i].parent_id if i in found else None) for i in looking)
        looking = {p for p in parents.values() if p is not None and p not in parents}

    def root(record_id: str) -> str:
        seen = {record_id}
        while (parent := parents.get(record_id)) is not None and parent not in seen:
            seen.add(parent)
            record_id = parent
        return record_id

    groups: dict[str, list[str]] = {}
    for record_id in completed:
        groups.setdefault(root(record_id), []).append(record_id)
    return [group for group in groups.values() if wanted.intersection(group)]


def restores_that_reached(
    store: ArchiveStore, inserting: dict[str, bool], missing: Iterable[str] = ()
) -> set[str]:
    """Of the records an interrupted restore was putting back, those the restore did put back.

    A row equal to its archived copy is the restore's own. A changed one may be the restore's,
    edited since, or another record that took the id: a process goes back in one transaction,
    so another record of its process found as archived proves its restore committed. A record
    of such a process with no row went back too, and was deleted by the CRM since: its restore
    is over (left archived, its process would be split between the CRM and the archive).

    :param inserting: each such id with an active row, and whether it equals its archived copy
    :param missing: each such id without an active row
    """
    missing = set(missing)
    reached = {record_id for record_id, same in inserting.items() if same}
    if len(reached) == len(inserting) and not (reached and missing):
        return reached
    candidates = inserting.keys() | missing
    for process in find_processes(CatalogSource(store), sorted(candidates)):
        ids = {member.id for member in process.members}
        if ids & reached:
            reached |= ids & candidates
    return reached


def live_processes(store: ArchiveStore, kept: Iterable[str]) -> set[str]:
    """Every record of the processes (by the catalog's links) of records a settling keeps
    active: a move is whole or not at all, so a record of theirs whose row the CRM deleted
    meanwhile is not left archived beside them."""
    kept = list(kept)
    if not kept:
        return set()
    return {m.id for process in find_processes(CatalogSource(store), kept)
            for m in process.members}


KEPT_ACTIVE = "the process changed in the active database while it was being archived"


def reconcile_pending(sessions: sessionmaker[Session], store: ArchiveStore, now: datetime) -> int:
    """Settle every pending move; returns how many records it settled."""
    return settle_pending(sessions, store, now).moves


def settle_pending(
    sessions: sessionmaker[Session], store: ArchiveStore, now: datetime
) -> Settlement:
    """Settle every pending move, saying which interrupted restores it completed."""
    with store.settling():  # moves under way finish first, and no new one begins
        return _settle(sessions, store, now)


def _settle(sessions: sessionmaker[Session], store: ArchiveStore, now: datetime) -> Settlement:
    pending = list(store.iter_pending())
    if not pending:
        return Settlement(0, [])
    settled_delete: list[str] = []
    kept: list[str] = []  # their process stays active: the records never left
    restored: list[str] = []
    with sessions.begin() as session:
        active = find_active(session, [entry.record_id for entry in pending])
        archived_of = {e.record_id: record_from_json(store.get(e.record_id)) for e in pending}
        changed = [
            e.record_id for e in pending
            if e.pending == "delete_active"
            and (current := active.get(e.record_id)) is not None
            and current != archived_of[e.record_id]
        ]
        # A process is moved whole or not at all: if the CRM changed one of its records
        # meanwhile, the others stay active with it.
        keep_whole: set[str] = set()
        if changed:
            for process in find_processes(ArchivistSource(session, store), changed):
                keep_whole.update(process.ids)
        inserting = [e.record_id for e in pending if e.pending == "insert_active"]
        reached = restores_that_reached(store, {
            record_id: active[record_id] == archived_of[record_id]
            for record_id in inserting if record_id in active
        }, missing=[record_id for record_id in inserting if record_id not in active])
        for entry in pending:
            archived = archived_of[entry.record_id]
            current = active.get(entry.record_id)
            if entry.pending == "delete_active":
                if current is None and entry.record_id in keep_whole:
                    # deleted by hand while the rest of its process stays active with it
                    kept.append(entry.record_id)
                elif current is None:  # the delete committed; only the mark is left
                    settled_delete.append(entry.record_id)
                elif current == archived and entry.record_id not in keep_whole:
                    # archived, not yet deleted: finish the move
                    delete_records(session, [(current.id, current.updated_at)])
                    settled_delete.append(entry.record_id)
                else:  # the CRM changed it meanwhile: the active version is the live one
                    kept.append(entry.record_id)
            elif entry.pending == "insert_active":
                if entry.record_id in reached:  # the restore reached the active database
                    store.complete_restore(entry.record_id, now, ACTOR)
                    restored.append(entry.record_id)
                else:
                    store.abort_restore(entry.record_id)
    # as a run that did not crash says so: live, with no restore grace, since they never left
    store.complete_restores(kept, now, ACTOR, KEPT_ACTIVE, grace=False)
    store.clear_pending(settled_delete)
    return Settlement(len(pending), restored)
