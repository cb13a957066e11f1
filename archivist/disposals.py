"""The disposal list: which records each disposal run purged, with hash, category and policy.

It is the proof of disposal an auditor reads and exports. It holds no record content: the
SHA-256 of a purged record matches the `purged` event the archive store keeps in its chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from archivist.active_db import Disposal

CSV_COLUMNS = (
    "record_id", "sha256", "category", "policy", "keep_years", "as_of", "purged_at", "actor",
    "run_id",
)


@dataclass(frozen=True)
class DueRecord:
    """A record a run is about to purge, and the policy that made it due."""

    record_id: str
    sha256: str
    category: str
    policy: str
    keep_years: int


@dataclass(frozen=True)
class DisposalEntry:
    """One purged record in the disposal list."""

    record_id: str
    sha256: str
    category: str
    policy: str
    keep_years: int
    as_of: datetime
    purged_at: datetime
    actor: str
    run_id: str


@dataclass(frozen=True)
class DisposalFilter:
    """What `list_disposals` selects: purge times (inclusive), a category, a run, a page."""

    date_from: datetime | None = None
    date_to: datetime | None = None
    category: str | None = None
    run_id: str | None = None
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class DisposalPage:
    """One page of the disposal list, newest first, and how many match in all."""

    total: int
    page: int
    per_page: int
    disposals: list[DisposalEntry]


def note_due(
    session: Session, run_id: str, records: Sequence[DueRecord], as_of: datetime, actor: str
) -> None:
    """Write the records a run is about to purge, not yet confirmed (before the purge)."""
    session.execute(
        insert(Disposal),
        [
            {
                "run_id": run_id, "record_id": r.record_id, "sha256": r.sha256,
                "category": r.category, "policy": r.policy, "keep_years": r.keep_years,
                "as_of": as_of, "purged_at": None, "actor": actor,
            }
            for r in records
        ],
    )


def confirm_purged(
    session: Session, run_id: str, purged: dict[str, datetime], not_purged: Iterable[str]
) -> None:
    """After the store's commit: stamp the purged records, drop the ones it left alone.

    :param purged: record id -> the time the store says it was purged
    :param not_purged: ids noted as due that the store did not purge (changed meanwhile)
    """
    if purged:
        # The run's rows by key, then one UPDATE run for them all (executemany): a statement
        # per row that finds its row by run and record took seconds per thousand rows.
        rows = session.execute(
            select(Disposal.id, Disposal.record_id).where(
                Disposal.run_id == run_id, Disposal.purged_at.is_(None)
            )
        )
        stamps = [{"key": key, "at": purged[rid]} for key, rid in rows if rid in purged]
        if stamps:
            session.connection().execute(
                update(Disposal).where(Disposal.id == bindparam("key"))
                .values(purged_at=bindparam("at")),
                stamps,
            )
    dropped = list(not_purged)
    for start in range(0, len(dropped), 500):
        session.execute(
            delete(Disposal).where(
                Disposal.run_id == run_id,
                Disposal.purged_at.is_(None),
                Disposal.record_id.in_(dropped[start : start + 500]),
            )
        )


def unconfirmed(session: Session, limit: int | None = None) -> list[tuple[str, str]]:
    """`(run_id, record_id)` of rows a crashed run left between note and confirmation."""
    rows = session.execute(
        select(Disposal.run_id, Disposal.record_id).where(Disposal.purged_at.is_(None))
        .limit(limit)
    )
    return [(run_id, record_id) for run_id, record_id in rows]


def _conditions(session: Session, selection: DisposalFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Disposal.purged_at.is_not(None)]
    if selection.date_from is not None:
        conditions.append(Disposal.purged_at >= selection.date_from)
    if selection.date_to is not None:
        conditions.append(Disposal.purged_at <= selection.date_to)
    if selection.category is not None:
        conditions.append(Disposal.category.in_(_spellings(session, selection.category)))
    if selection.run_id is not None:
        conditions.append(Disposal.run_id == selection.run_id)
    return conditions


def _spellings(session: Session, category: str) -> list[str]:
    """The categories in the list that are `category` in any case, as search's category filter
    and holds compare them (case-folded: SQL's `lower()` folds only ASCII letters in SQLite)."""
    wanted = category.casefold()
    return [
        name for name in session.scalars(select(Disposal.category).distinct())
        if name.casefold() == wanted
    ]


def _entry(row: Disposal) -> DisposalEntry:
    assert row.purged_at is not None  # only confirmed rows are selected
    return DisposalEntry(
        row.record_id, row.sha256, row.category, row.policy, row.keep_years, row.as_of,
        row.purged_at, row.actor, row.run_id,
    )


def list_disposals(session: Session, selection: DisposalFilter) -> DisposalPage:
    """One page of the purged records that match, newest first."""
    conditions = _conditions(session, selection)
    total = session.scalar(select(func.count()).select_from(Disposal).where(*conditions)) or 0
    rows = session.scalars(
        select(Disposal)
        .where(*conditions)
        .order_by(Disposal.id.desc())
        .offset((selection.page - 1) * selection.per_page)
        .limit(selection.per_page)
    )
    return DisposalPage(total, selection.page, selection.per_page, [_entry(r) for r in rows])


def iter_disposals(
    session: Session, selection: DisposalFilter, batch_size: int = 1000
) -> Iterator[DisposalEntry]:
    """Every purged record that matches (paging ignored), newest first as `list_disposals`
    gives them, in batches by id."""
    conditions = _conditions(session, selection)
    last: int | None = None
    while True:
        rows = list(session.scalars(
            select(Disposal)
            .where(*conditions, *([] if last is None else [Disposal.id < last]))
            .order_by(Disposal.id.desc())
            .limit(batch_size)
        ))
        yield from (_entry(r) for r in rows)
        if len(rows) < batch_size:
            return
        last = rows[-1].id
