"""Crash safety: SIGKILL `archivist archive` mid-run, rerun, and nothing is lost or doubled.

Kills land both at named crash points (inside each step: store write, catalog commit, active
delete, pending cleanup) and at random moments chosen by the clock, counted from the run's first
change to the catalog (not from its start, which a loaded machine can stretch past the kill).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archive_store.errors import NotArchived
from archivist.active_db import AuditEntry, count_active, find_active, utcnow
from archivist.audit import AuditEvent, write_audit
from archivist.config import load_config
from archivist.demo_data import generate_records
from indexer.jobs.disposal_proof import purge_with_proof
from indexer.jobs.erasure import customer_hash, ledger_path, load_ledger
from indexer.jobs.restore import restore_process, restore_record
from indexer.jobs.runs import run_index_job
from indexer.search import SearchQuery
from indexer.services import Services
from tests.conftest import pin_worker_schedule
from tests.test_erasure import files_holding

pytestmark = pytest.mark.slow
AS_OF = "2030-01-01"
CRASH_POINTS = [
    "archive.before_store",
    "store.frames_written",
    "store.catalog_committed",
    "archive.after_store",
    "archive.after_delete",
    "archive.after_commit",
]


def archivist(
    config_path: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> subprocess.Popen[bytes] | subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "archivist", *args, "--config", str(config_path)]
    full_env = {**os.environ, **(env or {})}
    if wait:
        return subprocess.run(command, capture_output=True, env=full_env, timeout=300)
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env
    )


def import_records(config_path: Path, records: list[dict], tmp_path: Path) -> None:
    path = tmp_path / f"batch-{random.random()}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    result = archivist(config_path, "import", str(path))
    assert result.returncode == 0, result.stderr


def catalog_state(config_path: Path) -> tuple[int, int]:
    """The catalog's last entry and its count of pending marks: they change as a move runs."""
    catalog = (load_config(config_path).archive_dir / "catalog.db").resolve()
    conn = sqlite3.connect(f"{catalog.as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        last = conn.execute(
            "SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'head_seq'"
        ).fetchone()[0]
        pending = conn.execute(
            "SELECT COUNT(*) FROM records WHERE pending IS NOT NULL"
        ).fetchone()[0]
    finally:
        conn.close()
    return last, pending


def kill_after_it_starts(
    process: subprocess.Popen[bytes], config_path: Path, delay: float
) -> int:
    """SIGKILL `process` `delay` seconds after its first change to the catalog (at once if it
    ends before changing anything); returns its exit code."""
    before = catalog_state(config_path)
    deadline = time.monotonic() + 120
    while process.poll() is None and catalog_state(config_path) == before:
        assert time.monotonic() < deadline, "the run changed nothing in two minutes"
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def test_sigkill_during_archive_loses_and_doubles_nothing(tmp_path, config_path):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "1234")))
    assert archivist(config_path, "init").returncode == 0
    records = list(generate_records(20_000, seed=11))
    # a tenth stays young, so both places hold records at the end
    for r in records[::10]:
        r["updated_at"] = "2029-12-31T00:00:00Z"
    import_records(config_path, records, tmp_path)

    killed_at_points = 0
    for point in CRASH_POINTS:
        env = {"ARCHIVIST_CRASH_AT": f"{point}:{rng.randint(1, 6)}"}
        result = archivist(config_path, "archive", "--as-of", AS_OF, env=env)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
        killed_at_points += 1

    killed_at_random = 0
    extra = 0
    for _ in range(40):
        if killed_at_random >= 6:
            break
        process = archivist(config_path, "archive", "--as-of", AS_OF, wait=False)
        if kill_after_it_starts(process, config_path, rng.uniform(0, 1.5)) == -signal.SIGKILL:
            killed_at_random += 1
        else:  # it finished first: give the next run fresh work to be killed in
            fresh = list(generate_records(3000, seed=12, start=100_000 + extra))
            extra += 3000
            records.extend(fresh)
            import_records(config_path, fresh, tmp_path)
    assert killed_at_points == len(CRASH_POINTS) and killed_at_random >= 5

    result = archivist(config_path, "archive", "--as-of", AS_OF)
    assert result.returncode == 0, result.stderr
    assert archivist(config_path, "verify").returncode == 0

    expected = {r["id"]: r for r in records}
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            active = find_active(session, expected)
        archived = services.store.find_archived(expected)
        assert not set(active) & set(archived), "a record is in both places"
        assert set(active) | set(archived) == set(expected), "a record is in neither place"
        assert set(active) == {r["id"] for r in records[:20_000:10]}
        for record_id in archived:
            assert services.store.get(record_id) == expected[record_id]
            assert len(services.store.history(record_id)) == 1
        assert list(services.store.iter_pending()) == []
        assert services.store.verify() == []


# --- leftovers settle themselves: every job run first finishes what a killed run left ---------


def installed(config_path: Path, records: list[dict]) -> None:
    """Init and import `records` through the real commands."""
    assert archivist(config_path, "init").returncode == 0
    import_records(config_path, records, config_path.parent)


def aged_records(make_record, count: int, prefix: str = "K") -> list[dict]:
    return [
        make_record(id=f"{prefix}{i:04d}", body=f"leftover parcel {i}",
                    updated_at="2020-01-02T00:00:00Z")
        for i in range(count)
    ]


