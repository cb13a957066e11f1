"""The demo data set: generate, import and archive it once into an empty installation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from archivist.active_db import count_active
from archivist.demo_data import generate_records
from archivist.importer import import_lines
from indexer.jobs.runs import run_archive_job
from indexer.services import Services


@dataclass(frozen=True)
class DemoSetup:
    """What loading the demo did; `loaded` is False when the installation already had data."""

    loaded: bool
    imported: int = 0
    archived: int = 0


def load_demo(services: Services, count: int, now: datetime) -> DemoSetup:
    """Import `count` generated records and archive the aged ones, unless data is already there."""
    with services.sessions.begin() as session:
        active = count_active(session)
    counts = services.store.counts()
    if active or counts["archived"] or counts["restored"] or counts["purged"]:
        return DemoSetup(loaded=False)
    lines = (json.dumps(r, ensure_ascii=False).encode() for r in generate_records(count, now=now))
    report = import_lines(lines, services.sessions, services.store.find_archived)
    archived = run_archive_job(services, now)
    return DemoSetup(True, report.imported, archived.archived)
