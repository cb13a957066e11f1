"""Restore: put archived processes back into the active database, each exactly once and whole.

Restoring any archived record restores every archived record of its process, as one
recoverable operation: the store marks them all `pending` in one commit; the active inserts
commit in one transaction; then one store write appends a `restored` event to each. A crash
anywhere is settled by `reconcile_pending`, which looks at the active database: the inserts
either all committed or none did. Two restores reaching one process: the second finds the
marks (or the new state) and fails with a 409-class error. Bulk restores run the same steps
for many processes a batch at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from archive_store import ArchiveStore, CatalogEntry
from archive_store.errors import NotArchived, RecordNotFound, RestoreInProgress
from archive_store.faults import crash_point
from archivist.active_db import find_active_ids, find_child_links, insert_records
from archivist.processes import Process, find_processes
from archivist.records import Record, record_from_json
from indexer.errors import AlreadyActive, IndexerError, TooMany
from indexer.jobs.collector import collector_paused
from indexer.jobs.indexing import drop_restored
from indexer.jobs.reconcile import reconcile_pending, restores_asked_for, settle_pending
from indexer.processes import ArchivistSource, CatalogSource, process_of
from indexer.search import SearchEngine

log = logging.getLogger(__name__)

ARCHIVED = "archived"
BULK_BATCH = 2000  # records restored per step of a bulk restore
_ERRORS = {
    RecordNotFound.code: RecordNotFound,
    NotArchived.code: NotArchived,
    RestoreInProgress.code: RestoreInProgress,
    AlreadyActive.code: AlreadyActive,
}

_REASONS = {
    RecordNotFound.code: "was never archived",
    NotArchived.code: "is not archived",
    RestoreInProgress.code: "has a move in progress",
    AlreadyActive.code: "already exists in the active database; it was not restored over it",
}


@dataclass(frozen=True)
class Skipped:
    """A requested record that could not be restored, and why (an error code, and the error's
    message when there is more to say than the code)."""

    id: str
    code: str
    reason: str = ""


@dataclass
class BulkRestoreReport:
    """What a bulk restore did (or, in a dry run, would do)."""

    matched: int = 0
    restored: list[str] = field(default_factory=list)
    processes: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    dry_run: bool = False

    @property
    def plan_digest(self) -> str:
        """Names which records this restore takes back: a confirmation shows a dry run's
        count, and the restore it confirms goes ahead only if its plan still has this digest."""
        return hashlib.sha256("\n".join(sorted(self.restored)).encode()).hexdigest()


class PlanChanged(IndexerError):
    """The records a confirmed bulk restore would take back are not those the confirmation
    showed (records archived, restored or erased since): nothing was restored."""

    code = "plan_changed"

    def __init__(self, message: str, plan: BulkRestoreReport) -> None:
        super().__init__(message)
        self.plan = plan  # the restore's plan now (a dry run's report), to confirm again


def restore_record(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    record_id: str,
    actor: str,
    now: datetime,
    reason: str | None = None,
) -> Record:
    """Restore an archived record with the rest of its process; returns the record itself."""
    restored = restore_process(sessions, store, index, record_id, actor, now, reason)
    return next(r for r in restored if r.id == record_id)


def restore_process(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    record_id: str,
    actor: str,
    now: datetime,
    reason: str | None = None,
) -> list[Record]:
    """Restore every archived record of a record's process and drop them from search.

    :raises RecordNotFound: no record has the id (never archived, not active).
    :raises NotArchived: it is restored or purged already.
    :raises RestoreInProgress: another restore of it (or of its process) is under way.
    :raises AlreadyActive: the active database already holds a record with one of the ids
        (the id's own included, never archived).
    """
    try:
        return _restore_process(sessions, store, index, record_id, actor, now, reason)
    except RestoreInProgress:
        # The mark may be a crashed run's leftover rather than a move under way: settle
        # (which waits for moves under way to end), then try once more.
        completed = out_of_search(store, index, settle_pending(sessions, store, now).restored)
        finished = restores_asked_for(store, completed, [record_id])
        if finished:  # an interrupted restore of this process: this one completed it
            return [record_from_json(store.get(i)) for i in finished[0]]
        return _restore_process(sessions, store, index, record_id, actor, now, reason)


def out_of_search(
    store: ArchiveStore, index: SearchEngine | None, completed: list[str]
) -> list[str]:
    """Take the records whose interrupted restore a settling completed out of search now,
    not at the next catch-up; returns their ids."""
    if index is not None and completed:
        drop_restored(store, index, list(store.get_many(completed).values()))
    return completed


def drop_unindexed_restores(
    store: ArchiveStore, index: SearchEngine | None, record_ids: Iterable[str]
) -> None:
    """Take the processes of these records out of search if a killed restore left them there.

    A restore killed after the catalog marked its records restored, before it took them out
    of the index, leaves them found until the next catch-up; a retry finds them restored
    (`already_active`) and would restore nothing. Their processes are looked up by the
    catalog's links, which a restore keeps, wherever the active records live.
    """
    ids = list(record_ids)
    if index is None or not any(_left_in_search(e) for e in store.entries(ids).values()):
        return
    members = {m.id for p in find_processes(CatalogSource(store), ids) for m in p.members}
    out_of_search(store, index, [
        record_id for record_id, entry in store.entries(members).items()
        if _left_in_search(entry)
    ])


def _left_in_search(entry: CatalogEntry) -> bool:
    return entry.state == "restored" and not entry.indexed


def _restore_process(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    record_id: str,
    actor: str,
    now: datetime,
    reason: str | None,
) -> list[Record]:
    try:
        entry = store.info(record_id)
    except RecordNotFound:
        with sessions.begin() as session:
            if find_active_ids(session, [record_id]):  # not archived, as a restored one
                raise AlreadyActive(
                    f"record {record_id} is in the active database and was never archived"
                ) from None
        raise
    if entry.state != ARCHIVED:
        drop_unindexed_restores(store, index, [record_id])
        raise NotArchived(f"record {record_id} is {entry.state}, not archived")
    with sessions.begin() as session:
        process = process_of(session, store, record_id)
    group = _archived_ids(process) if process is not None else [record_id]
    if record_id not in group:  # archived a moment ago by a batch still moving it
        raise RestoreInProgress(f"record {record_id} has a move in progress")
    restored, skipped = _restore_groups(sessions, store, index, [group], actor, now, reason)
    if skipped:
        problem = skipped[0]
        why = _REASONS.get(problem.code, problem.code)
        raise _ERRORS.get(problem.code, RestoreInProgress)(
            f"record {problem.id!r} {why}; nothing of the process of {record_id!r} was restored"
        )
    # A batch of the archive job may have moved the rest of the process meanwhile: bring it
    # back too, so the process is not left split.
    with sessions.begin() as session:
        again = process_of(session, store, record_id)
    rest = _archived_ids(again) if again is not None else []
    if rest:
        more, _ = _restore_groups(sessions, store, index, [rest], actor, now, reason)
        # a record restored, archived again meanwhile and restored again is listed once
        restored = list({r.id: r for r in [*restored, *more]}.values())
    return restored


def restore_many(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    record_ids: Iterable[str],
    actor: str,
    now: datetime,
    reason: str,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    batch_size: int = BULK_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> BulkRestoreReport:
    """Restore these archived records with the rest of their processes, a batch at a time.

    Records that cannot be restored are skipped and listed with a code (`not_found`,
    `already_active`, `not_archived`, `restore_in_progress`); the others are restored.

    :param limit: more matching ids than this raises `TooMany`, and nothing is restored.
    :param progress: called after each batch with the records it restored and the total
        planned (the matching records with the rest of their processes).
    """
    ids = list(dict.fromkeys(record_ids))
    if limit is not None and len(ids) > limit:
        raise TooMany(
            f"{len(ids)} records match, more than the {limit} one request may restore; "
            "narrow the search or use `archivist restore`"
        )
    report = BulkRestoreReport(matched=len(ids), dry_run=dry_run)
    groups, skipped = _plan_groups(sessions, store, ids)
    if not dry_run and any(s.code == RestoreInProgress.code for s in skipped):
        # A mark may be a crashed run's leftover rather than a move under way: settle (which
        # waits for moves under way to end) and plan again, as a single restore does. An
        # interrupted restore of the processes asked for is completed: restored by this one.
        completed = out_of_search(store, index, settle_pending(sessions, store, now).restored)
        groups, skipped = _plan_groups(sessions, store, ids)
        finished = restores_asked_for(store, completed, ids)
        report.restored.extend(i for group in finished for i in group)
        report.processes += len(finished)
        done = set(report.restored)
        skipped = [s for s in skipped if s.id not in done]
    report.skipped.extend(skipped)
    planned = sum(len(group) for group in groups)
    if dry_run:
        report.restored = [i for group in groups for i in group]
        report.processes = len(groups)
        return report
    batch: list[list[str]] = []
    size = 0
    for group in [*groups, None]:
        if group is not None:
            batch.append(group)
            size += len(group)
        if batch and (group is None or size >= batch_size):
            with collector_paused():
                restored, problems = _restore_groups(
                    sessions, store, index, batch, actor, now, reason
                )
            report.restored.extend(r.id for r in restored)
            report.processes += len(batch) - len(problems)
            report.skipped.extend(_as_requested(problems, batch, ids))
            if progress is not None:
                progress(len(restored), planned)
            batch, size = [], 0
    # A batch of the archive job may have moved more of these processes meanwhile (a record
    # still active when they were planned): bring those back too, as a single restore does.
    rest = _left_behind(sessions, store, report.restored)
    if rest:
        with collector_paused():
            restored, _ = _restore_groups(sessions, store, index, rest, actor, now, reason)
        report.restored.extend(r.id for r in restored)
        # a record restored, archived again meanwhile and restored again is listed once
        report.restored = list(dict.fromkeys(report.restored))
    return report


def _as_requested(
    problems: list[Skipped], groups: list[list[str]], requested: list[str]
) -> list[Skipped]:
    """The skipped groups named by the ids the caller asked for in them: a group's obstacle
    may be another record of its process (its root, marked by another restore)."""
    wanted = set(requested)
    group_of = {i: group for group in groups for i in group}
    named: list[Skipped] = []
    for problem in problems:
        asked = [i for i in group_of.get(problem.id, [problem.id]) if i in wanted]
        named.extend(replace(problem, id=i) for i in asked or [problem.id])
    return named


def _left_behind(
    sessions: sessionmaker[Session], store: ArchiveStore, restored: list[str]
) -> list[list[str]]:
    """The records still archived in the processes of these restored records, a group per
    process (records of their own, with no parent and no children, need no walk)."""
    groups: list[list[str]] = []
    roots: set[str] = set()
    walked: set[str] = set()  # members of the processes walked: one walk per process
    with sessions.begin() as session:
        source = ArchivistSource(session, store)
        for start in range(0, len(restored), 1000):
            chunk = [i for i in restored[start : start + 1000] if i not in walked]
            entries = store.entries(chunk)
            linked = {e.parent_id for e in store.child_entries(chunk)}
            walk = [
                i for i in chunk
                if i in linked or (i in entries and entries[i].parent_id is not None)
            ]
            for process in find_processes(source, walk) if walk else []:
                walked.update(m.id for m in process.members)
                rest = _archived_ids(process)
                if rest and process.root not in roots:
                    roots.add(process.root)
                    groups.append(rest)
    return groups


def _archived_ids(process: Process) -> list[str]:
    return [m.id for m in process.members if m.state == ARCHIVED]


def _plan_groups(
    sessions: sessionmaker[Session], store: ArchiveStore, ids: list[str]
) -> tuple[list[list[str]], list[Skipped]]:
    """The archived records of the ids' processes, a group per process, and the ids skipped."""
    groups: list[list[str]] = []
    skipped: list[Skipped] = []
    roots: set[str] = set()
    walked: set[str] = set()  # members of the processes walked: one walk per process
    with sessions.begin() as session:
        source = ArchivistSource(session, store)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            entries = store.entries(chunk)
            active = set(find_active_ids(session, [i for i in chunk if i not in entries]))
            ready = []
            for record_id in chunk:
                entry = entries.get(record_id)
                if entry is None:  # never archived: active (as a restored one) or unknown
                    code = AlreadyActive.code if record_id in active else RecordNotFound.code
                    skipped.append(Skipped(record_id, code))
                elif entry.state == "restored":
                    skipped.append(Skipped(record_id, AlreadyActive.code))
                elif entry.state != ARCHIVED:
                    skipped.append(Skipped(record_id, NotArchived.code))
                elif entry.pending is not None:
                    skipped.append(Skipped(record_id, RestoreInProgress.code))
                else:
                    ready.append(record_id)
            # A record with no parent and no children is a process of its own: no walk.
            linked = {e.parent_id for e in store.child_entries(ready)}
            linked.update(link.parent_id for link in find_child_links(session, ready))
            alone = [i for i in ready if entries[i].parent_id is None and i not in linked]
            for record_id in alone:
                roots.add(record_id)
                groups.append([record_id])
            single = set(alone)
            others = [i for i in ready if i not in single and i not in walked]
            for process in find_processes(source, others) if others else []:
                walked.update(m.id for m in process.members)
                if process.root not in roots:
                    roots.add(process.root)
                    groups.append(_archived_ids(process))
    return groups, skipped


def _restore_groups(
    sessions: sessionmaker[Session],
    store: ArchiveStore,
    index: SearchEngine | None,
    groups: Sequence[list[str]],
    actor: str,
    now: datetime,
    reason: str | None,
) -> tuple[list[Record], list[Skipped]]:
    """Restore whole groups (processes) in one pass: mark, insert, complete, leave search.

    A group with any record that cannot be restored is skipped whole (its first obstacle is
    returned), the others are restored.
    """
    skipped: list[Skipped] = []
    unsettled: Exception | None = None
    with store.moving():  # shared: an archive batch may be moving other records meanwhile
        problems = store.begin_restores(groups)
        crash_point("restore.after_mark")
        marked = []
        for group, problem in zip(groups, problems, strict=True):
            if problem is None:
                marked.append(group)
            else:
                skipped.append(Skipped(*problem))
        values = store.read_many([i for group in marked for i in group])
        records = {i: record_from_json(values[i][0]) for group in marked for i in group}
        try:
            with sessions.begin() as session:
                present = set(find_active_ids(session, list(records)))
                keep = []
                for group in marked:
                    clash = next((i for i in group if i in present), None)
                    if clash is None:
                        keep.append(group)
                    else:
                        skipped.append(Skipped(clash, AlreadyActive.code))
                insert_records(session, [records[i] for group in keep for i in group])
                crash_point("restore.before_insert_commit")
        except IntegrityError:  # inserted by the CRM between our check and our insert
            store.abort_restores(list(records))
            raise AlreadyActive(
                "a record being restored appeared in the active database meanwhile; "
                "nothing of this batch was restored"
            ) from None
        except Exception as e:
            unsettled = e
        else:
            ids = [i for group in keep for i in group]
            kept = set(ids)
            dropped = [i for i in records if i not in kept]
            if dropped:
                store.abort_restores(dropped)
            crash_point("restore.after_insert")
            store.complete_restores(
                ids, now, actor, reason, hashes={i: values[i][1] for i in ids}
            )
            crash_point("restore.before_index")
    if unsettled is not None:
        # The insert may or may not have committed (e.g. the connection dropped during
        # COMMIT): reconcile looks at the active database and settles it, now or later. It
        # holds the move lock alone, so only once this restore has let go of it.
        reconcile_pending(sessions, store, now)
        raise unsettled
    restored = [records[i] for i in ids]
    if index is not None and restored:
        drop_restored(store, index, [r.to_json() for r in restored])
    return restored, skipped