def searchable(config_path: Path, q: str = "parcel") -> set[str]:
    with Services.open(load_config(config_path)) as services:
        return {hit.id for hit in services.index.iter_hits(SearchQuery(q=q))}


def test_rerun_of_a_killed_archive_indexes_what_it_left(config_path, make_record):
    installed(config_path, aged_records(make_record, 500))
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": "index.staged:1"})
    assert killed.returncode == -signal.SIGKILL
    assert searchable(config_path) == set()  # moved, not yet searchable

    rerun = archivist(config_path, "archive", "--as-of", AS_OF)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.decode().strip() == "archived 0, indexed 500"
    assert len(searchable(config_path)) == 500
    assert archivist(config_path, "verify").stdout.decode().startswith("ok: 500 records")


@pytest.mark.parametrize(
    "rerun", [["dispose", "--as-of", "2031-01-01"], ["archive", "--as-of", AS_OF]]
)
def test_purged_records_leave_search_at_the_next_job_after_a_killed_dispose(
    config_path, make_record, rerun
):
    installed(config_path, aged_records(make_record, 300))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    assert len(searchable(config_path)) == 300
    # the purge commits; the process dies before the index hears of it
    killed = archivist(config_path, "dispose", "--as-of", "2031-01-01",
                       env={"ARCHIVIST_CRASH_AT": "store.catalog_committed:1"})
    assert killed.returncode == -signal.SIGKILL
    assert len(searchable(config_path)) == 300  # purged, still found

    check = archivist(config_path, "verify")
    assert check.returncode == 0
    assert "300 records wait for index catch-up" in check.stdout.decode()

    assert disposal_list(config_path) == set()  # purged, not yet listed

    result = archivist(config_path, *rerun)
    assert result.returncode == 0, result.stderr
    assert searchable(config_path) == set()
    assert "wait for index catch-up" not in archivist(config_path, "verify").stdout.decode()
    # whichever job runs next lists what the killed run purged
    assert disposal_list(config_path) == {f"K{i:04d}" for i in range(300)}


def disposal_list(config_path: Path) -> set[str]:
    from archivist.disposals import DisposalFilter, list_disposals

    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            page = list_disposals(session, DisposalFilter(per_page=1000))
    return {d.record_id for d in page.disposals}


def killed_mid_move(config_path: Path, make_record, count: int) -> list[str]:
    """`count` aged records, then an archive run killed once it stored them and before it
    deleted them from the active database: they are in the middle of their move."""
    installed(config_path, aged_records(make_record, count))
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": "archive.after_store:1"})
    assert killed.returncode == -signal.SIGKILL
    return [f"K{i:04d}" for i in range(count)]


def test_restore_of_a_record_a_killed_archive_left_pending(config_path, make_record):
    killed_mid_move(config_path, make_record, 50)
    with Services.open(load_config(config_path)) as services:
        assert services.store.counts()["pending"] == 50  # archived and still active
        record = restore_record(services.sessions, services.store, services.index, "K0007",
                                "admin", utcnow())
        assert record.id == "K0007"
        assert services.store.info("K0007").state == "restored"
        assert list(services.store.iter_pending()) == []
        with services.sessions.begin() as session:
            assert set(find_active(session, [f"K{i:04d}" for i in range(50)])) == {"K0007"}


def test_archivist_index_settles_the_moves_a_killed_archive_left(config_path, make_record):
    """Records a killed run stored and did not yet delete are active and marked pending in the
    store: `archivist index` (like the worker's catch-up) finishes their move and indexes
    them, rather than leaving them in both places until the next archive run."""
    ids = killed_mid_move(config_path, make_record, 30)
    with Services.open(load_config(config_path)) as services:
        assert services.store.counts()["pending"] == 30

    result = archivist(config_path, "index")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "indexed 30\n"
    with Services.open(load_config(config_path)) as services:
        counts = services.store.counts()
        assert (counts["pending"], counts["archived"], counts["indexed"]) == (0, 30, 30)
        with services.sessions.begin() as session:
            assert find_active(session, ids) == {}
        assert services.index.search(SearchQuery(q="", per_page=100)).total == 30


def test_a_disposal_leaves_records_in_the_middle_of_a_move_alone(config_path, make_record):
    """A disposal chunk that meets records an archive run has stored but not yet deleted from
    the active database (a killed run's here; a live run's look the same to it) purges none:
    purged, they would be listed as disposed of while their rows stay active."""
    ids = killed_mid_move(config_path, make_record, 20)
    with Services.open(load_config(config_path)) as services:
        due = purge_with_proof(services.sessions, services.store, ids, services.config.retention,
                               datetime(2031, 1, 1, tzinfo=UTC), utcnow(), "disposal", "cli")
        assert due == 0
        assert services.store.counts()["pending"] == 20
        assert {services.store.info(i).state for i in ids} == {"archived"}
        with services.sessions.begin() as session:
            assert set(find_active(session, ids)) == set(ids)
    assert disposal_list(config_path) == set()
    # the next run settles the move first, then disposes of them, listed
    result = archivist(config_path, "dispose", "--as-of", "2031-01-01")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "purged 20"
    assert disposal_list(config_path) == set(ids)
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            assert find_active(session, ids) == {}


