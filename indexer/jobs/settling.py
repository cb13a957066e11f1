"""Settle what an earlier crash left behind, before a job does anything new.

A run killed part-way can leave moves half done (records marked `pending` in the store) and
index changes not applied yet (archived records not searchable, restored or purged ones still
found). Every job run (archive, dispose, restore, the worker's start) calls `settle_leftovers`
first, so a crash is repaired by whatever runs next, not only by `archivist index`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.crm_rows import CrmTables
from indexer.jobs.crm_archiver import reconcile_crm_pending
from indexer.jobs.indexing import sync_index
from indexer.jobs.reconcile import reconcile_pending
from indexer.search import SearchEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """What settling found to finish: moves settled, index changes applied."""

    moves: int = 0
    indexed: int = 0


def reconcile_moves(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    now: datetime,
    crm: CrmTables | None = None,
) -> int:
    """Settle every pending move by where the installation keeps its active records: the
    CRM's own tables when mapped (Archivist's own table is empty then), else that table.

    :param crm: the CRM's mapped tables as they are now (`Services.reflect_crm`), if any
    :returns: how many records it settled
    """
    if crm is not None:
        return reconcile_crm_pending(sessions, store, crm, now).moves
    return reconcile_pending(sessions, store, now)


def settle_leftovers(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine,
    now: datetime,
    *,
    crm: CrmTables | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Settled:
    """Finish interrupted moves, then apply every index change the index does not reflect.

    Cheap when there is nothing to settle (two indexed catalog queries).

    :param now: the real clock, stamped on restores that reconcile completes.
    :param crm: the CRM's mapped tables as they are now, if any (see `reconcile_moves`)
    :param should_stop: checked between index batches (a stopping worker).
    """
    moves = reconcile_moves(sessions, store, now, crm)
    indexed = sync_index(store, index, should_stop=should_stop)
    if moves or indexed:
        log.info("settled an earlier run's leftovers: %d moves, %d index changes", moves, indexed)
    return Settled(moves, indexed)
