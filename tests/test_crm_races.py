"""The CRM writing while the archive job moves its rows, on a real PostgreSQL server.

Each test holds a CRM transaction open on another connection (a row added under a process, a
reference from a table outside the mapping, a row deleted or re-keyed), starts the archive job,
and commits that transaction only once the job waits for its locks: the job read the rows
before the change and deletes them after it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from archivist.active_db import utcnow
from archivist.config import load_config
from indexer.jobs.runs import run_archive_job
from indexer.jobs.verification import verify_all
from indexer.services import Services
from tests.pg import find_pg_bin
from tests.test_crm_tables import note_table_mapping, pg_server, pg_url, run_sql, write_config

if find_pg_bin() is None and not os.environ.get("ARCHIVIST_REQUIRE_POSTGRES"):
    pytest.skip("PostgreSQL is not installed", allow_module_level=True)

__all__ = ["pg_server", "pg_url"]  # fixtures

SCHEMA = """
    CREATE TABLE cases (id int PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                        tag text);
    CREATE TABLE msgs (id int PRIMARY KEY,
                       case_id int NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
                       queue text NOT NULL, at timestamptz NOT NULL, tag text);
    -- not mapped: a reference from outside, which a case's delete would take with it
    CREATE TABLE watchers (case_id int NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
                           who text NOT NULL);
    INSERT INTO cases VALUES (1, 'support', '2020-01-01', 'case one'),
                             (2, 'support', '2020-01-01', 'case two'),
                             (3, 'support', '2020-01-01', 'case three');
    INSERT INTO msgs VALUES (10, 1, 'support', '2020-01-01', 'old message');