@pytest.mark.parametrize(("point", "restored", "skipped", "status"), [
    ("restore.after_mark", b"restored 2 (2 processes)", b"", 0),  # rolled back, then restored
    # its insert committed, not its `restored` events: the retry completes it, and says so
    ("restore.after_insert", b"restored 2 (2 processes)", b"", 0),
], ids=["after_mark", "after_insert"])
def test_a_restore_retried_after_a_killed_one_settles_it_at_once(
    config_path, make_record, point, restored, skipped, status
):
    """A killed restore leaves its records marked `pending`; the retry settles that leftover
    itself instead of refusing them as `restore_in_progress` until the next archive run."""
    installed(config_path, aged_records(make_record, 20))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    ids = ["K0003", "K0004"]
    killed = archivist(config_path, "restore", *ids, "--reason", "first try",
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL
    retried = archivist(config_path, "restore", *ids, "--reason", "second try")
    assert retried.returncode == status, retried.stderr
    assert restored in retried.stdout
    assert b"restore_in_progress" not in retried.stderr and skipped in retried.stderr
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            assert set(find_active(session, [f"K{i:04d}" for i in range(20)])) == set(ids)
        assert services.store.counts()["pending"] == 0
        assert services.store.verify() == []
        in_search = {hit.id for hit in services.index.iter_hits(SearchQuery())}
        assert in_search == {f"K{i:04d}" for i in range(20)} - set(ids)  # out of search now


def test_a_single_restore_retried_after_a_killed_one_completes_it(config_path, make_record):
    """The one-click restore (the API's, one process) of a record whose restore was killed
    after its insert committed: it completes that restore and returns the record."""
    installed(config_path, aged_records(make_record, 5))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    killed = archivist(config_path, "restore", "K0003", "--reason", "first try",
                       env={"ARCHIVIST_CRASH_AT": "restore.after_insert:1"})
    assert killed.returncode == -signal.SIGKILL

    with Services.open(load_config(config_path)) as services:
        record = restore_record(services.sessions, services.store, services.index, "K0003",
                                "admin", utcnow(), "second try")

        assert record.id == "K0003"
        assert services.store.info("K0003").state == "restored"
        assert "K0003" not in {h.id for h in services.index.iter_hits(SearchQuery())}


def test_erasing_after_a_killed_restore_settles_it_instead_of_refusing(config_path, make_record):
    """The killed restore's insert committed; the erasure settles the move (the record is
    active) and erases its archived version, rather than refusing it as a move in progress."""
    installed(config_path, aged_records(make_record, 5))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    killed = archivist(config_path, "restore", "K0002", "--reason", "first try",
                       env={"ARCHIVIST_CRASH_AT": "restore.after_insert:1"})
    assert killed.returncode == -signal.SIGKILL

    erased = archivist(config_path, "erase", "--record", "K0002", "--reason", "asked")

    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.startswith(b"erased 1")
    with Services.open(load_config(config_path)) as services:
        assert services.store.info("K0002").state == "erased"
        assert services.store.counts()["pending"] == 0
        with services.sessions.begin() as session:
            assert set(find_active(session, ["K0002"])) == {"K0002"}  # the CRM's to erase


@pytest.mark.parametrize("point", ["archive.after_store", "archive.after_commit"])
def test_stats_after_a_killed_archive_count_each_record_once(config_path, make_record, point):
    """Killed before its active delete, the batch's records count as active; killed after it
    committed, as archived (only the mark is left): each in one count, never in neither."""
    installed(config_path, aged_records(make_record, 30))
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL

    stats = json.loads(archivist(config_path, "stats").stdout)

    assert stats["active"] + stats["archived"] == 30
    assert stats["archived"] == (30 if point == "archive.after_commit" else 0)


@pytest.mark.parametrize("point", ["restore.after_mark", "restore.after_insert"])
def test_stats_after_a_killed_restore_count_each_record_once(config_path, make_record, point):
    """Killed before its insert, the restore's records still count as archived; killed after
    it committed, as active (their rows are back, the catalog not told yet)."""
    installed(config_path, aged_records(make_record, 30))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    killed = archivist(config_path, "restore", "K0002", "--reason", "first try",
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL

    stats = json.loads(archivist(config_path, "stats").stdout)

    assert stats["active"] + stats["archived"] == 30
    assert stats["active"] == (1 if point == "restore.after_insert" else 0)


def test_a_retried_restore_takes_a_killed_ones_records_out_of_search(config_path, make_record):
    """Killed after the catalog marked the records restored, before they left the index:
    they are found until a retry says they are active and takes them out of search."""
    installed(config_path, aged_records(make_record, 30))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    killed = archivist(config_path, "restore", "K0002", "K0003", "--reason", "first try",
                       env={"ARCHIVIST_CRASH_AT": "restore.before_index:1"})
    assert killed.returncode == -signal.SIGKILL
    assert {"K0002", "K0003"} <= searchable(config_path)

    retried = archivist(config_path, "restore", "K0002", "K0003", "--reason", "again")

    assert retried.returncode == 1  # nothing left to restore ...
    assert "skipped K0003: already_active" in retried.stderr.decode()
    found = searchable(config_path)  # ... but out of search now
    assert not {"K0002", "K0003"} & found and len(found) == 28


def killed_process_restore(config_path: Path, make_record, point: str) -> None:
    """Five aged records archived, K0003 a child of K0002, and a restore of that process
    killed at `point`."""
    records = aged_records(make_record, 5)
    records[3]["parent_id"] = "K0002"
    installed(config_path, records)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    killed = archivist(config_path, "restore", "K0002", "--reason", "first try",
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL


def test_a_one_click_restore_after_a_killed_one_takes_its_process_out_of_search(
    config_path, make_record
):
    killed_process_restore(config_path, make_record, "restore.before_index")
    assert {"K0002", "K0003"} <= searchable(config_path)

    with Services.open(load_config(config_path)) as services, pytest.raises(NotArchived):
        restore_process(services.sessions, services.store, services.index, "K0003", "admin",
                        utcnow())

    assert searchable(config_path) == {"K0000", "K0001", "K0004"}


def in_active_db(config_path: Path, *statements: str) -> None:
    """Change the active database by hand, as a user's SQL would."""
    active = load_config(config_path).active_url.removeprefix("sqlite:///")
    with sqlite3.connect(active) as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def settled_states(config_path: Path, *record_ids: str) -> list[str]:
    """Settle what a killed move left (a dispose run does first), then these records' states."""
    assert archivist(config_path, "dispose", "--as-of", "2021-01-01").returncode == 0
    with Services.open(load_config(config_path)) as services:
        return [services.store.info(record_id).state for record_id in record_ids]


def test_a_killed_restore_whose_row_was_changed_since_is_completed_not_undone(
    config_path, make_record
):
    """The restore's insert committed and a row was edited before anything settled it: the
    other record of its process, found as archived, proves the restore reached the active
    database, so the edited row is the live version and the record restored, not archived as
    well."""
    killed_process_restore(config_path, make_record, "restore.after_insert")
    in_active_db(config_path, "UPDATE active_records SET body = 'edited' WHERE id = 'K0002'")

    assert settled_states(config_path, "K0002", "K0003") == ["restored", "restored"]
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            assert find_active(session, ["K0002"])["K0002"].body == "edited"


def test_a_killed_restore_whose_row_was_deleted_since_is_completed_not_split(
    config_path, make_record
):
    """The restore's insert committed, then one of its rows was deleted by hand: the other
    record of its process, found as archived, proves the restore reached the active database,
    so the deleted one is restored too, not left archived apart from its process."""
    killed_process_restore(config_path, make_record, "restore.after_insert")
    in_active_db(config_path, "DELETE FROM active_records WHERE id = 'K0003'")

    assert settled_states(config_path, "K0002", "K0003") == ["restored", "restored"]


def test_a_killed_archive_whose_process_changed_keeps_a_deleted_row_with_it(
    config_path, make_record
):
    """Killed after storing, before deleting: then one row of a process was edited and another
    deleted by hand. The process stays active whole: the deleted row's copy is not left
    archived apart from it."""
    records = aged_records(make_record, 5)
    records[3]["parent_id"] = "K0002"
    installed(config_path, records)
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": "archive.after_store:1"})
    assert killed.returncode == -signal.SIGKILL
    in_active_db(config_path, "DELETE FROM active_records WHERE id = 'K0003'",
                 "UPDATE active_records SET body = 'edited' WHERE id = 'K0002'")

    # K0004, untouched, ends its move
    assert settled_states(config_path, "K0002", "K0003", "K0004") == [
        "restored", "restored", "archived"
    ]
    # as a run that did not crash: no restore grace (the records never left), so the next
    # run archives the edited process again by its own age
    with Services.open(load_config(config_path)) as services:
        assert services.store.info("K0002").restored_at is None
    rerun = archivist(config_path, "archive", "--as-of", AS_OF)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.decode().startswith("archived 1,")  # K0002; K0003 was deleted


def test_worker_start_settles_a_killed_archive(config_path, make_record, tmp_path):
    installed(config_path, aged_records(make_record, 50))
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": "archive.after_store:1"})
    assert killed.returncode == -signal.SIGKILL
    pin_worker_schedule(config_path)
    config = load_config(config_path)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "archivist", "worker", "--config", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        with Services.open(config) as services:
            while time.monotonic() < deadline and services.store.counts()["pending"]:
                time.sleep(0.2)
            assert services.store.counts()["pending"] == 0, "the worker did not settle"
            with services.sessions.begin() as session:
                assert find_active(session, [f"K{i:04d}" for i in range(50)]) == {}
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        log.close()


def test_a_failed_run_records_what_it_moved(config_path, make_record):
    """A full disk part-way: stats' last run counts the batches that did move, with the error."""
    installed(config_path, aged_records(make_record, 1000))
    failed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_FAIL_AT": "archive.before_store:3"})
    assert failed.returncode != 0
    assert "No space left on device" in failed.stderr.decode()
    stats = json.loads(archivist(config_path, "stats").stdout)
    assert stats["archived"] == 400  # batches of 200: two moved, the third failed
    assert stats["last_run"]["archived"] == 400
    assert "No space left on device" in stats["last_run"]["error"]
    assert stats["last_run"]["finished_at"] is not None


def test_a_run_failing_after_a_batch_left_the_active_database_counts_that_batch(
    config_path, make_record
):
    """The disk fills as the store clears a batch's move marks, after its rows were deleted:
    those records left the active database, so the failed run counts them too."""
    installed(config_path, aged_records(make_record, 1000))
    failed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_FAIL_AT": "archive.after_commit:3"})
    assert failed.returncode != 0
    assert "No space left on device" in failed.stderr.decode()
    stats = json.loads(archivist(config_path, "stats").stdout)
    assert stats["active"] == 400  # batches of 200: the third left, then the run failed
    assert stats["last_run"]["archived"] == 600
    assert "No space left on device" in stats["last_run"]["error"]


# --- processes --------------------------------------------------------------------------------

PROCESS_CRASH_POINTS = [
    "archive.before_store",
    "store.frames_written",
    "store.catalog_committed",
    "archive.after_store",
    "archive.after_delete",
    "archive.after_commit",
]
RESTORE_CRASH_POINTS = [
    "restore.after_mark",
    "restore.before_insert_commit",
    "restore.after_insert",
    "store.frames_written",
    "store.catalog_committed",
]


def generate_processes(count: int, rng: random.Random, start: int = 0) -> list[list[dict]]:
    """Processes of 1-200 records: a root, each other record under an earlier one. About one
    in five has a young record, so the whole process stays active."""
    records = list(generate_records(count, seed=rng.randint(0, 10**6), start=start))
    processes: list[list[dict]] = []
    i = 0
    while i < len(records):
        size = min(rng.choice([1, 1, 2, 5, 20, 60, 200, rng.randint(1, 200)]), len(records) - i)
        group = records[i : i + size]
        for n, record in enumerate(group):
            record["updated_at"] = "2020-01-01T00:00:00Z"
            if n:
                record["parent_id"] = group[rng.randrange(n)]["id"]
        if rng.random() < 0.2:
            group[rng.randrange(size)]["updated_at"] = "2029-12-31T00:00:00Z"
        processes.append(group)
        i += size
    return processes


def check_processes_whole(config_path: Path, processes: list[list[dict]]) -> tuple[int, int]:
    """Every process wholly active or wholly archived, nothing doubled or lost; verify clean.
    Returns how many processes are archived and active."""
    expected = {r["id"]: r for group in processes for r in group}
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            active = find_active(session, expected)
        archived = services.store.find_archived(expected)
        assert not set(active) & set(archived), "a record is in both places"
        assert set(active) | set(archived) == set(expected), "a record is in neither place"
        counts = [0, 0]
        for group in processes:
            ids = {r["id"] for r in group}
            assert ids <= archived or ids <= set(active), f"process {group[0]['id']} is split"
            counts[0 if ids <= archived else 1] += 1
        for record_id in archived:
            assert services.store.get(record_id) == expected[record_id]
        for record_id, record in active.items():
            assert record.to_json() == expected[record_id]
        assert list(services.store.iter_pending()) == []
        assert services.store.verify() == []
    return counts[0], counts[1]


def test_sigkill_during_archive_keeps_processes_whole(tmp_path, config_path):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "4321")))
    assert archivist(config_path, "init").returncode == 0
    processes = generate_processes(6000, rng)
    import_records(config_path, [r for g in processes for r in g], tmp_path)
    for point in PROCESS_CRASH_POINTS:
        env = {"ARCHIVIST_CRASH_AT": f"{point}:{rng.randint(1, 4)}"}
        result = archivist(config_path, "archive", "--as-of", AS_OF, env=env)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
    killed, extra = 0, 0
    for _ in range(20):
        if killed >= 4:
            break
        process = archivist(config_path, "archive", "--as-of", AS_OF, wait=False)
        if kill_after_it_starts(process, config_path, rng.uniform(0, 1.2)) == -signal.SIGKILL:
            killed += 1
        else:
            fresh = generate_processes(1500, rng, start=200_000 + extra)
            extra += 1500
            processes.extend(fresh)
            import_records(config_path, [r for g in fresh for r in g], tmp_path)
    assert killed >= 3
    result = archivist(config_path, "archive", "--as-of", AS_OF)
    assert result.returncode == 0, result.stderr
    archived, active = check_processes_whole(config_path, processes)
    young = sum(any(r["updated_at"].startswith("2029") for r in g) for g in processes)
    assert (archived, active) == (len(processes) - young, young)


