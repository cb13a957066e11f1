"""Bulk restore into wherever the installation keeps its active records."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from indexer.errors import AlreadyActive
from indexer.jobs.crm_restore import current_crm_tables, restore_crm_many
from indexer.jobs.restore import BulkRestoreReport, drop_unindexed_restores, restore_many
from indexer.services import Services


def restore_in_bulk(
    services: Services,
    record_ids: Iterable[str],
    actor: str,
    now: datetime,
    reason: str,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BulkRestoreReport:
    """Restore these archived records with the rest of their processes: into the CRM's own
    tables when `[[active.table]]` maps them, else into Archivist's own table.

    :param limit: more matching ids than this raises `TooMany`, and nothing is restored.
    :param progress: called after each step with the records it restored and the total.
    """
    if services.crm is not None:
        report = restore_crm_many(
            services.sessions, services.store, services.index, current_crm_tables(services),
            record_ids,
            actor, now, reason, dry_run=dry_run, limit=limit, progress=progress,
        )
    else:
        report = restore_many(
            services.sessions, services.store, services.index, record_ids, actor, now, reason,
            dry_run=dry_run, limit=limit, progress=progress,
        )
    if not dry_run:  # restored by a killed restore, maybe, and still found with its process
        drop_unindexed_restores(
            services.store, services.index,
            [s.id for s in report.skipped if s.code == AlreadyActive.code],
        )
    return report