"""
MAPPING = (
    note_table_mapping("cases", "case:") + "\n" + note_table_mapping("msgs", "msg:")
    + 'parent = { column = "case_id", table = "cases" }\n'
)


@pytest.fixture
def crm(tmp_path: Path, pg_url: str) -> Iterator[Services]:
    run_sql(pg_url, SCHEMA)
    with Services.open(load_config(write_config(tmp_path, pg_url, MAPPING)), create=True) as crm:
        yield crm


@contextmanager
def committed_once_the_job_waits(url: str, sql: str) -> Iterator[None]:
    """Run `sql` in a transaction of another connection, and commit it once some other
    session waits for a lock (the job, locking the rows it is about to delete)."""
    engine = create_engine(url)
    connection = engine.connect()
    transaction = connection.begin()
    connection.exec_driver_sql(sql)
    committed = threading.Event()

    def commit_when_waited_for() -> None:
        watcher = create_engine(url)
        try:
            deadline = time.monotonic() + 60
            with watcher.connect() as probe:
                while time.monotonic() < deadline:
                    waiting = probe.execute(
                        text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                    ).scalar_one()
                    probe.commit()
                    if waiting:
                        break
                    time.sleep(0.05)
            transaction.commit()
            committed.set()
        finally:
            watcher.dispose()

    thread = threading.Thread(target=commit_when_waited_for)
    thread.start()
    try:
        yield
    finally:
        thread.join(90)
        connection.close()
        engine.dispose()
    assert committed.is_set(), "nothing waited for the CRM's transaction"


def _ids(services: Services, sql: str) -> list:
    with services.engine.connect() as connection:
        return list(connection.scalars(text(sql)))


def test_a_row_the_crm_adds_under_a_moving_process_keeps_the_process_where_it_is(crm):
    """A message written under case 1 while the job moves it (its foreign key cascades): the
    case, its old message and the new one stay in the CRM; nothing is deleted with them."""
    with committed_once_the_job_waits(
        crm.config.active_url, "INSERT INTO msgs VALUES (11, 1, 'support', now(), 'new')"
    ):
        report = run_archive_job(crm, utcnow())

    assert _ids(crm, "SELECT id FROM msgs ORDER BY id") == [10, 11]
    assert _ids(crm, "SELECT id FROM cases ORDER BY id") == [1]
    assert crm.store.find_archived(["case:1", "msg:10", "case:2", "case:3"]) == {
        "case:2", "case:3",
    }
    assert report.archived == 2
    assert verify_all(crm).problems == []
    assert run_archive_job(crm, utcnow()).archived == 0  # the new message is not aged


@pytest.mark.parametrize(
    ("moved_from", "cases_left", "archived"),
    [(1, [1, 2, 4], {"case:3"}), (4, [2, 4], {"case:1", "msg:10", "case:3"})],
    ids=["from-a-case-the-batch-moves", "from-a-case-left-active"],
)
def test_a_row_the_crm_moves_under_a_moving_process_keeps_the_process_where_it_is(
    crm, moved_from, cases_left, archived
):
    """Message 11 moved to case 2 while the job moves case 2 (its foreign key cascades): case
    2 stays in the CRM with it, and so does the case it left if the batch moves that one too
    (its row changed). Message 11 is not deleted with case 2 while its only archived copy
    still names the case it left."""
    run_sql(crm.config.active_url, f"""
        INSERT INTO cases VALUES (4, 'support', now(), 'case four');
        INSERT INTO msgs VALUES (11, {moved_from}, 'support', '2020-01-01', 'to be moved');
    """)
    with committed_once_the_job_waits(
        crm.config.active_url, "UPDATE msgs SET case_id = 2 WHERE id = 11"
    ):
        report = run_archive_job(crm, utcnow())

    assert _ids(crm, "SELECT id FROM cases ORDER BY id") == cases_left
    assert _ids(crm, "SELECT id FROM msgs WHERE case_id = 2") == [11]
    everyone = ["case:1", "case:2", "case:3", "msg:10", "msg:11"]
    assert crm.store.find_archived(everyone) == archived
    assert report.archived == len(archived)
    assert verify_all(crm).problems == []

    assert run_archive_job(crm, utcnow()).archived == 5 - len(archived)  # all aged
    assert crm.store.get("msg:11")["parent_id"] == "case:2"
    assert _ids(crm, "SELECT id FROM msgs") == []


def test_a_reference_the_crm_adds_from_outside_the_mapping_blocks_the_row(crm):
    """A watcher of case 2 (a table outside the mapping, ON DELETE CASCADE) added while the
    job moves the case: the case is blocked, and the watcher is not deleted with it."""
    with committed_once_the_job_waits(
        crm.config.active_url, "INSERT INTO watchers VALUES (2, 'bob')"
    ):
        report = run_archive_job(crm, utcnow())

    assert _ids(crm, "SELECT who FROM watchers") == ["bob"]
    assert _ids(crm, "SELECT id FROM cases ORDER BY id") == [2]
    assert crm.store.find_archived(["case:1", "msg:10", "case:2", "case:3"]) == {
        "case:1", "msg:10", "case:3",
    }
    assert (report.archived, report.blocked) == (3, 1)
    assert verify_all(crm).problems == []


def test_a_row_the_crm_deletes_or_renumbers_while_it_moves_is_not_archived(crm):
    """Case 3 deleted and case 2 given the key 20 while the job moves them: neither old key
    stays archived, so no restore can bring back a deleted case or a second copy of case 2."""
    with committed_once_the_job_waits(
        crm.config.active_url,
        "DELETE FROM cases WHERE id = 3; UPDATE cases SET id = 20 WHERE id = 2",
    ):
        run_archive_job(crm, utcnow())

    assert crm.store.find_archived(["case:2", "case:3"]) == set()
    assert crm.store.find_archived(["case:1", "msg:10", "case:20"]) == {
        "case:1", "msg:10", "case:20",
    }
    assert crm.store.get("case:20")["subject"] == "case two"
    assert verify_all(crm).problems == []


def test_an_infinite_date_the_crm_writes_while_it_moves_keeps_the_row_as_written(crm):
    """`infinity` has no Python value and reads as NULL: written into a moving case's column
    (NULL when the job read it), it must not look unchanged and be deleted with the case,
    which would archive (and later restore) NULL in its place."""
    run_sql(crm.config.active_url, "ALTER TABLE cases ADD COLUMN due date")
    crm.crm, _ = crm.reflect_crm()
    with committed_once_the_job_waits(
        crm.config.active_url, "UPDATE cases SET due = 'infinity' WHERE id = 1"
    ):
        report = run_archive_job(crm, utcnow())

    assert _ids(crm, "SELECT due::text FROM cases") == ["infinity"]
    assert _ids(crm, "SELECT id FROM msgs") == [10]
    assert crm.store.find_archived(["case:1", "msg:10", "case:2", "case:3"]) == {
        "case:2", "case:3",
    }
    assert report.archived == 2
    assert verify_all(crm).problems == []


def test_two_archive_runs_at_once_never_leave_a_row_in_neither_place(crm, monkeypatch):
    """The worker's run and an `archivist archive` overlapping: the second must not take the
    rows the first has just moved for rows the CRM deleted, and mark them restored."""
    from archive_store import ArchiveStore

    original = ArchiveStore.moving
    second: list[threading.Thread] = []

    def another_run_meanwhile(self):
        if not second:  # the first run's first batch, planned but not moving yet
            second.append(threading.Thread(target=run_archive_job, args=(crm, utcnow())))
            second[0].start()
            second[0].join(timeout=10)  # it finishes, or waits for this batch to end
        return original(self)

    monkeypatch.setattr(ArchiveStore, "moving", another_run_meanwhile)
    run_archive_job(crm, utcnow())
    second[0].join()

    ids = ["case:1", "case:2", "case:3", "msg:10"]
    assert _ids(crm, "SELECT id FROM cases") == []
    assert _ids(crm, "SELECT id FROM msgs") == []
    assert {i: crm.store.info(i).state for i in ids} == dict.fromkeys(ids, "archived")
    assert verify_all(crm).problems == []