@pytest.mark.parametrize("mode", ["process", "bulk"])
def test_sigkill_during_restore_keeps_processes_whole(tmp_path, config_path, mode):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "99")) + len(mode))
    assert archivist(config_path, "init").returncode == 0
    processes = generate_processes(5000, rng)
    for group in processes:  # every process is archived first
        for record in group:
            record["updated_at"] = "2020-01-01T00:00:00Z"
    import_records(config_path, [r for g in processes for r in g], tmp_path)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0

    def command() -> list[str]:
        if mode == "process":
            group = rng.choice(processes)
            return ["restore", rng.choice(group)["id"], "--reason", "crash test"]
        return ["restore", "--search", f"q={rng.choice(['refund', '退款', 'invoice'])}",
                "--reason", "crash test"]

    for point in RESTORE_CRASH_POINTS:
        env = {"ARCHIVIST_CRASH_AT": f"{point}:1"}
        result = archivist(config_path, *command(), env=env)
        assert result.returncode in (-signal.SIGKILL, 0), (point, result.stderr)
    for _ in range(4):
        process = archivist(config_path, *command(), wait=False)
        kill_after_it_starts(process, config_path, rng.uniform(0, 0.3))
    # the next run settles whatever a restore left half done; as of a date within the
    # restores' grace, it archives none of them back
    result = archivist(config_path, "archive", "--as-of", "2026-01-01")
    assert result.returncode == 0, result.stderr
    archived, active = check_processes_whole(config_path, processes)
    assert active >= 1 and archived >= 1


