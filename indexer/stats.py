"""The counts behind `archivist stats` and `/api/v1/stats`."""

from __future__ import annotations

from typing import Any

from archivist.active_db import count_active
from archivist.crm_rows import count_crm_rows
from archivist.records import format_utc
from indexer.jobs.runs import last_run
from indexer.services import Services


def collect_stats(services: Services) -> dict[str, Any]:
    """Counts of active, archived, indexed, restored and purged records, and the last run."""
    with services.read_sessions.begin() as session:
        active = (
            count_active(session) if services.crm is None
            else count_crm_rows(session, services.crm)
        )
    counts = services.store.counts()
    run = last_run(services, "archive")
    return {
        "active": active,
        "archived": counts["archived"],
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
