"""The jobs the worker and the CLI run, each recorded as a `JobRun` for stats."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from archivist.active_db import JobRun, create_schema, utcnow
from archivist.audit import AuditEvent, write_audit
from archivist.leases import process_gone, this_process
from archivist.records import Record, format_utc
from indexer.jobs.archiver import ArchiveReport, archive_due_records, preview_archive
from indexer.jobs.crm_archiver import CrmArchiveReport, archive_crm_tables
from indexer.jobs.disposal import DisposalReport, dispose_due_records
from indexer.jobs.erasure import finish_interrupted_erasures
from indexer.jobs.indexing import scrub_gone_since, sync_index
from indexer.jobs.settling import settle_leftovers
from indexer.jobs.verification import require_readable_index
from indexer.services import Services

log = logging.getLogger(__name__)


def run_archive_job(
    services: Services,
    as_of: datetime,
    *,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> ArchiveReport:
    """Run the archiving job once (or preview it) and record the run.

    :raises IndexUnavailable: the index is missing or damaged; nothing was moved
    """
    config = services.config
    if not dry_run:
        # Refused before anything moves: records moved into the store could not be indexed.
        require_readable_index(services.index)
        # an erasure a crash left half-done is finished before anything moves
        finish_interrupted_erasures(services, utcnow())
    if services.crm is not None:
        return _run_crm_archive_job(services, as_of, dry_run=dry_run, should_stop=should_stop)
    if dry_run:
        with services.read_sessions.begin() as session:
            by_category, held_back = preview_archive(
                session, services.store, config.retention, as_of, config.batch_size
            )
        return ArchiveReport(
            sum(by_category.values()), 0, by_category, dry_run=True, held_back=held_back
        )
    with _recorded(services, "archive", as_of) as progress:
        run = progress.run
        should_stop = progress.watching(should_stop)
        # A crashed run's moves and index changes first: its records become searchable now,
        # and count as indexed by this run.
        settled = settle_leftovers(services, utcnow(), should_stop=should_stop)
        run.indexed = settled.indexed

        def index_batch(batch: Sequence[tuple[Record, datetime]]) -> int:
            indexed = sync_index(
                services.store, services.index, known={r.id: r.to_json() for r, _ in batch}
            )
            run.indexed += indexed  # counted as it happens: a failed run still says what it did
            return indexed

        def moved(count: int) -> None:
            run.archived += count
            progress.save()

        report = archive_due_records(
            services.sessions,
            services.store,
            config.retention,
            as_of,
            utcnow(),
            batch_size=config.batch_size,
            index_batch=index_batch,
            on_moved=moved,
            should_stop=should_stop,
        )
        report = replace(report, indexed=run.indexed)
    log.info("archive job: archived %d, indexed %d", report.archived, report.indexed)
    return report


def _run_crm_archive_job(
    services: Services, as_of: datetime, *, dry_run: bool, should_stop: Callable[[], bool]
) -> ArchiveReport:
    """The archive job over the CRM's own tables (`[[active.table]]`), as they are now."""
    config = services.config
    crm, refs = services.reflect_crm(refs=True)
    assert crm is not None

    def run(job_run_id: int | None, progress: _Progress | None = None) -> CrmArchiveReport:
        def index_batch(batch: Sequence[tuple[Any, datetime]]) -> int:
            indexed = sync_index(
                services.store, services.index, known={r["id"]: r for r, _ in batch}
            )
            if progress is not None:  # counted as it happens: a failed run says what it did
                progress.run.indexed += indexed
            return indexed

        def moved(count: int) -> None:
            assert progress is not None
            progress.run.archived += count
            progress.save()

        return archive_crm_tables(
            services.sessions,
            services.store,
            crm,
            refs,
            config.retention,
            as_of,
            utcnow(),
            batch_size=config.batch_size,
            index_batch=index_batch,
            on_moved=None if progress is None else moved,
            should_stop=should_stop,
            job_run_id=job_run_id,
            dry_run=dry_run,
            kinds=config.kinds,
        )

    if dry_run:
        crm_report = run(None)
    else:
        with _recorded(services, "archive", as_of) as progress:
            job_run = progress.run
            should_stop = progress.watching(should_stop)
            # as over Archivist's own table: a crashed run's moves and index changes first
            settled = settle_leftovers(services, utcnow(), should_stop=should_stop)
            job_run.indexed = settled.indexed
            crm_report = run(job_run.id, progress)
            crm_report.indexed += settled.indexed
            job_run.archived, job_run.indexed = crm_report.archived, crm_report.indexed
        log.info(
            "archive job: archived %d, indexed %d, blocked %d, refused %d",
            crm_report.archived, crm_report.indexed, crm_report.blocked, crm_report.refused,
        )
    return ArchiveReport(
        crm_report.archived,
        crm_report.indexed,
        dict(sorted(crm_report.by_category.items())),
        dry_run=dry_run,
        blocked=crm_report.blocked,
        blocked_by=dict(sorted(crm_report.blocked_by.items())),
        refused=crm_report.refused,
        refused_by=dict(sorted(crm_report.refused_by.items())),
        held_back=crm_report.held_back,
    )


