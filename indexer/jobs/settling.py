"""Settle what an earlier crash left behind, before a job does anything new.

A run killed part-way can leave moves half done (records marked `pending` in the store),
index changes not applied yet (archived records not searchable, restored or purged ones still
found), disposal-list rows unconfirmed (records purged, not yet listed) and index segments
written aside and never attached (which may hold records erased since). Every job run
(archive, dispose, restore, the worker's start) calls `settle_leftovers` first, so a crash is
repaired by whatever runs next, not only by `archivist index`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import inspect

from archivist.active_db import Disposal
from archivist.disposals import unconfirmed
from indexer.jobs.crm_archiver import reconcile_crm_pending
from indexer.jobs.disposal_proof import settle_disposal_list
from indexer.jobs.indexing import sync_index
from indexer.jobs.reconcile import reconcile_pending
from indexer.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """What settling found to finish: moves settled, index changes applied, disposal-list
    rows confirmed or dropped."""

    moves: int = 0
    indexed: int = 0
    disposals: int = 0


def reconcile_moves(services: Services, now: datetime) -> int:
    """Settle every pending move by where the installation keeps its active records: the
    CRM's own tables when mapped (Archivist's own table is empty then), read as they are now,
    else that table.

    :returns: how many records it settled
    :raises CrmTablesChanged: a move to settle, and the mapping no longer fits the tables
    """
    if services.crm is None:
        return reconcile_pending(services.sessions, services.store, now)
    if not services.store.has_pending():
        return 0  # (the tables need not be read, nor fit the mapping)
    return reconcile_crm_pending(
        services.sessions, services.store, services.crm_tables_now(), now
    ).moves


def settle_leftovers(
    services: Services,
    now: datetime,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> Settled:
    """Finish interrupted moves, then apply every index change the index does not reflect.

    Cheap when there is nothing to settle (two indexed catalog queries).

    :param now: the real clock, stamped on restores that reconcile completes.
    :param should_stop: checked between index batches (a stopping worker).
    """
    moves = reconcile_moves(services, now)
    services.index.remove_abandoned()  # a killed run's staged segments and merges
    indexed = sync_index(services.store, services.index, should_stop=should_stop)
    disposals = settle_disposals(services)
    if moves or indexed or disposals:
        # (index changes may be another job's under way, not an earlier run's: caught up)
        log.info(
            "caught up before the run: %d moves settled, %d index changes applied, "
            "%d disposal-list rows settled", moves, indexed, disposals,
        )
    return Settled(moves, indexed, disposals)


def settle_disposals(services: Services) -> int:
    """Complete the disposal list a killed disposal run left unconfirmed (its records purged,
    or not), unless a disposal run is under way: those rows are its own.

    :returns: how many rows it settled
    """
    if services.store.read_only or not inspect(services.engine).has_table(Disposal.__tablename__):
        return 0  # (a database from before the disposal list: nothing to settle)
    with services.read_sessions.begin() as session:
        if not unconfirmed(session, limit=1):
            return 0
    with services.store.disposing().held_if_free() as free:
        return settle_disposal_list(services.sessions, services.store) if free else 0
