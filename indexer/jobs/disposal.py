"""Disposal at the end of retention: archived records past `keep_years` are removed for good."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.holds import load_hold_set
from archivist.retention import RetentionRules, disposal_cutoff, is_due_for_disposal

ACTOR = "disposal"
PURGE_CHUNK = 5000


@dataclass(frozen=True)
class DisposalReport:
    """What one disposal run removed (or, in a dry run, would remove)."""

    purged: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def find_due_for_disposal(
    sessions: sessionmaker[Session], store: ArchiveStore, rules: RetentionRules, as_of: datetime
) -> list[tuple[str, str]]:
    """(record id, category) of every archived record past its keep time and not on hold."""
    with sessions.begin() as session:
        holds = load_hold_set(session)
    policies = [rules.default, *rules.categories.values()]
    latest_cutoff = max(disposal_cutoff(policy, as_of) for policy in policies)
    due = []
    for entry in store.iter_catalog(state="archived", updated_before=latest_cutoff):
        policy = rules.policy_for(entry.category)
        if not is_due_for_disposal(entry.updated_at, policy, as_of):
            continue
        if holds.covers(entry.record_id, entry.customer_id, entry.category):
            continue
        due.append((entry.record_id, entry.category))
    return due


def dispose_due_records(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    rules: RetentionRules,
    as_of: datetime,
    purged_at: datetime,
    *,
    dry_run: bool = False,
) -> DisposalReport:
    """Purge every archived record due for disposal at `as_of` and not under legal hold.

    :param purged_at: the time stamped on the `purged` events (the real clock).
    """
    due = find_due_for_disposal(sessions, store, rules, as_of)
    by_category = dict(sorted(Counter(category for _, category in due).items()))
    if dry_run:
        return DisposalReport(len(due), by_category, dry_run=True)
    purged = 0
    ids = [record_id for record_id, _ in due]
    for start in range(0, len(ids), PURGE_CHUNK):
        purged += store.purge(ids[start : start + PURGE_CHUNK], purged_at, ACTOR)
    return DisposalReport(purged, by_category)
