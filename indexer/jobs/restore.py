"""One-click restore: put an archived record back into the active database, exactly once.

The store marks the record `pending` first; the active insert commits; then the store appends
the `restored` event. `reconcile_pending` finishes or undoes a restore a crash interrupted, so
the record is never in both places or none. Two restores of one record: the second finds the
mark (or the new state) and fails with a 409-class error.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore
from archivist.active_db import find_active, insert_record
from archivist.records import Record, record_from_json
from indexer.errors import AlreadyActive
from indexer.jobs.reconcile import reconcile_pending
from indexer.search import SearchEngine


def restore_record(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    record_id: str,
    actor: str,
    now: datetime,
) -> Record:
    """Restore one archived record to the active database and drop it from search.

    :raises RecordNotFound: the id was never archived.
    :raises NotArchived: it is restored or purged already.
    :raises RestoreInProgress: another restore of it is under way.
    :raises AlreadyActive: the active database already holds a record with this id.
    """
    unsettled: Exception | None = None
    with store.moving():  # shared: an archive batch may be moving other records meanwhile
        entry = store.begin_restore(record_id)
        stored = store.get(record_id)
        record = record_from_json(stored)
        try:
            with sessions.begin() as session:
                if find_active(session, [record_id]):
                    raise AlreadyActive(
                        f"record {record_id!r} already exists in the active database; "
                        "it was not restored over it"
                    )
                insert_record(session, record)
        except AlreadyActive:
            store.abort_restore(record_id)
            raise
        except IntegrityError:  # inserted by the CRM between our check and our insert
            store.abort_restore(record_id)
            raise AlreadyActive(
                f"record {record_id!r} already exists in the active database"
            ) from None
        except Exception as e:
            unsettled = e
        else:
            store.complete_restore(record_id, now, actor)
    if unsettled is not None:
        # The insert may or may not have committed (e.g. the connection dropped during
        # COMMIT): reconcile looks at the active database and settles it, now or later. It
        # holds the move lock alone, so only once this restore has let go of it.
        reconcile_pending(sessions, store, now)
        raise unsettled
    if index is not None:  # leave search now, not at the next catch-up
        with store.indexing():
            index.delete([record_id], current=[stored])
            store.mark_indexed([(record_id, entry.version, "restored")])
    return record