@pytest.mark.parametrize(("point", "rerun"), [
    ("erase.after_store", ["archive", "--as-of", AS_OF]),
    ("store.catalog_committed", ["erase", "--customer", "C-OTHER", "--reason", "asked too"]),
])
def test_an_erasure_killed_half_way_is_finished_by_the_next_run(
    config_path, make_record, point, rerun
):
    marker = b"vexquorblint"
    theirs = [
        make_record(id=f"X{i}", customer_id="C-GONE", body=f"Note {marker.decode()} {i}",
                    updated_at="2020-01-02T00:00:00Z")
        for i in range(5)
    ]
    installed(config_path, theirs + aged_records(make_record, 20))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    config = load_config(config_path)
    with Services.open(config) as services:  # an agent searched for them: the log holds it
        (seq,) = write_audit(services.sessions, [AuditEvent(
            utcnow(), "agent", "search", marker.decode(), details={"q": marker.decode()}
        )])
    data = config_path.parent / "data"  # the database, the archive and the index
    assert files_holding(data, marker) != []

    killed = archivist(config_path, "erase", "--customer", "C-GONE", "--reason", "asked",
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL
    assert files_holding(config.index_dir, marker) != []  # the store's part done, not the rest

    result = archivist(config_path, *rerun)

    assert result.returncode == 0, result.stderr
    assert files_holding(data, marker) == []
    with Services.open(config) as services:
        assert {services.store.info(f"X{i}").state for i in range(5)} == {"erased"}
        with services.read_sessions.begin() as session:
            assert session.get(AuditEntry, seq).target == "(erased)"
            finished = session.query(AuditEntry).filter(
                AuditEntry.details.contains("interrupted_erasure_finished")
            ).one()
            assert (finished.actor, finished.action) == ("erasure-ledger", "erase")
            details = json.loads(finished.details)
            assert details["interrupted_erasure_finished"] == ledger_id(config)
            # what the killed erasure's own entry would have said: who, and what it erased
            assert details["begun_by"] == "cli"
            assert len(details["sha256"]) == 5
            assert details["customer_sha256"] == customer_hash("C-GONE")
            assert finished.target == f"customer:{customer_hash('C-GONE')}"
    assert archivist(config_path, "verify").returncode == 0
    assert {"done": ledger_id(config)} in load_ledger(ledger_path(config.key_file))
    again = archivist(config_path, "erase", "--customer", "C-GONE", "--reason", "asked")
    assert again.stdout.decode().splitlines()[0] == "erased 0"


def ledger_id(config) -> str:
    """The id of the first erasure in the ledger."""
    return str(load_ledger(ledger_path(config.key_file))[0]["id"])


def test_an_interrupted_erasure_waits_for_a_restore_under_way(config_path, make_record):
    theirs = [
        make_record(id=f"X{i}", customer_id="C-GONE", updated_at="2020-01-02T00:00:00Z")
        for i in range(3)
    ]
    installed(config_path, theirs)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    killed = archivist(config_path, "erase", "--customer", "C-GONE", "--reason", "asked",
                       env={"ARCHIVIST_CRASH_AT": "store.frames_written:1"})
    assert killed.returncode == -signal.SIGKILL
    config = load_config(config_path)
    with Services.open(config) as services:
        services.store.begin_restore("X0")  # as a restore that crashed would leave it

    first = archivist(config_path, "archive", "--as-of", AS_OF)  # settles the restore after

    assert first.returncode == 0, first.stderr
    assert "waits for a restore" in first.stderr.decode()
    assert {"done": ledger_id(config)} not in load_ledger(ledger_path(config.key_file))
    second = archivist(config_path, "archive", "--as-of", AS_OF)
    assert second.returncode == 0, second.stderr
    with Services.open(config) as services:
        assert {services.store.info(f"X{i}").state for i in range(3)} == {"erased"}
    assert {"done": ledger_id(config)} in load_ledger(ledger_path(config.key_file))


def test_the_index_workers_of_a_killed_rebuild_exit_quietly(config_path, make_record):
    """A rebuild killed while its two index workers write: they see their input end and exit
    without printing tracebacks onto the dead command's stderr (which a service's log keeps)."""
    # past the 20,000 records a rebuild reads before it starts the workers
    installed(config_path, aged_records(make_record, 22_000))
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0

    killed = archivist(config_path, "index", "--rebuild",
                       env={"ARCHIVIST_CRASH_AT": "index.rebuild_read:21"})

    # The output is read to its end: every worker, which shares the stderr, has exited.
    assert killed.returncode == -signal.SIGKILL
    assert killed.stderr.decode() == ""
    assert len(searchable(config_path)) == 22_000  # the live index was never touched
    rebuilt = archivist(config_path, "index", "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert archivist(config_path, "verify").stdout.decode().startswith("ok: 22000 records")


def wait_until_stopped(process: subprocess.Popen[bytes]) -> None:
    """Wait for `process` to stop itself (`ARCHIVIST_STOP_AT`); fails if it ends instead."""
    deadline = time.monotonic() + 120
    stat = Path(f"/proc/{process.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert process.poll() is None, "it ended before reaching its stop"
        assert time.monotonic() < deadline, "it did not reach its stop in two minutes"
        time.sleep(0.02)


def test_a_record_restored_and_archived_again_while_a_rebuild_reads_is_indexed_once(
    config_path, make_record
):
    installed(config_path, [
        make_record(id="B0", body="parcel returned", updated_at="2020-01-02T00:00:00Z"),
        *aged_records(make_record, 1999),
    ])
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    rebuild = archivist(config_path, "index", "--rebuild", wait=False,
                        env={"ARCHIVIST_STOP_AT": "index.rebuild_read:2"})  # read them all
    try:
        wait_until_stopped(rebuild)
        restored = archivist(config_path, "restore", "B0", "--reason", "asked")
        assert restored.returncode == 0, restored.stderr
        archived = archivist(config_path, "archive", "--as-of", AS_OF)  # aged again by then
        assert archived.stdout.decode().startswith("archived 1,"), archived.stderr
    finally:
        rebuild.send_signal(signal.SIGCONT)

    assert rebuild.wait() == 0  # not "duplicate record id in rebuild input: B0"
    assert len(searchable(config_path)) == 2000
    assert archivist(config_path, "verify").stdout.decode().startswith("ok: 2000 records")


def test_a_rebuild_killed_as_it_goes_live_keeps_nothing_erased_or_restored(
    config_path, make_record
):
    """Records are erased, restored and archived while `index --rebuild` runs (after it read
    them), and it is killed just after its new index went live: no erased word is in any index
    file, the restored record is out of search, and the next catch-up indexes the rest."""
    gone = [make_record(id=f"A{i}", customer_id="C-GONE",
                        body="zqmarkx parcel for gone.customer@example.org",
                        updated_at="2020-01-02T00:00:00Z") for i in range(3)]
    back = make_record(id="B0", customer_id="C-BACK", body="parcel returned",
                       updated_at="2020-01-02T00:00:00Z")
    installed(config_path, [*gone, back, *aged_records(make_record, 1996)])
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    # stopped once it read the last of the 2,000 records, killed once it swapped its index in
    rebuild = archivist(config_path, "index", "--rebuild", wait=False, env={
        "ARCHIVIST_STOP_AT": "index.rebuild_read:2",
        "ARCHIVIST_CRASH_AT": "index.rebuild_swapped:1",
    })
    try:
        wait_until_stopped(rebuild)
        erased = archivist(config_path, "erase", "--customer", "C-GONE", "--reason", "asked")
        assert erased.returncode == 0, erased.stderr
        restored = archivist(config_path, "restore", "B0", "--reason", "asked")
        assert restored.returncode == 0, restored.stderr
        import_records(config_path, aged_records(make_record, 5, prefix="L"),
                       config_path.parent)
        assert archivist(config_path, "archive").returncode == 0  # (B0 is not aged again)
    finally:
        rebuild.send_signal(signal.SIGCONT)
    assert rebuild.wait() == -signal.SIGKILL

    index_dir = load_config(config_path).index_dir
    assert (index_dir / "CURRENT").read_text() == "g000002"  # live, its catch-up not recorded
    assert files_holding(index_dir, b"zqmark") == []
    assert files_holding(index_dir, b"gone.customer") == []
    assert "B0" not in searchable(config_path)
    verified = archivist(config_path, "verify").stdout.decode()
    assert verified.startswith("ok: 2005 records checked, no problems; 5 records wait for index")
    caught_up = archivist(config_path, "index")
    assert caught_up.returncode == 0, caught_up.stderr
    assert {f"L{i:04d}" for i in range(5)} <= searchable(config_path)
    assert len(searchable(config_path)) == 2001
    assert archivist(config_path, "verify").stdout.decode().startswith("ok: 2005 records")


def test_a_rebuild_killed_before_its_swap_leaves_no_erased_word_past_the_next_index_job(
    config_path, make_record
):
    """A rebuild read a customer's records, they were erased, and it was killed with its new
    index complete but not live: that folder goes at the worker's next index job, not only
    when a process next opens the index."""
    gone = [make_record(id=f"A{i}", customer_id="C-GONE", body="zqmarkx parcel",
                        updated_at="2020-01-02T00:00:00Z") for i in range(3)]
    installed(config_path, [*gone, *aged_records(make_record, 1997)])
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    rebuild = archivist(config_path, "index", "--rebuild", wait=False, env={
        "ARCHIVIST_STOP_AT": "index.rebuild_read:2",
        "ARCHIVIST_CRASH_AT": "index.rebuild_built:1",
    })
    try:
        wait_until_stopped(rebuild)
        erased = archivist(config_path, "erase", "--customer", "C-GONE", "--reason", "asked")
        assert erased.returncode == 0, erased.stderr
        worker = Services.open(load_config(config_path))  # a worker's, open all along
        assert worker.index.search(SearchQuery(q="parcel")).total == 1997
    finally:
        rebuild.send_signal(signal.SIGCONT)
    assert rebuild.wait() == -signal.SIGKILL
    index_dir = load_config(config_path).index_dir
    with worker:
        assert files_holding(index_dir / "g000002", b"zqmark")  # read before the erasure
        run_index_job(worker)
        assert sorted(p.name for p in index_dir.glob("g*")) == ["g000001"]
        assert files_holding(index_dir, b"zqmark") == []
        assert len({hit.id for hit in worker.index.iter_hits(SearchQuery(q="parcel"))}) == 1997


def dead_pid() -> int:
    """The id of a process that has ended (what a killed run's folders are named by)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, check=True)
    return int(done.stdout)


def test_a_killed_archives_staged_segments_leave_at_the_next_erasure(config_path, make_record):
    installed(config_path, [make_record(id="T0", customer_id="C1")])
    assert archivist(config_path, "archive", "--as-of", "2026-01-01").returncode == 0
    import_records(config_path, [make_record(
        id="X1", customer_id="CX-1", body="xylophonequark xena@example.com"
    )], config_path.parent)
    killed = archivist(config_path, "archive", "--as-of", "2026-01-01",
                       env={"ARCHIVIST_CRASH_AT": "index.staged:1"})
    assert killed.returncode == -signal.SIGKILL
    index_dir = load_config(config_path).index_dir
    (staged,) = {p.parent for p in files_holding(index_dir, b"xena@example.com")}
    assert "_staged" in staged.parts
    # a merge a killed run left half-written, and one a live process is writing
    gen = index_dir / (index_dir / "CURRENT").read_text().strip()
    merging = gen / "_staged" / f"{dead_pid()}-merge-{os.urandom(4).hex()}"
    shutil.copytree(staged, merging)
    live = gen / "_staged" / f"{os.getpid()}-merge-{os.urandom(4).hex()}"
    shutil.copytree(staged, live)

    result = archivist(config_path, "erase", "--customer", "CX-1", "--reason", "gdpr")

    assert result.returncode == 0, result.stderr
    assert files_holding(config_path.parent / "data", b"xena@example.com") == [
        p for p in files_holding(live, b"xena@example.com")
    ] != []  # a running process's merge is its own (it checks for erasures before attaching)
    assert not merging.exists()
    for command in (["archive", "--as-of", "2026-01-01"], ["index"], ["verify"]):
        assert archivist(config_path, *command).returncode == 0


def test_a_job_with_nothing_to_index_removes_a_killed_runs_merge(config_path, make_record):
    installed(config_path, [make_record(id="T0", customer_id="C1", body="xylophonequark")])
    assert archivist(config_path, "archive", "--as-of", "2026-01-01").returncode == 0
    index_dir = load_config(config_path).index_dir
    (shard,) = {p.parent for p in files_holding(index_dir, b"xylophonequark")}
    merging = shard.parent / "_staged" / f"{dead_pid()}-merge-{os.urandom(4).hex()}"
    shutil.copytree(shard, merging / "w0")

    result = archivist(config_path, "dispose", "--as-of", "2021-01-01")  # purges nothing

    assert result.returncode == 0, result.stderr
    assert not merging.exists()
    assert files_holding(index_dir, b"xylophonequark") != []  # the live shard keeps its own


@pytest.mark.parametrize("loss", ["wal deleted", "older copy put back"])
def test_a_catalog_that_lost_committed_writes_is_refused_and_its_segments_kept(
    config_path, make_record, tmp_path, loss
):
    """The catalog's WAL deleted after a crash (or an older copy of `catalog.db` put back):
    the records of the lost writes are in neither place. Every command refuses before the
    store is opened, which would take their segment data for a crashed writer's leftovers and
    delete it; with the lost part put back, the next run settles everything."""
    installed(config_path, aged_records(make_record, 300))
    catalog = load_config(config_path).archive_dir / "catalog.db"
    older = tmp_path / "older"
    older.mkdir()
    if loss == "older copy put back":  # a copy of the whole catalog before the run
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{catalog}{suffix}").exists():
                shutil.copy2(f"{catalog}{suffix}", older / f"catalog.db{suffix}")
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": "archive.after_commit:1"})
    assert killed.returncode == -signal.SIGKILL
    wal = Path(f"{catalog}-wal")
    assert wal.stat().st_size > 0, "the run's commits should still be in the WAL"
    lost = tmp_path / "lost"
    lost.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy2(f"{catalog}{suffix}", lost / f"catalog.db{suffix}")
        Path(f"{catalog}{suffix}").unlink()
        if loss == "wal deleted" and suffix == "":
            shutil.copy2(lost / "catalog.db", catalog)
    if loss == "older copy put back":
        for copy in older.iterdir():
            shutil.copy2(copy, catalog.parent / copy.name)
    segments = catalog.parent / "segments"
    kept = {p.name: p.read_bytes() for p in segments.iterdir()}
    assert kept, "the run should have written a segment"

    for command in (["verify"], ["archive", "--as-of", AS_OF], ["stats"], ["init"]):
        result = archivist(config_path, *command)
        assert result.returncode == 1, (command, result.stdout)
        message = result.stderr.decode()
        assert message.startswith("error: the archive catalog "), (command, message)
        assert "lost its latest writes" in message and "unexpected" not in message
        assert {p.name: p.read_bytes() for p in segments.iterdir()} == kept, command

    for suffix in ("", "-wal", "-shm"):  # the lost part put back
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
        shutil.copy2(lost / f"catalog.db{suffix}", f"{catalog}{suffix}")
    rerun = archivist(config_path, "archive", "--as-of", AS_OF)
    assert rerun.returncode == 0, rerun.stderr
    checked = archivist(config_path, "verify")
    assert checked.returncode == 0, checked.stderr
    with Services.open(load_config(config_path)) as services:
        assert services.store.counts()["archived"] == 300
        with services.sessions.begin() as session:
            assert count_active(session) == 0
