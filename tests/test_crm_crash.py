"""Crash safety against PostgreSQL with the CRM's own tables: SIGKILL `archivist archive` and a
restore at every step, rerun, and no row is lost or doubled; `archivist verify` passes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from archivist.active_db import utcnow
from archivist.config import load_config
from indexer.jobs.crm_restore import restore_crm_process
from indexer.search import SearchQuery
from indexer.services import Services
from tests.pg import find_pg_bin, run_postgres
from tests.test_crash_safety import kill_after_it_starts
from tests.test_crm_tables import EXAMPLE, run_sql, write_config

if find_pg_bin() is None and not os.environ.get("ARCHIVIST_REQUIRE_POSTGRES"):
    pytest.skip("PostgreSQL is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow
CASES = 3000
AS_OF = "2026-06-01"
CRASH_POINTS = [
    "archive.before_store",
    "store.frames_written",
    "store.catalog_committed",
    "archive.after_store",
    "archive.after_delete",
    "archive.after_commit",
]

# Cases in pairs (every fifth case is the child of the one before), each with a message and a
# note; every tenth case (with its parent) is recent, and the message of every 97th has an
# attachment, so the run also leaves processes behind.
DATA = f"""
INSERT INTO accounts (id, name) VALUES (1, 'Acme');
INSERT INTO cases (id, account_id, parent_case_id, queue, title, description, state, amount,
                   opened_at, last_activity_at, custom, tags)
SELECT g, 1, CASE WHEN g % 5 = 0 THEN g - 1 END, 'support', 'case ' || g, 'refund body ' || g,
       'closed', g / 100.0, '2023-01-01'::timestamptz + g * interval '1 minute',
       CASE WHEN g % 10 = 0 THEN now() ELSE '2023-02-01'::timestamptz + g * interval '1 second'
       END, jsonb_build_object('g', g, 'x', 1.50), ARRAY['t' || g]
FROM generate_series(1, {CASES}) g;
INSERT INTO case_messages (msg_id, case_id, queue, text, sent_at, ratings)
SELECT md5(g::text)::uuid, g, 'support', 'message ' || g,
       '2023-01-01'::timestamptz + g * interval '1 minute', ARRAY[g, g + 1]
