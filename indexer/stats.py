"""The counts behind `archivist stats` and `/api/v1/stats`."""

from __future__ import annotations

from typing import Any

from archivist.active_db import count_active, find_active_ids
from archivist.crm_rows import count_crm_rows, find_crm_ids
from archivist.records import format_utc
from indexer.jobs.runs import last_run
from indexer.services import Services


def collect_stats(services: Services) -> dict[str, Any]:
    """Counts of active, archived, indexed, restored and purged records, and the last run.

    A record whose move is under way, either way (archived, its active row not deleted yet;
    or restored, its row inserted before the catalog says so; or left so by a crash until the
    next run settles it), counts where its row is: as active while the row is there, else as
    archived. The same holds with the CRM's own tables, by their rows.
    """
    # The catalog first, then the active database in one read: a record the catalog counts
    # as moving is counted where its row is then, so a batch moving meanwhile is not counted
    # twice, and one whose active delete committed before a crash is counted as archived.
    counts, moving = services.store.counts_and_moving()
    with services.read_sessions.begin() as session:
        if services.crm is None:
            active = count_active(session)
            still_active = len(find_active_ids(session, moving))
        else:
            active = count_crm_rows(session, services.crm)
            still_active = len(find_crm_ids(session, services.crm, moving))
    run = last_run(services, "archive")
    return {
        "active": active,
        "archived": counts["archived"] - still_active,
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
