"""The worker: scheduler wiring, one job at a time across processes, clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from archivist.active_db import JobRun, Lease, count_active, utcnow
from archivist.config import load_config
from archivist.demo_data import generate_records
from archivist.importer import import_lines
from archivist.leases import acquire_lease, release_lease
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.indexing import sync_index
from indexer.jobs.runs import INTERRUPTED, STOPPED, last_run, run_archive_job, run_index_job
from indexer.services import Services
from indexer.worker import LEASE_TTL, MISFIRE_GRACE_SECONDS, Worker, build_scheduler
from tests.conftest import pin_worker_schedule


def test_scheduler_runs_each_job_on_its_trigger_one_at_a_time(services):
    scheduler = build_scheduler(services.config, Worker(services))
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"archive", "dispose", "index"}
    assert isinstance(jobs["archive"].trigger, CronTrigger)
    assert str(jobs["archive"].trigger) == str(CronTrigger.from_crontab("0 2 * * *", "UTC"))
    # cron's day 0 is Sunday (APScheduler's own numbering starts on Monday)
    assert str(jobs["dispose"].trigger) == str(CronTrigger(
        month="*", day="*", day_of_week="sun", hour="3", minute="30", timezone="UTC"))
    assert isinstance(jobs["index"].trigger, IntervalTrigger)
    assert jobs["index"].trigger.interval.total_seconds() == 60
    for job in jobs.values():
        assert (job.max_instances, job.coalesce) == (1, True)
        assert job.misfire_grace_time == MISFIRE_GRACE_SECONDS


def test_a_run_missed_while_the_worker_was_down_runs_once_at_start(services):
    """Archive at 02:00, dispose Sundays 03:30: a worker started at 02:40 (within the hour's
    grace) runs the archive job it missed, and not twice; at 03:10 nothing is missed."""
    from datetime import UTC, datetime

    from indexer.worker import missed_jobs

    sunday = datetime(2026, 11, 29, tzinfo=UTC)
    assert missed_jobs(services.config, services, sunday.replace(hour=2, minute=40)) == [
        "archive"]
    assert missed_jobs(services.config, services, sunday.replace(hour=3, minute=10)) == []
    assert missed_jobs(services.config, services, sunday.replace(hour=3, minute=45)) == [
        "dispose"]
    with services.sessions.begin() as session:  # the archive job ran after 02:00
        session.add(JobRun(job="archive", started_at=sunday.replace(hour=2, minute=5),
                           archived=0, purged=0, indexed=0))
    assert missed_jobs(services.config, services, sunday.replace(hour=2, minute=40)) == []


def test_a_backfill_run_since_the_fire_time_does_not_stand_for_the_missed_run(services):
    """A command run after 02:00 `--as-of` an earlier moment did not archive what became due at
    02:00: the worker started at 02:40 still runs the archive job; a run as of 02:00 or later,
    or one recorded before runs kept their `as_of`, stands for it."""
    from datetime import UTC, datetime

    from indexer.worker import missed_jobs

    sunday = datetime(2026, 11, 29, tzinfo=UTC)
    started = sunday.replace(hour=2, minute=5)

    def ran(as_of: datetime | None) -> list[str]:
        with services.sessions.begin() as session:
            session.add(JobRun(job="archive", started_at=started, archived=0, purged=0,
                               indexed=0, as_of=as_of))
        return missed_jobs(services.config, services, sunday.replace(hour=2, minute=40))

    assert ran(datetime(2020, 1, 1, tzinfo=UTC)) == ["archive"]
    assert ran(sunday.replace(hour=1, minute=59)) == ["archive"]
    assert ran(sunday.replace(hour=2)) == []
    with services.sessions.begin() as session:
        session.query(JobRun).filter(JobRun.as_of >= sunday).delete()
    assert ran(None) == []


def test_a_job_run_records_the_moment_it_ran_as(services):
    from datetime import UTC, datetime

    run_archive_job(services, datetime(2021, 3, 4, 5, 6, 7, 8, tzinfo=UTC))
    run = last_run(services)
    assert run is not None and run.as_of == datetime(2021, 3, 4, 5, 6, 7, 8, tzinfo=UTC)


def test_a_run_stopped_before_it_finished_says_so_and_runs_again_at_start(
    config_path, make_record
):
    """A worker stopping (SIGTERM) or losing its lease lets the batch finish and stops: the
    run says it stopped before it finished, and a worker started next runs the job again."""
    from datetime import timedelta

    from archivist.importer import import_lines
    from indexer.worker import missed_jobs

    config_path.write_text(config_path.read_text() + "\n[worker]\narchive_cron = '* * * * *'\n")
    with Services.open(load_config(config_path), create=True) as services:
        lines = [json.dumps(make_record(id=f"S-{n:04d}")).encode() for n in range(500)]
        import_lines(lines, services.sessions, services.store.find_archived)
        stopped = run_archive_job(  # asked to stop once a batch (of 200) has moved
            services, utcnow(), should_stop=lambda: services.store.counts()["archived"] > 0)
        assert stopped.archived == 200
        run = last_run(services)
        assert run is not None and run.error == STOPPED and run.finished_at is not None
        # (it began after the minute's fire time: only its stopping makes it missed)
        assert missed_jobs(services.config, services, run.started_at + timedelta(seconds=1)) == [
            "archive"]

        assert run_archive_job(services, utcnow()).archived == 300
        run = last_run(services)
        assert run is not None and run.error is None
        assert missed_jobs(services.config, services, run.started_at + timedelta(seconds=1)) == []


@pytest.mark.parametrize(("crontab", "days"), [
    ("30 3 * * 0", "Sun"), ("30 3 * * 7", "Sun"), ("30 3 * * 1-5", "Mon Tue Wed Thu Fri"),
    ("30 3 * * 5-7", "Sun Fri Sat"), ("30 3 * * */2", "Sun Tue Thu Sat"),
    ("30 3 * * sat,sun", "Sun Sat"), ("30 3 * * *", "Sun Mon Tue Wed Thu Fri Sat"),
    ("30 3 * * 7-7", "Sun"), ("30 3 * * 1-7/2", "Sun Mon Wed Fri"),
    ("30 3 1 * 3", "Tue Wed"),  # the 1st (a Tuesday here) or a Wednesday: cron's either
    # a day field starting with `*` is not a restriction to cron: both must hold then
    ("30 3 */2 * 2", "Tue"), ("30 3 1 * */1", "Tue"),
])
def test_crontab_days_of_the_week_are_cron_s(crontab, days):
    """`0` and `7` are Sunday, as in cron: the days it fires in one week, from a Sunday."""
    from datetime import UTC, datetime, timedelta

    from archivist.crontab import cron_trigger

    trigger, fires = cron_trigger(crontab), []
    moment = datetime(2026, 11, 29, tzinfo=UTC)  # a Sunday
    while (fire := trigger.get_next_fire_time(None, moment)) < datetime(2026, 12, 6, tzinfo=UTC):
        fires.append(fire.strftime("%a"))
        moment = fire + timedelta(seconds=1)
    assert " ".join(fires) == days


def test_bad_crontab_days_are_refused():
    from archivist.crontab import cron_trigger

    for crontab in ("30 3 * * 8", "30 3 * * 5-2", "30 3 * * fun", "30 3 * *"):
        with pytest.raises(ValueError):
            cron_trigger(crontab)


SKIPPED = b"archive job skipped: another worker holds its lease"


def start_worker(config_path, log_path):
    pin_worker_schedule(config_path)
    command = [sys.executable, "-m", "archivist", "worker", "--archive-now",
               "--config", str(config_path)]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_worker_logs_its_jobs_without_the_scheduler_s_chatter(tmp_path, config_path):
    subprocess.run([sys.executable, "-m", "archivist", "init", "--config", str(config_path)],
                   check=True, capture_output=True)
    log_path = tmp_path / "worker.log"
    worker = start_worker(config_path, log_path)  # its archive job runs at once
    try:
        wait_for(lambda: b"archive job: archived 0, indexed 0" in log_path.read_bytes())
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
    log = log_path.read_text()
    assert "INFO indexer.worker: worker " in log and " started" in log
    assert "finishing the current batch, then stopping" in log and " stopped" in log
    assert "Adding job tentatively" not in log and "apscheduler" not in log, log


def install_with_records(tmp_path, config_path, seed: int) -> None:
    """`archivist init`, then `archivist import` of 20,000 generated records."""
    subprocess.run([sys.executable, "-m", "archivist", "init", "--config", str(config_path)],
                   check=True)
    records = list(generate_records(20_000, seed=seed))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    subprocess.run([sys.executable, "-m", "archivist", "import", str(corpus),
                    "--config", str(config_path)], check=True, capture_output=True)


@pytest.mark.slow
def test_two_workers_share_jobs_and_sigterm_loses_nothing(tmp_path, config_path):
    install_with_records(tmp_path, config_path, seed=3)
    config = load_config(config_path)

    with Services.open(config) as services:
        busy = start_worker(config_path, tmp_path / "worker0.log")
        workers = [busy]
        try:
            def archive_lease_holder():
                with services.sessions.begin() as session:
                    lease = session.get(Lease, "archive")
                    return lease.holder if lease else None

            assert f":{busy.pid}:" in wait_for(archive_lease_holder)
            wait_for(lambda: services.store.counts()["archived"] >= 1000)
            # The second worker starts while the first, lease in hand, waits between two
            # batches: however slow the machine, it meets the lease and skips the job.
            with services.store.settling():
                idle = start_worker(config_path, tmp_path / "worker1.log")
                workers.append(idle)
                wait_for(lambda: SKIPPED in (tmp_path / "worker1.log").read_bytes())
            busy.send_signal(signal.SIGTERM)
            assert busy.wait(timeout=120) == 0
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=120)
        assert idle.returncode == 0

        with services.sessions.begin() as session:
            runs = session.scalars(select(JobRun).where(JobRun.job == "archive")).all()
            active = count_active(session)
        counts = services.store.counts()
        # the idle worker found the lease taken and skipped: exactly one archive run
        assert len(runs) == 1
        assert runs[0].finished_at is not None and runs[0].error == STOPPED  # by SIGTERM
        assert runs[0].archived == counts["archived"]
        assert counts["archived"] >= 1000
        assert run_archive_job(services, utcnow(), dry_run=True).archived > 0  # stopped early
        assert active + counts["archived"] == 20_000
        assert counts["pending"] == 0
        assert services.store.verify() == []
        log = b"".join((tmp_path / f"worker{i}.log").read_bytes() for i in range(2))
        assert SKIPPED in log
        assert b"finishing the current batch, then stopping" in log


def test_index_catch_up_waits_while_an_archive_job_runs(services):
    """The archive job indexes its own batches: a catch-up during it would index them twice."""
    records = [json.dumps(r).encode() for r in generate_records(30, seed=4)]
    import_lines(records, services.sessions, services.store.find_archived)
    archived = archive_due_records(  # moved, not indexed: what a catch-up is for
        services.sessions, services.store, services.config.retention,
        utcnow().replace(year=2100), utcnow(),
    ).archived
    assert archived == 30 and services.store.counts()["indexed"] == 0
    worker = Worker(services)
    with services.sessions.begin() as session:  # another worker's archive job is running
        assert acquire_lease(session, "archive", "other-worker", utcnow(), LEASE_TTL)
    worker.index()
    assert services.store.counts()["indexed"] == 0
    with services.sessions.begin() as session:
        release_lease(session, "archive", "other-worker")
    worker.index()
    assert services.store.counts()["indexed"] == 30


def test_index_catch_up_goes_on_when_the_archive_job_s_process_has_ended(services):
    """A worker killed during its archive job never gave the lease back: the catch-up of a
    worker on the same host does not wait 5 minutes for it to expire."""
    records = [json.dumps(r).encode() for r in generate_records(30, seed=6)]
    import_lines(records, services.sessions, services.store.find_archived)
    archive_due_records(services.sessions, services.store, services.config.retention,
                        utcnow().replace(year=2100), utcnow())
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = f"{socket.gethostname()}:{ended.stdout.strip()}:0a1b2c3d"
    with services.sessions.begin() as session:
        assert acquire_lease(session, "archive", dead, utcnow(), LEASE_TTL)
    Worker(services).index()
    assert services.store.counts()["indexed"] == 30


def test_a_job_skipped_for_a_worker_that_then_went_down_runs_once_its_lease_expires(
    services, make_record
):
    """The nightly archive run of a worker on another machine held the lease, so this worker
    skipped it; that machine went down mid-run. Once the lease has expired (not renewed),
    the follow-up marks that run interrupted and runs the job here, not a day later."""
    from datetime import timedelta

    from archivist.importer import import_lines
    from indexer.jobs.runs import ABANDONED

    lines = [json.dumps(make_record(id=f"F-{n:03d}")).encode() for n in range(50)]
    import_lines(lines, services.sessions, services.store.find_archived)
    other = "machine-b:4242:abcd1234"
    with services.sessions.begin() as session:
        assert acquire_lease(session, "archive", other, utcnow(), LEASE_TTL)
        session.add(JobRun(job="archive", started_at=utcnow(), archived=7, purged=0, indexed=0,
                           runner="machine-b:4242"))
    worker = Worker(services)
    scheduler = build_scheduler(services.config, worker)

    worker.archive()  # skipped: the lease is machine-b's; looked at again later
    assert services.store.counts()["archived"] == 0
    assert scheduler.get_job("archive-follow-up") is not None
    scheduler.remove_job("archive-follow-up")
    worker.follow_up("archive", other)  # still renewed: later again
    assert services.store.counts()["archived"] == 0
    assert scheduler.get_job("archive-follow-up") is not None

    with services.sessions.begin() as session:  # machine-b stopped renewing it
        session.get(Lease, "archive").expires_at = utcnow() - timedelta(seconds=1)
    worker.follow_up("archive", other)
    assert services.store.counts()["archived"] == 50
    with services.sessions.begin() as session:
        runs = session.scalars(select(JobRun).order_by(JobRun.id)).all()
        assert [(r.runner.startswith("machine-b"), r.error) for r in runs] == [
            (True, ABANDONED), (False, None)]

    worker.follow_up("archive", other)  # its run is done now: nothing more
    with services.sessions.begin() as session:
        assert session.query(JobRun).count() == 2


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_followed_at_once_and_its_run_says_so(
    tmp_path, config_path
):
    """SIGKILL leaves the archive lease with a dead holder and its run unfinished: a worker
    started next on this host takes the lease at once (not after its 5 minutes), runs the job
    to the end, and the killed run is recorded as interrupted, with what it had archived."""
    install_with_records(tmp_path, config_path, seed=5)

    with Services.open(load_config(config_path)) as services:
        def recorded_archived() -> int:
            with services.sessions.begin() as session:
                run = session.scalars(select(JobRun).order_by(JobRun.id)).first()
                return 0 if run is None else run.archived

        killed = start_worker(config_path, tmp_path / "worker0.log")
        try:
            wait_for(recorded_archived)  # written as the run goes, batch by batch
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=60)
        with services.sessions.begin() as session:
            assert session.get(Lease, "archive") is not None  # never given back
        interrupted = last_run(services)
        assert interrupted is not None and interrupted.error == INTERRUPTED
        assert interrupted.archived > 0 and interrupted.finished_at is None

        follower = start_worker(config_path, tmp_path / "worker1.log")
        try:
            def run_after_it_finished() -> bool:
                run = last_run(services)
                return run is not None and run.id > interrupted.id and run.finished_at is not None
            wait_for(run_after_it_finished, timeout=LEASE_TTL.total_seconds() / 2)
        finally:
            follower.send_signal(signal.SIGTERM)
            assert follower.wait(timeout=120) == 0
        assert SKIPPED not in (tmp_path / "worker1.log").read_bytes()
        with services.sessions.begin() as session:
            runs = session.scalars(
                select(JobRun).where(JobRun.job == "archive").order_by(JobRun.id)).all()
        assert runs[0].error == INTERRUPTED and runs[0].finished_at is not None
        assert runs[-1].error is None
        counts = services.store.counts()
        with services.sessions.begin() as session:
            assert count_active(session) + counts["archived"] == 20_000
        assert counts["pending"] == 0 and counts["indexed"] == counts["archived"]
        assert run_archive_job(services, utcnow(), dry_run=True).archived == 0
        assert services.store.verify() == []


def test_a_stopping_run_leaves_the_index_to_the_catch_up(services):
    """Stopped between batches (SIGTERM), a run does not index what it moved since its last
    hand-over to the indexer: the worker exits within seconds; the catch-up indexes them."""
    records = [json.dumps(r).encode() for r in generate_records(30, seed=6)]
    import_lines(records, services.sessions, services.store.find_archived)
    asked = []

    def stop_after_one_batch() -> bool:
        asked.append(True)
        return len(asked) > 1

    report = archive_due_records(
        services.sessions, services.store, services.config.retention, utcnow(), utcnow(),
        batch_size=10, should_stop=stop_after_one_batch,
        index_batch=lambda batch: sync_index(
            services.store, services.index, known={r.id: r.to_json() for r, _ in batch}),
    )

    assert report.archived > 0 and report.indexed == 0
    assert services.store.counts()["indexed"] == 0
    assert run_index_job(services) == report.archived


def test_two_stop_signals_back_to_back_stop_the_worker_once_and_cleanly(tmp_path, config_path):
    """Ctrl-C passed on twice (by `timeout` to the worker and to its process group): a second
    signal arriving inside the first one's handling must neither start the stop twice (a
    `KeyError` from a thread started twice, or a worker left running) nor deadlock it, and one
    arriving as the worker exits must not kill it (exit status -2)."""
    pin_worker_schedule(config_path)
    subprocess.run([sys.executable, "-m", "archivist", "init", "--config", str(config_path)],
                   check=True, capture_output=True)
    command = [sys.executable, "-m", "archivist", "worker", "--config", str(config_path)]
    for attempt in range(4):  # 20 workers, five at a time: most of a try is Python starting
        logs = [tmp_path / f"worker-{attempt}-{n}.log" for n in range(5)]
        workers = []
        for log_path in logs:
            with log_path.open("wb") as log:
                workers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
        try:
            for n, (worker, log_path) in enumerate(zip(workers, logs, strict=True)):
                wait_for(lambda p=log_path: b" started" in p.read_bytes(), timeout=60)
                # while it settles, as its scheduler starts, and once it runs
                time.sleep([0.0, 0.05, 0.1, 0.2, 0.3][n])
                os.kill(worker.pid, signal.SIGINT)
                os.kill(worker.pid, signal.SIGINT)
            for worker, log_path in zip(workers, logs, strict=True):
                assert worker.wait(timeout=10) == 0, log_path.read_text()
                log = log_path.read_text()
                assert "Traceback" not in log and "Exception" not in log, log
                assert "finishing the current batch, then stopping" in log, log
                assert " stopped" in log, log
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
