"""A recovery beside the CRM's own tables: the CRM's rows are not in a backup, so what moved
between the CRM and the archive since the backup was taken is checked against the live tables
and the live ledger of rows that left them (`archived_process_members`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from archive_store.backup import archived_in_backup
from archivist.crm_ledger import ArchivedProcessMember, remove_members
from archivist.crm_rows import find_crm_ids
from indexer.jobs.reconcile import ACTOR as RECONCILE_ACTOR
from indexer.services import Services


def mark_live_crm_rows_restored(services: Services, at: datetime) -> int:
    """With the CRM's own tables, a row restored into its table after the backup was taken is
    archived in the recovered store and live in the CRM: it is marked restored (the CRM holds
    it), so that no record is in both places. Returns how many."""
    crm = services.crm
    assert crm is not None
    archived = [entry.record_id for entry in services.store.iter_catalog(state="archived")]
    with services.read_sessions.begin() as session:
        live = sorted(find_crm_ids(session, crm, archived))
    if live:
        services.store.complete_restores(
            live, at, RECONCILE_ACTOR, "live in the CRM's tables when a backup was recovered"
        )
        with services.sessions.begin() as session:
            remove_members(session, live)
    return len(live)


def crm_rows_lost_by(services: Services, backup: Path) -> list[str]:
    """With the CRM's own tables mapped, the rows the live ledger says left the CRM for the
    archive that the backup does not hold archived: they are in neither place once it is
    recovered. Besides the rows archived after it was taken, that is a row the backup holds
    restored (in the CRM then, and expected there after the recovery) that left again since.
    Rows disposed of or erased since are in neither place on purpose, and not counted. Sorted
    record ids.

    :param backup: the backup folder
    """
    with services.read_sessions.begin() as session:
        members = list(session.scalars(select(ArchivedProcessMember.record_id)))
    # (an earlier version kept rows it disposed of or erased in the ledger; a row the live
    # catalog lacks is counted, as where the archive itself was lost)
    gone = {
        record_id for record_id, entry in services.store.entries(members).items()
        if entry.state in ("purged", "erased")
    }
    members = sorted(m for m in members if m not in gone)
    if not members:
        return []
    held = archived_in_backup(backup, members)
    return [m for m in members if m not in held]


def describe_lost_crm_rows(lost: list[str]) -> str:
    """What recovering would lose of the CRM's rows, in a sentence."""
    return (
        f"{len(lost)} CRM rows left their tables for the archive after this backup was "
        f"taken (first: {lost[0]}); recovering it would leave them in neither place"
    )
