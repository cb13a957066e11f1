"""The demo data set: generate, import and archive it once into an empty installation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from archivist.active_db import count_active
from archivist.demo_data import generate_demo_records
from archivist.importer import import_lines
from archivist.tokens import (
    list_tokens,
    replace_token,
    revocation_ledger_path,
    revoke_token,
)
from indexer.jobs.runs import run_archive_job
from indexer.processes import find_archived_parents
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
    records = generate_demo_records(count, now=now)
    lines = (json.dumps(r, ensure_ascii=False).encode() for r in records)
    report = import_lines(
        lines,
        services.sessions,
        services.store.find_archived,
        find_archived_parents=partial(find_archived_parents, services.store),
    )
    archived = run_archive_job(services, now)
    return DemoSetup(True, report.imported, archived.archived)


DEMO_TOKEN_NAME = "demo-admin"


def demo_admin_token(services: Services, now: datetime) -> str:
    """The demo's admin token, given a new secret on each start rather than added again.

    Tokens that earlier versions made on every start (`demo-admin-<time>`) are revoked.
    """
    ledger = revocation_ledger_path(services.config.key_file)
    with services.sessions.begin() as session:
        for token in list_tokens(session):
            stamp = token.name.removeprefix(f"{DEMO_TOKEN_NAME}-")
            if stamp != token.name and stamp.isdigit() and token.revoked_at is None:
                revoke_token(session, token.name, now, ledger)
        return replace_token(session, DEMO_TOKEN_NAME, "admin", now, ledger)
