"""How far the archive store's catalog had committed, as the active database last saw it.

An archive run commits its records to the catalog before it deletes them from the active
database: the delete's transaction writes here the catalog's newest entry, so that a catalog
that later ends before it has lost committed writes (its `catalog.db-wal` deleted, or an older
copy of `catalog.db` put back), and the records of those writes would be in neither place.
Opening the archive then refuses (see `indexer.services`), before the store would take the
segment data only the lost writes name for a crashed writer's leftovers and delete it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from archivist.active_db import Base


class ArchiveHead(Base):
    """One row: the newest catalog entry an archive run's delete was committed after."""

    __tablename__ = "archive_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


def note_archive_head(session: Session, seq: int) -> None:
    """Raise the recorded head to `seq` (never lower it), in the caller's transaction.

    :param session: the transaction that deletes records the catalog has just committed
    :param seq: a catalog entry committed before this transaction
    """
    if session.get(ArchiveHead, 1) is None:
        session.add(ArchiveHead(id=1, seq=seq))
        session.flush()
        return
    session.execute(
        update(ArchiveHead).where(ArchiveHead.id == 1, ArchiveHead.seq < seq).values(seq=seq)
    )


def set_archive_head(session: Session, seq: int) -> None:
    """Set the recorded head to `seq`, lower too: after a recovery from a backup the catalog
    is the backup's, and its entries are numbered from there again.

    :param session: a transaction of the caller's
    :param seq: the recovered catalog's newest entry
    """
    row = session.get(ArchiveHead, 1)
    if row is None:
        session.add(ArchiveHead(id=1, seq=seq))
    else:
        row.seq = seq


def recorded_archive_head(connection: Connection) -> int:
    """The recorded head, 0 when none was recorded (or the database is from before it)."""
    if not inspect(connection).has_table(ArchiveHead.__tablename__):
        return 0
    return int(connection.execute(select(ArchiveHead.seq).where(ArchiveHead.id == 1)).scalar() or 0)


def add_archive_head(engine: Engine) -> None:
    """Create the table and its row where missing (idempotent), at every start: writers then
    only update the row, and two first runs cannot both insert it."""
    ArchiveHead.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    with engine.begin() as connection:
        if connection.execute(select(ArchiveHead.id)).first() is None:
            connection.execute(insert(ArchiveHead).values(id=1, seq=0))
