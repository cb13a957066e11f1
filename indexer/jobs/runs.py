"""The jobs the worker and the CLI run, each recorded as a `JobRun` for stats."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select

from archivist.active_db import JobRun, utcnow
from archivist.audit import AuditEvent, write_audit
from archivist.records import format_utc
from indexer.jobs.archiver import ArchiveReport, archive_due_records, preview_archive
from indexer.jobs.disposal import DisposalReport, dispose_due_records
from indexer.jobs.indexing import sync_index
from indexer.services import Services

log = logging.getLogger(__name__)


def run_archive_job(
    services: Services,
    as_of: datetime,
    *,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> ArchiveReport:
    """Run the archiving job once (or preview it) and record the run."""
    config = services.config
    if dry_run:
        with services.sessions.begin() as session:
            by_category = preview_archive(session, config.retention, as_of)
        return ArchiveReport(sum(by_category.values()), 0, by_category, dry_run=True)
    with _recorded(services, "archive") as run:
        report = archive_due_records(
            services.sessions,
            services.store,
            config.retention,
            as_of,
            utcnow(),
            batch_size=config.batch_size,
            index_batch=lambda batch: sync_index(
                services.store, services.index, known={r.id: r.to_json() for r, _ in batch}
            ),
            should_stop=should_stop,
        )
        run.archived, run.indexed = report.archived, report.indexed
    log.info("archive job: archived %d, indexed %d", report.archived, report.indexed)
    return report


def run_dispose_job(
    services: Services, as_of: datetime, *, dry_run: bool = False, actor: str = "worker"
) -> DisposalReport:
    """Run disposal once (or preview it); a real run is recorded and audited as `actor`."""
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
        with _recorded(services, "dispose") as run:
            report = dispose_due_records(
                services.sessions, services.store, services.config.retention, as_of, utcnow()
            )
            run.purged = details["purged"] = report.purged
            sync_index(services.store, services.index)  # purged records leave search now
    except Exception as e:
        outcome = getattr(e, "code", "error")
        raise
    finally:
        event = AuditEvent(started_at, actor, "dispose", "archive", outcome, details)
        write_audit(services.sessions, [event])
    log.info("dispose job: purged %d", report.purged)
    return report


def run_index_job(services: Services, *, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Index whatever is archived but not yet indexed (and drop what left the archive)."""
    indexed = sync_index(services.store, services.index, should_stop=should_stop)
    if indexed:
        log.info("index job: indexed %d", indexed)
    return indexed


def last_run(services: Services, job: str = "archive") -> JobRun | None:
    """The most recent run of a job, finished or not."""
    with services.read_sessions.begin() as session:
        stmt = select(JobRun).where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1)
        return session.scalars(stmt).first()


@contextmanager
def _recorded(services: Services, job: str) -> Iterator[JobRun]:
    with services.sessions.begin() as session:
        run = JobRun(job=job, started_at=utcnow(), archived=0, purged=0, indexed=0)
        session.add(run)
    try:
        yield run
    except BaseException as e:
        run.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        run.finished_at = utcnow()
        with services.sessions.begin() as session:
            session.merge(run)