def run_dispose_job(
    services: Services,
    as_of: datetime,
    *,
    dry_run: bool = False,
    actor: str = "worker",
    should_stop: Callable[[], bool] = lambda: False,
) -> DisposalReport:
    """Run disposal once (or preview it); a real run is recorded and audited as `actor`.

    :param should_stop: asked between chunks of purges (the worker's stop signal)
    """
    if dry_run:
        return dispose_due_records(
            services.sessions,
            services.store,
            services.config.retention,
            as_of,
            utcnow(),
            dry_run=True,
        )
    started_at, outcome = utcnow(), "ok"
    details: dict[str, Any] = {"as_of": format_utc(as_of)}
    try:
        with _recorded(services, "dispose", as_of) as progress:
            run = progress.run
            should_stop = progress.watching(should_stop)
            create_schema(services.engine)  # the disposal list, in installations from before it
            settle_leftovers(services, utcnow())

            start = services.store.last_seq()

            def purged(count: int) -> None:
                run.purged = details["purged"] = run.purged + count
                progress.save()

            report = dispose_due_records(
                services.sessions,
                services.store,
                services.config.retention,
                as_of,
                utcnow(),
                run_by=actor,
                on_purged=purged,
                should_stop=should_stop,
            )
            run.purged = details["purged"] = report.purged
            sync_index(services.store, services.index)  # purged records leave search now
            # ... and the index's files: their words stay in a segment until it is rewritten
            scrub_gone_since(services.store, services.index, start)
    except Exception as e:
        outcome = getattr(e, "code", "error")
        raise
    finally:
        event = AuditEvent(started_at, actor, "dispose", "archive", outcome, details)
        write_audit(services.sessions, [event])
    log.info("dispose job: purged %d", report.purged)
    return report


