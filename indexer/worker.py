"""The worker: APScheduler wiring only; the jobs themselves live in `indexer.jobs.runs`.

Each job runs under a lease in the active database, so two worker processes never run the same
job at once. SIGTERM (or Ctrl-C) lets the running batch finish, then the worker exits.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_STARTED, SchedulerEvent
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from archivist.active_db import utcnow
from archivist.config import Config
from archivist.crontab import cron_trigger
from archivist.leases import (
    acquire_lease,
    lease_held,
    lease_holder,
    release_lease,
    this_process,
)
from indexer.jobs.runs import (
    last_run,
    ran_since,
    run_archive_job,
    run_dispose_job,
    run_index_job,
    take_over_skipped_run,
    was_interrupted,
)
from indexer.jobs.settling import settle_leftovers
from indexer.services import Services

log = logging.getLogger(__name__)
# APScheduler logs each job's adding, start and success at INFO: lines about the scheduler that
# would bury the jobs' own. Its warnings and errors (a misfire, a job that raised) still show.
SCHEDULER_LOG_LEVEL = logging.WARNING
LEASE_TTL = timedelta(minutes=5)
FOLLOW_UP_MARGIN = timedelta(seconds=30)  # past a skipped job's lease, before looking again
MISFIRE_GRACE_SECONDS = 3600


class Worker:
    """The jobs of one worker process, each guarded by a lease and a stop flag."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.holder = f"{this_process()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        # set by `build_scheduler`: a scheduled job skipped for another worker's lease is
        # looked at again once that lease would have expired (see `follow_up`)
        self.scheduler: BaseScheduler | None = None
        self._running: dict[str, threading.Lock] = {}

    def archive(self) -> None:
        """The archive job, as if now were now."""
        self._leased(
            "archive", lambda keep: run_archive_job(self.services, utcnow(), should_stop=keep),
            follow_up=True,
        )

    def dispose(self) -> None:
        """Disposal at the end of retention."""
        self._leased(
            "dispose", lambda keep: run_dispose_job(self.services, utcnow(), should_stop=keep),
            follow_up=True,
        )

    def follow_up(self, name: str, other: str) -> None:
        """Look again at a scheduled job skipped because the worker `other` held its lease:
        if `other` stopped renewing it (its machine went down) before its run finished, that
        run is marked interrupted and the job runs here now, rather than at its next fire time
        (a day later for the nightly archive run).

        :param name: `archive` or `dispose`
        :param other: the lease holder met when the job was skipped
        """
        if self.stopping.is_set():
            return
        with self.services.read_sessions.begin() as session:
            holder = lease_holder(session, name, utcnow())
        if holder is not None:  # still renewed (or taken by another worker): later
            self._look_again(name, holder)
        elif take_over_skipped_run(self.services, name, other):
            getattr(self, name)()

    def _look_again(self, name: str, other: str) -> None:
        if self.scheduler is None or self.stopping.is_set():
            return
        self.scheduler.add_job(
            self.follow_up, DateTrigger(utcnow() + LEASE_TTL + FOLLOW_UP_MARGIN),
            args=(name, other), id=f"{name}-follow-up", replace_existing=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )

    def settle(self) -> None:
        """At start: settle what an earlier crash left (unfinished moves, index changes).

        Under the index job's lease, and skipped while an archive job runs (which settles
        first itself).
        """
        with self.services.read_sessions.begin() as session:
            if lease_held(session, "archive", utcnow()):
                log.info("settling skipped: the archive job is running and settles first")
                return
        services = self.services
        self._leased(
            "index",
            lambda keep: settle_leftovers(services, utcnow(), should_stop=keep),
        )

    def index(self) -> None:
        """Index catch-up: whatever is archived but not yet indexed.

        Skipped while an archive job runs (in any worker): that job indexes what it moves,
        and a catch-up meanwhile would write the same records a second time.
        """
        with self.services.read_sessions.begin() as session:
            if lease_held(session, "archive", utcnow()):
                log.info("index job skipped: the archive job is running and indexes what it moves")
                return
        self._leased("index", lambda keep: run_index_job(self.services, should_stop=keep))

    def _leased(
        self, name: str, job: Callable[[Callable[[], bool]], Any], *, follow_up: bool = False
    ) -> None:
        running = self._running.setdefault(name, threading.Lock())
        if not running.acquire(blocking=False):  # (a follow-up meeting its scheduled run)
            log.info("%s job skipped: it is running in this worker already", name)
            return
        try:
            self._leased_once(name, job, follow_up)
        finally:
            running.release()

    def _leased_once(
        self, name: str, job: Callable[[Callable[[], bool]], Any], follow_up: bool
    ) -> None:
        if self.stopping.is_set() or not self._renew(name):
            log.info("%s job skipped: another worker holds its lease", name)
            if follow_up and not self.stopping.is_set():
                with self.services.read_sessions.begin() as session:
                    other = lease_holder(session, name, utcnow())
                if other is not None:
                    self._look_again(name, other)
            return

        def should_stop() -> bool:
            # called between batches: stop on SIGTERM, or if the lease could not be kept
            return self.stopping.is_set() or not self._renew(name)

        try:
            job(should_stop)
        except Exception:
            log.exception("%s job failed", name)
        finally:
            with self.services.sessions.begin() as session:
                release_lease(session, name, self.holder)

    def _renew(self, name: str) -> bool:
        with self.services.sessions.begin() as session:
            return acquire_lease(session, name, self.holder, utcnow(), LEASE_TTL)


def build_scheduler(config: Config, worker: Worker) -> BlockingScheduler:
    """The scheduler with the archive, dispose and index jobs on the configured triggers."""
    scheduler = BlockingScheduler(timezone="UTC")
    worker.scheduler = scheduler
    options: dict[str, Any] = {
        "max_instances": 1,
        "coalesce": True,
        "misfire_grace_time": MISFIRE_GRACE_SECONDS,
    }
    scheduler.add_job(
        worker.archive,
        cron_trigger(config.worker.archive_cron),
        id="archive",
        name="archive",
        **options,
    )
    scheduler.add_job(
        worker.dispose,
        cron_trigger(config.worker.dispose_cron),
        id="dispose",
        name="dispose",
        **options,
    )
    scheduler.add_job(
        worker.index,
        IntervalTrigger(seconds=config.worker.index_interval_seconds, timezone="UTC"),
        id="index",
        name="index",
        next_run_time=utcnow(),
        **options,
    )
    return scheduler


def missed_jobs(config: Config, services: Services, now: datetime) -> list[str]:
    """The scheduled jobs (archive, dispose) whose last fire time fell within the misfire
    grace before `now` with no run of theirs since: the worker was not running then (the
    machine was down). A scheduler that was running catches up by itself; one just started
    knows no earlier fire time, so the worker asks.

    :param now: the worker's start
    """
    missed = []
    since = now - timedelta(seconds=MISFIRE_GRACE_SECONDS)
    for job, crontab in (("archive", config.worker.archive_cron),
                         ("dispose", config.worker.dispose_cron)):
        trigger = cron_trigger(crontab)
        fire = trigger.get_next_fire_time(None, since)
        latest = None
        while fire is not None and fire <= now:  # the last fire time up to now
            latest = fire
            fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
        if latest is None:
            continue
        previous = last_run(services, job)
        if previous is None or was_interrupted(previous) or not ran_since(services, job, latest):
            missed.append(job)
    return missed


def run(config: Config, *, archive_now: bool = False) -> None:
    """Run the worker until SIGTERM or Ctrl-C; the current batch finishes first.

    :param archive_now: also run the archive job once right away (used by the demo).
    """
    logging.getLogger("apscheduler").setLevel(SCHEDULER_LOG_LEVEL)
    with Services.open(config) as services:
        # an index that cannot be opened (a volume not mounted) stops the worker here, in one
        # line, rather than failing every job with a traceback
        services.index  # noqa: B018
        worker = Worker(services)
        scheduler = build_scheduler(config, worker)
        for job in missed_jobs(config, services, utcnow()):  # "still runs, once"
            log.info("%s job: its run at the last scheduled time was missed; running it now", job)
            scheduler.modify_job(job, next_run_time=utcnow())
        if archive_now:
            scheduler.modify_job("archive", next_run_time=utcnow())

        stop = StopOnSignal(worker, scheduler)
        stop.install()
        log.info("worker %s started", worker.holder)
        worker.settle()  # before any scheduled job: a crash's leftovers first
        if stop.may_start():  # (a signal while settling: stop here)
            scheduler.start()
        stop.wait()  # the running job has finished its batch; now close the store and exit
        log.info("worker %s stopped", worker.holder)


class StopOnSignal:
    """SIGTERM and SIGINT stop the worker once, however many arrive and however close together.

    The handler only puts the signal in a queue: `SimpleQueue.put` is reentrant, so a second
    signal interrupting the first one's handler cannot deadlock or start anything twice. A
    thread takes the first signal from there, sets the worker's stop flag and shuts the
    scheduler down, which waits for the running job (it cannot wait in the handler, which runs
    on the main thread, the scheduler's).
    """

    def __init__(self, worker: Worker, scheduler: BlockingScheduler) -> None:
        self.worker = worker
        self.scheduler = scheduler
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._decided = threading.Event()  # the scheduler started, or will not start
        self._stopped = threading.Event()
        scheduler.add_listener(self._started, EVENT_SCHEDULER_STARTED)
        self._thread = threading.Thread(target=self._stop_on_first, name="stop-on-signal",
                                        daemon=True)

    def install(self) -> None:
        """Handle SIGTERM and SIGINT (call from the main thread)."""
        self._thread.start()
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def may_start(self) -> bool:
        """Whether to start the scheduler: no stop was asked for (while settling) yet."""
        if self.worker.stopping.is_set():
            self._decided.set()
            return False
        return True

    def wait(self) -> None:
        """After the scheduler returned (or never started): wait until the stop is done, then
        ignore stop signals while the worker closes and exits (Python gives a handled signal
        its default action back as it exits: a second Ctrl-C landing then would kill it)."""
        if self.worker.stopping.is_set():
            self._stopped.wait()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.put(signum)  # nothing else here: see the class's docstring

    def _started(self, _event: SchedulerEvent) -> None:
        self._decided.set()

    def _stop_on_first(self) -> None:
        signum = self._signals.get()
        log.info("signal %d: finishing the current batch, then stopping", signum)
        self.worker.stopping.set()
        self._decided.wait()  # a stop asked for just before the scheduler started stops it
        try:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
        finally:
            self._stopped.set()
