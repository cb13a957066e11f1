"""The counts behind `archivist stats` and `/api/v1/stats`."""

from __future__ import annotations

from typing import Any

from archivist.active_db import count_active
from archivist.crm_rows import count_crm_rows
from archivist.records import format_utc
from indexer.jobs.runs import last_run
from indexer.services import Services


def collect_stats(services: Services) -> dict[str, Any]:
    """Counts of active, archived, indexed, restored and purged records, and the last run.

    A record whose move is under way (stored, its active row not deleted yet, or left so by a
    crash until the next run settles it) counts as active only, where it still is: never in
    both counts.
    """
    counts = services.store.counts()
    with services.read_sessions.begin() as session:
        active = (
            count_active(session) if services.crm is None
            else count_crm_rows(session, services.crm)
        )
    run = last_run(services, "archive")
    return {
        "active": active,
        "archived": counts["archived"] - counts["moving"],
        "indexed": counts["indexed"],
        "restored": counts["restored"],
        "purged": counts["purged"],
        "last_run": None
        if run is None
        else {
            "started_at": format_utc(run.started_at),
            "finished_at": None if run.finished_at is None else format_utc(run.finished_at),
            "archived": run.archived,
            "error": run.error,
        },
    }