def run_index_job(services: Services, *, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Settle what a killed run left (its moves first: records stored and still active are
    neither found twice nor restorable until then), then index whatever is archived but not
    yet indexed (and drop what left the archive).

    :raises IndexUnavailable: the index is missing or damaged (`archivist index --rebuild`)
    """
    require_readable_index(services.index)
    finish_interrupted_erasures(services, utcnow())  # their records out of search first
    indexed = settle_leftovers(services, utcnow(), should_stop=should_stop).indexed
    if indexed:
        log.info("index job: indexed %d", indexed)
    return indexed


def last_run(services: Services, job: str = "archive") -> JobRun | None:
    """The most recent run of a job, finished or not; one whose process ended before it
    finished (killed) says so in its `error`."""
    with services.read_sessions.begin() as session:
        stmt = select(JobRun).where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1)
        run = session.scalars(stmt).first()
    if run is not None and _interrupted(run):
        run.error = INTERRUPTED
    return run


def ran_since(services: Services, job: str, moment: datetime) -> bool:
    """Whether a run of the job started at or after `moment` and ran as of it or later: a
    command run since with an earlier `--as-of` (a backfill) did not do that moment's work.
    Runs recorded before their `as_of` was kept count by their start alone."""
    with services.read_sessions.begin() as session:
        stmt = select(JobRun.id).where(
            JobRun.job == job,
            JobRun.started_at >= moment,
            or_(JobRun.as_of.is_(None), JobRun.as_of >= moment),
        ).limit(1)
        return session.scalar(stmt) is not None


INTERRUPTED = (
    "interrupted: its process ended before the run finished (killed, or the machine stopped)"
)
STOPPED = (
    "stopped before it finished: the worker was stopped, or lost the job's lease; the rest "
    "waits for the next run"
)
ABANDONED = (
    "interrupted: its worker stopped renewing the job's lease before the run finished "
    "(killed, or its machine stopped)"
)
MAX_ERROR = 2000  # characters of a run's error kept (a database error can quote 500 parameters)


def was_interrupted(run: JobRun) -> bool:
    """Whether the run ended before it had done its work: its process ended, or it was
    asked to stop (a worker stopping, or losing its lease, lets the batch finish and stops)."""
    return run.error in (INTERRUPTED, STOPPED, ABANDONED) or _interrupted(run)


def take_over_skipped_run(services: Services, job: str, other: str) -> bool:
    """Whether a scheduled run, skipped because the worker `other` held the job's lease (free
    again now), must run after all: `other`'s run did not finish cleanly. An unfinished run
    of `other`'s (its machine went down; on another host its process cannot be looked at) is
    marked interrupted.

    :param job: `archive` or `dispose`
    :param other: the lease holder met when the run was skipped (`host:pid:tag`)
    """
    previous = last_run(services, job)
    if previous is not None and previous.finished_at is not None \
            and previous.error is None:
        return False  # the other worker's run finished: nothing was missed
    if previous is not None and previous.finished_at is None \
            and other.startswith(f"{previous.runner}:"):
        with services.sessions.begin() as session:
            session.execute(
                update(JobRun).where(JobRun.id == previous.id, JobRun.finished_at.is_(None))
                .values(finished_at=utcnow(), error=ABANDONED)
            )
        log.warning("%s job: worker %s stopped renewing its lease before its run finished; "
                    "running it now", job, other)
    else:
        log.warning("%s job: the run worker %s was doing did not finish cleanly; running it "
                    "now", job, other)
    return True


def _interrupted(run: JobRun) -> bool:
    return run.finished_at is None and run.runner is not None and process_gone(run.runner)


@contextmanager
def _recorded(services: Services, job: str, as_of: datetime) -> Iterator[_Progress]:
    """Record a run of the job; what it has done so far is written as it goes (`save`), so
    that a run killed half-way still says what it did, and the next run marks it interrupted."""
    with services.sessions.begin() as session:
        for earlier in session.scalars(
            select(JobRun).where(JobRun.job == job, JobRun.finished_at.is_(None))
        ):
            if _interrupted(earlier):
                earlier.finished_at, earlier.error = utcnow(), INTERRUPTED
        run = JobRun(job=job, started_at=utcnow(), archived=0, purged=0, indexed=0,
                     runner=this_process(), as_of=as_of)
        session.add(run)
    progress = _Progress(services, run)
    try:
        yield progress
    except BaseException as e:
        run.error = f"{type(e).__name__}: {e}"[:MAX_ERROR]
        raise
    finally:
        if progress.stopped and run.error is None:
            run.error = STOPPED
            log.warning("%s job %s", job, STOPPED)
        run.finished_at = utcnow()
        with services.sessions.begin() as session:
            session.merge(run)


class _Progress:
    """A run's counts, kept in its `JobRun` and written to the database by `save`."""

    def __init__(self, services: Services, run: JobRun) -> None:
        self._services, self.run = services, run
        self.stopped = False  # the run was asked to stop, and did, before it was done

    def watching(self, should_stop: Callable[[], bool]) -> Callable[[], bool]:
        """`should_stop`, noting when it says yes: the run then ends before its work is."""
        def asked() -> bool:
            if should_stop():
                self.stopped = True
                return True
            return False
        return asked

    def save(self) -> None:
        """Write the counts so far (one small UPDATE, between batches)."""
        run = self.run
        with self._services.sessions.begin() as session:
            session.execute(
                update(JobRun).where(JobRun.id == run.id)
                .values(archived=run.archived, purged=run.purged, indexed=run.indexed)
            )