FROM generate_series(1, {CASES}) g;
INSERT INTO notes (id, case_id, author, body, written_at, minutes)
SELECT g, g, 'agent', 'note ' || g, '2023-01-01'::timestamp + g * interval '1 minute', g * 0.25
FROM generate_series(1, {CASES}) g;
INSERT INTO attachments (id, message_id, file_name)
SELECT g, md5(g::text)::uuid, 'file' FROM generate_series(97, {CASES}, 97) g;
"""

SNAPSHOT = """
SELECT 'case:' || id, row_to_json(t)::text FROM cases t
UNION ALL SELECT 'msg:' || msg_id, row_to_json(t)::text FROM case_messages t
UNION ALL SELECT 'note:' || id, row_to_json(t)::text FROM notes t
"""


def archivist(config_path: Path, *args: str, env: dict[str, str] | None = None,
              wait: bool = True) -> subprocess.Popen[bytes] | subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "archivist", *args, "--config", str(config_path)]
    full_env = {**os.environ, **(env or {})}
    if wait:
        return subprocess.run(command, capture_output=True, env=full_env, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=full_env)


def rows(url: str) -> dict[str, str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = dict(connection.execute(text(SNAPSHOT)).all())
    engine.dispose()
    return found


@pytest.fixture
def crm_config(tmp_path: Path):
    with run_postgres() as url:
        run_sql(url, (EXAMPLE / "schema.sql").read_text())
        run_sql(url, DATA)
        path = write_config(tmp_path, url)
        path.write_text(path.read_text().replace("batch_size = 3", "batch_size = 200"))
        assert archivist(path, "init").returncode == 0
        yield path, url


def check_one_place(
    config_path: Path, url: str, original: dict[str, str], reused: frozenset[str] = frozenset()
) -> dict[str, str]:
    """Every row is in its table or archived, never both or neither; returns the rows left.

    :param reused: ids the CRM gave a new row while the old one is archived (both are kept)
    """
    left = rows(url)
    with Services.open(load_config(config_path)) as services:
        archived = services.store.find_archived(original)
        assert not (set(left) & archived) - reused, "a row is both archived and in its table"
        assert set(left) | archived == set(original), "a row is neither archived nor in a table"
        assert list(services.store.iter_pending()) == []
        for record_id in set(left) - reused:
            assert left[record_id] == original[record_id]
        for record_id in list(archived)[:200]:
            assert len([h for h in services.store.history(record_id)
                        if h.event == "archived"]) <= 2
    result = archivist(config_path, "verify")
    assert result.returncode == 0, result.stderr
    return left


def test_crm_sigkill_during_archive_and_restore_loses_and_doubles_nothing(crm_config):
    config_path, url = crm_config
    rng = random.Random(int(os.environ.get("CRASH_SEED", "4321")))
    original = rows(url)

    for point in CRASH_POINTS:
        env = {"ARCHIVIST_CRASH_AT": f"{point}:{rng.randint(1, 4)}"}
        result = archivist(config_path, "archive", "--as-of", AS_OF, env=env)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
    for _ in range(3):
        process = archivist(config_path, "archive", "--as-of", AS_OF, wait=False)
        kill_after_it_starts(process, config_path, rng.uniform(0, 1.5))
    result = archivist(config_path, "archive", "--as-of", AS_OF)
    assert result.returncode == 0, result.stderr
    left = check_one_place(config_path, url, original)
    blocked = {f"case:{g}" for g in range(97, CASES + 1, 97)}
    assert blocked <= set(left)
    assert "case:1" not in left and "case:10" in left and "case:9" in left

    # restores killed before their insert commits, after it, and between `restored` events
    for point, case in [("restore.after_insert", 1), ("restore.after_commit", 2),
                        ("store.catalog_committed", 3)]:
        script = (
            "import sys; from archivist.config import load_config; "
            "from archivist.active_db import utcnow; "
            "from indexer.services import Services; "
            "from indexer.jobs.crm_restore import restore_crm_process\n"
            "with Services.open(load_config(sys.argv[1])) as s:\n"
            "    restore_crm_process(s.sessions, s.store, s.index, s.crm, sys.argv[2], 'admin',"
            " utcnow())\n"
        )
        env = {**os.environ, "ARCHIVIST_CRASH_AT": f"{point}:1"}
        killed = subprocess.run([sys.executable, "-c", script, str(config_path), f"note:{case}"],
                                env=env, capture_output=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
    # the next run settles them (nothing new is aged as of 2000)
    assert archivist(config_path, "archive", "--as-of", "2000-01-01").returncode == 0
    left = check_one_place(config_path, url, original)
    assert "note:1" not in left  # killed before its insert committed: still archived
    for case in (2, 3):  # committed: back, whole, as before
        assert {f"case:{case}", f"note:{case}"} <= set(left)


@pytest.mark.parametrize("point", ["restore.after_insert", "restore.after_commit"])
def test_crm_restores_retried_after_killed_ones_settle_them_at_once(crm_config, point):
    """A killed restore leaves its records marked `pending`; a retry, one process (as the
    API's one-click restore) or in bulk (as the CLI), settles that leftover itself instead of
    refusing them as `restore_in_progress` until the next archive run. Killed before its rows
    went back into the CRM's tables, the retry restores them; killed after, before their
    `restored` events, it completes that restore and counts it as its own. Either way the
    records leave search at once."""
    config_path, url = crm_config
    original = rows(url)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    env = {"ARCHIVIST_CRASH_AT": f"{point}:1"}

    def killed_restore(case: int) -> None:
        killed = archivist(config_path, "restore", f"case:{case}", "--reason", "first", env=env)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert (f"case:{case}" in rows(url)) == (point == "restore.after_commit")

    def in_search(services: Services, case: int) -> set[str]:
        return {hit.id for hit in services.index.iter_hits(SearchQuery(process=f"case:{case}"))}

    killed_restore(3)
    retried = archivist(config_path, "restore", "case:3", "--reason", "again")
    assert retried.returncode == 0, retried.stderr
    # the case, its message and its note
    assert retried.stdout.startswith(b"restored 3 (1 processes)")
    assert b"skipped" not in retried.stderr and b"error" not in retried.stderr

    killed_restore(1)
    with Services.open(load_config(config_path)) as services:
        restored = restore_crm_process(services.sessions, services.store, services.index,
                                       services.crm, "case:1", "admin", utcnow(), "again")
        assert {"case:1", "note:1"} <= set(restored)
        assert in_search(services, 1) == set() and in_search(services, 3) == set()
        assert services.store.info("case:3").state == "restored"
    left = check_one_place(config_path, url, original)
    assert {"case:1", "note:1", "case:3", "note:3"} <= set(left)


@pytest.mark.parametrize("point", ["archive.after_store", "restore.after_commit"])
def test_crm_dispose_after_a_killed_move_settles_it_by_the_crm_tables(crm_config, point):
    """Disposal (and the worker at start) settles what a killed move left before anything
    else, by the rows in the CRM's own tables, not by Archivist's own table (empty then)."""
    config_path, url = crm_config
    original = rows(url)
    env = {"ARCHIVIST_CRASH_AT": f"{point}:1"}
    if point.startswith("archive"):
        killed = archivist(config_path, "archive", "--as-of", AS_OF, env=env)
    else:
        assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
        killed = archivist(config_path, "restore", "case:3", "--reason", "first", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    disposed = archivist(config_path, "dispose", "--as-of", AS_OF)

    assert disposed.returncode == 0, disposed.stderr
    check_one_place(config_path, url, original)


def killed_archive(config_path: Path, point: str) -> tuple[set[str], int]:
    """An archive run killed at `point`: the records it left marked, and the first case with
    a note among them."""
    killed = archivist(config_path, "archive", "--as-of", AS_OF,
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Services.open(load_config(config_path)) as services:
        pending = {e.record_id for e in services.store.iter_pending()}
    return pending, min(int(r.split(":")[1]) for r in pending if r.startswith("note:"))


def test_crm_a_killed_archive_then_a_crm_delete_splits_no_process(crm_config):
    """Killed after storing a batch, before deleting its rows; the CRM then deletes one row of
    a stored process and edits another. The next run keeps that process in the CRM whole: the
    deleted row's copy is not left archived beside it (a split the next runs would not heal).
    Kept as rows that never left (no restore grace), the rest of it is aged still, so that run
    then archives it whole as the CRM has it now."""
    config_path, url = crm_config
    original = rows(url)
    pending, case = killed_archive(config_path, "archive.after_store")
    assert f"case:{case}" in pending
    run_sql(url, f"DELETE FROM notes WHERE id = {case};"
                 f"UPDATE cases SET title = 'edited' WHERE id = {case};")
    edited = rows(url)
    process = {r for r in edited if r.split(":")[1] == str(case)} | {
        f"msg:{r.split(':', 1)[1]}" for r in edited
        if r.startswith("msg:") and f'"case_id":{case},' in edited[r]
    }
    assert len(process) >= 2 and f"case:{case}" in process and f"note:{case}" not in process

    rerun = archivist(config_path, "archive", "--as-of", AS_OF)

    assert rerun.returncode == 0, rerun.stderr
    with Services.open(load_config(config_path)) as services:
        assert services.store.info(f"note:{case}").state == "restored"
        assert [h.event for h in services.store.history(f"case:{case}")] == [
            "archived", "restored", "archived"]
        assert services.store.get(f"case:{case}")["subject"] == "edited"
        hit_ids = {hit.id for hit in services.index.iter_hits(SearchQuery(process=f"case:{case}"))}
        assert f"note:{case}" not in hit_ids and process <= hit_ids
        assert services.store.find_archived(process) == process
    del original[f"note:{case}"]  # the CRM's own delete
    original[f"case:{case}"] = edited[f"case:{case}"]  # and its edit
    check_one_place(config_path, url, original)


def test_crm_a_key_used_again_after_a_killed_archive_leaves_its_process_archived(crm_config):
    """Killed right after its delete committed; the CRM then gives a new note the key of a
    note that run archived. The delete wrote the ledger of rows that left in its own
    transaction, so the next run settles by it: the whole process stays archived, none of it
    marked restored, and the new note stays in the CRM (a key used again while the old row is
    archived)."""
    config_path, url = crm_config
    original = rows(url)
    pending, case = killed_archive(config_path, "archive.after_commit")
    process = {f"case:{case}", f"note:{case}"} | {
        r for r in original if r.startswith("msg:") and f'"case_id":{case},' in original[r]
    }
    assert process <= pending and not process & set(rows(url))  # deleted, still marked
    run_sql(url, "INSERT INTO notes (id, case_id, author, body, written_at) "
                 f"VALUES ({case}, 10, 'agent', 'a new note', now());")  # case 10 is recent

    rerun = archivist(config_path, "archive", "--as-of", AS_OF)

    assert rerun.returncode == 0, rerun.stderr
    with Services.open(load_config(config_path)) as services:
        entries = services.store.entries(process)
        assert {r: (e.state, e.pending) for r, e in entries.items()} == {
            r: ("archived", None) for r in process}
        assert services.store.get(f"note:{case}")["body"] == f"note {case}"
        hit_ids = {hit.id for hit in services.index.iter_hits(SearchQuery(process=f"case:{case}"))}
        assert process <= hit_ids
    left = check_one_place(config_path, url, original, reused=frozenset({f"note:{case}"}))
    assert '"body":"a new note"' in left[f"note:{case}"]
    assert not (process - {f"note:{case}"}) & set(left)


def test_crm_a_retried_restore_completes_a_row_the_crm_deleted_since(crm_config):
    """Killed after its rows went back, before the catalog said so; the CRM then deletes one of
    them. The retry completes the whole restore: that record is not left archived beside the
    rest of its process, back in the CRM."""
    config_path, url = crm_config
    original = rows(url)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    env = {"ARCHIVIST_CRASH_AT": "restore.after_commit:1"}
    killed = archivist(config_path, "restore", "case:3", "--reason", "first", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = rows(url)
    message = next(r for r in before if r.startswith("msg:") and '"case_id":3,' in before[r])
    run_sql(url, "DELETE FROM case_messages WHERE case_id = 3;")

    retried = archivist(config_path, "restore", "case:3", "--reason", "again")

    assert retried.returncode == 0, retried.stderr
    with Services.open(load_config(config_path)) as services:
        assert services.store.info(message).state == "restored"
        assert services.store.info("note:3").state == "restored"
    del original[message]
    check_one_place(config_path, url, original)


def test_crm_a_killed_restore_stays_done_when_the_crm_then_edits_every_row(crm_config):
    """Killed after its insert committed; the CRM then edits every row of the process, so
    none is as it was archived. The insert took the records out of the ledger of rows that
    left in its own transaction, so the next run completes the restore by it: the records are
    restored and out of search, and the CRM's edits stay in its tables."""
    config_path, url = crm_config
    original = rows(url)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    env = {"ARCHIVIST_CRASH_AT": "restore.after_commit:1"}
    killed = archivist(config_path, "restore", "case:3", "--reason", "first", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_sql(url, "UPDATE cases SET description = description || ' reopened', "
                 "last_activity_at = now() WHERE id = 3;"
                 "UPDATE case_messages SET text = text || ' edited' WHERE case_id = 3;"
                 "UPDATE notes SET body = body || ' edited' WHERE case_id = 3;")
    edited = rows(url)
    process = {r for r in edited if edited[r] != original[r]}
    assert len(process) == 3 and {"case:3", "note:3"} <= process

    settled = archivist(config_path, "archive", "--as-of", AS_OF)

    assert settled.returncode == 0, settled.stderr
    assert b"is not archived" not in settled.stderr
    with Services.open(load_config(config_path)) as services:
        entries = services.store.entries(process)
        assert {r: (e.state, e.pending) for r, e in entries.items()} == {
            r: ("restored", None) for r in process}
        assert not {hit.id for hit in services.index.iter_hits(SearchQuery(process="case:3"))}
    original.update({r: edited[r] for r in process})
    check_one_place(config_path, url, original)


def test_crm_a_killed_restore_of_records_the_ledger_lacks_is_undone(crm_config):
    """Records archived while the ledger of rows that left was not kept (a backup that did not
    hold it, recovered) are out of it whether a restore's insert committed or not: a restore
    of them killed before its insert committed, with no row of theirs back in the CRM, is
    undone rather than taken as done, and a retry brings them back."""
    config_path, url = crm_config
    original = rows(url)
    assert archivist(config_path, "archive", "--as-of", AS_OF).returncode == 0
    run_sql(url, "DELETE FROM archived_process_members WHERE root_id = 'case:3';")
    env = {"ARCHIVIST_CRASH_AT": "restore.after_insert:1"}
    killed = archivist(config_path, "restore", "case:3", "--reason", "first", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    settled = archivist(config_path, "archive", "--as-of", "2000-01-01")  # nothing new is aged

    assert settled.returncode == 0, settled.stderr
    with Services.open(load_config(config_path)) as services:
        assert services.store.info("case:3").state == "archived"
        assert services.store.info("note:3").state == "archived"
    check_one_place(config_path, url, original)
    retried = archivist(config_path, "restore", "case:3", "--reason", "again")
    assert retried.returncode == 0, retried.stderr
    assert {"case:3", "note:3"} <= set(check_one_place(config_path, url, original))


def test_crm_archive_run_indexes_what_a_killed_run_left_unindexed(crm_config):
    config_path, url = crm_config
    env = {"ARCHIVIST_CRASH_AT": "archive.after_commit:1"}
    killed = archivist(config_path, "archive", "--as-of", AS_OF, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Services.open(load_config(config_path)) as services:
        left = services.store.counts()
    assert left["archived"] > left["indexed"]

    rerun = archivist(config_path, "archive", "--as-of", "2000-01-01")  # nothing new is aged

    assert rerun.returncode == 0, rerun.stderr
    waiting = left["archived"] - left["indexed"]
    assert rerun.stdout.decode().strip() == f"archived 0, indexed {waiting}"
    with Services.open(load_config(config_path)) as services:
        counts = services.store.counts()
        assert counts["indexed"] == counts["archived"]
