"""Purge with proof: each record a disposal run removes is written to the disposal list.

The due records are noted (unconfirmed) before the store purges them and confirmed after its
commit with the store's own purge time; records the store left alone (restored or purged
meanwhile) are dropped from the list. A crash in between leaves unconfirmed rows, which the
next run settles from the catalog, so the list holds exactly the records that were purged.
A purged CRM row is forgotten by the ledger of rows that left the CRM's tables in the same
transaction that confirms it: it is in neither place on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.crm_ledger import remove_members
from archivist.disposals import DueRecord, confirm_purged, note_due, unconfirmed
from archivist.retention import RetentionRules


def purge_with_proof(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    record_ids: Sequence[str],
    rules: RetentionRules,
    as_of: datetime,
    purged_at: datetime,
    actor: str,
    run_by: str,
    run_id: str | None = None,
) -> int:
    """Purge these archived records and list each purged one; returns how many were purged.

    :param record_ids: the records due for disposal (one chunk of a run)
    :param as_of: the run's `as_of`, kept with each row
    :param purged_at: the time stamped on the `purged` events
    :param actor: who the store records as purging them
    :param run_by: who ran the disposal (`cli`, `worker`), kept with each row
    :param run_id: groups the rows of one run (a new one if not given)
    """
    run_id = run_id or uuid.uuid4().hex
    entries = store.entries(record_ids)
    shas = store.hashes(i for i, e in entries.items() if e.state == "archived")
    due = []
    for record_id in record_ids:
        entry = entries.get(record_id)
        if entry is None or entry.state != "archived":
            continue
        own = entry.category in rules.categories
        due.append(DueRecord(
            record_id, shas[record_id], entry.category,
            f"category.{entry.category}" if own else "default",
            rules.policy_for(entry.category).keep_years,
        ))
    if not due:
        return 0
    with sessions.begin() as session:
        note_due(session, run_id, due, as_of, run_by)
    purged = store.purge([d.record_id for d in due], purged_at, actor)
    _confirm(sessions, store, run_id, [d.record_id for d in due])
    return purged


def settle_disposal_list(sessions: sessionmaker[Session], store: ArchiveStore) -> int:
    """Confirm or drop the rows a crashed run left unconfirmed; returns how many it settled."""
    with sessions.begin() as session:
        pending = unconfirmed(session)
    by_run: dict[str, list[str]] = {}
    for run_id, record_id in pending:
        by_run.setdefault(run_id, []).append(record_id)
    for run_id, record_ids in by_run.items():
        _confirm(sessions, store, run_id, record_ids)
    return len(pending)


def _confirm(
    sessions: sessionmaker[Session], store: ArchiveStore, run_id: str, record_ids: list[str]
) -> None:
    after = store.entries(record_ids)
    purged = {
        record_id: entry.purged_at
        for record_id, entry in after.items()
        if entry.state == "purged" and entry.purged_at is not None
    }
    with sessions.begin() as session:
        confirm_purged(session, run_id, purged, [i for i in record_ids if i not in purged])
        remove_members(session, purged)
