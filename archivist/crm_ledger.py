"""Archivist's own bookkeeping for the CRM's tables, kept in the active database beside them.

- `archived_process_members`: which process each archived CRM row left with, and the catalog
  entry (`seq`) of the version it left as, written in the same transaction as the row's delete
  and removed in the same transaction as its restore, so a restore finds every archived record
  of the process exactly as it left, and settling a move a crash interrupted can tell whether
  its transaction committed: an entry of another version (one since disposed of or erased, or
  one an earlier version wrote without its `seq`) tells nothing about this move;
- `job_run_blocks`: the rows an archive run left in place because something outside the mapping
  still references them, with the constraint's name, beside the run's `job_runs` row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import BigInteger, Index, Integer, String, delete, insert, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped, Session, mapped_column

from archivist.active_db import Base


class ArchivedProcessMember(Base):
    """One archived CRM row, the root of the process it was archived with, and the catalog
    entry of the version it left as (None in an entry an earlier version wrote)."""

    __tablename__ = "archived_process_members"

    record_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    root_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_archived_process_root", "root_id"),)


class JobRunBlock(Base):
    """A row an archive run did not move, and the foreign key that kept it."""

    __tablename__ = "job_run_blocks"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    record_id: Mapped[str] = mapped_column(String(128))
    constraint_name: Mapped[str] = mapped_column(String(256))
    referencing_table: Mapped[str] = mapped_column(String(256))


def add_seq_column(engine: Engine) -> None:
    """Give a ledger an earlier version made the `seq` column (idempotent); its entries keep
    none, and tell nothing about a move to settle."""
    name = ArchivedProcessMember.__tablename__
    if not _lacks_seq(engine):
        return
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN seq BIGINT")
    except DBAPIError:
        if _lacks_seq(engine):
            raise  # (not a process starting at the same moment that added it first)


def _lacks_seq(engine: Engine) -> bool:
    inspector = inspect(engine)
    name = ArchivedProcessMember.__tablename__
    return inspector.has_table(name) and "seq" not in {
        column["name"] for column in inspector.get_columns(name)
    }


def add_members(session: Session, members: Sequence[tuple[str, str, int | None]]) -> None:
    """Remember (record_id, root_id, seq) of rows that have just left for the archive, `seq`
    the catalog entry of the version each left as."""
    if not members:
        return
    ids = [record_id for record_id, _, _ in members]
    for start in range(0, len(ids), 500):  # a batch of large processes holds 100,000s of rows:
        # one IN list of them all is past what a statement may bind (65,535 on PostgreSQL)
        session.execute(delete(ArchivedProcessMember).where(
            ArchivedProcessMember.record_id.in_(ids[start:start + 500])
        ))
    session.execute(
        insert(ArchivedProcessMember),
        [{"record_id": record_id, "root_id": root_id, "seq": seq}
         for record_id, root_id, seq in members],
    )


def process_members(session: Session, record_id: str) -> list[str]:
    """Every archived record of the process `record_id` was archived with (itself included)."""
    root = session.scalar(
        select(ArchivedProcessMember.root_id).where(ArchivedProcessMember.record_id == record_id)
    )
    if root is None:
        return [record_id]
    stmt = select(ArchivedProcessMember.record_id).where(ArchivedProcessMember.root_id == root)
    members = list(session.scalars(stmt))
    return members if record_id in members else [record_id, *members]


def find_members(session: Session, record_ids: Iterable[str]) -> dict[str, int | None] | None:
    """Which of these records the ledger holds, with the catalog entry of the version each
    left as: that version's delete committed, and no restore of them has since. None in a
    database without the ledger (an installation from before it), where it tells nothing."""
    if not inspect(session.connection()).has_table(ArchivedProcessMember.__tablename__):
        return None
    ids = list(record_ids)
    found: dict[str, int | None] = {}
    for start in range(0, len(ids), 500):
        stmt = select(ArchivedProcessMember.record_id, ArchivedProcessMember.seq).where(
            ArchivedProcessMember.record_id.in_(ids[start:start + 500])
        )
        found.update((record_id, seq) for record_id, seq in session.execute(stmt))
    return found


def remove_members(session: Session, record_ids: Iterable[str]) -> None:
    """Forget rows that are back in the CRM's tables."""
    ids = list(record_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        session.execute(
            delete(ArchivedProcessMember).where(ArchivedProcessMember.record_id.in_(chunk))
        )


def record_blocks(
    session: Session, job_run_id: int | None, blocks: Iterable[tuple[str, str, str]]
) -> None:
    """Write (record_id, constraint, referencing table) of the rows a run left in place."""
    rows = [
        {"job_run_id": job_run_id, "record_id": r, "constraint_name": c, "referencing_table": t}
        for r, c, t in blocks
    ]
    if rows:
        session.execute(insert(JobRunBlock), rows)
