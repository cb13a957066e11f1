"""The CRM's own tables in a SQLite database (`[active] url` may be any SQLAlchemy URL)."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archive_store.backup import hash_file, load_manifest, write_manifest
from archive_store.errors import NotArchived
from archivist.active_db import utcnow
from archivist.config import load_config
from indexer.errors import CrmTablesChanged
from indexer.jobs.crm_restore import restore_crm_many as restore_many
from indexer.jobs.crm_restore import restore_crm_process
from indexer.jobs.erasure import erase_records
from indexer.jobs.runs import run_archive_job, run_dispose_job
from indexer.jobs.verification import verify_all
from indexer.search import SearchQuery
from indexer.services import Services
from indexer.stats import collect_stats
from tests.test_cli import archivist

MAPPING = """
[[active.table]]
name = "notes"
key = "id"
id_prefix = "note:"
kind = "note"
category = { column = "queue" }
status = "open"
subject = { column = "tag" }
created_at = { column = "at" }
updated_at = { column = "at" }
"""


def open_crm(tmp_path: Path, schema: str) -> Services:
    """An installation whose active database is a SQLite file holding `schema`."""
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as connection:
        connection.executescript(schema)
    connection.close()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[active]\nurl = "sqlite:///{database}"\n{MAPPING}\n'
        '[archive]\ndir = "archive"\n[index]\ndir = "index"\n'
        "[retention.default]\narchive_after_days = 365\n"
    )
    return Services.open(load_config(config), create=True)


def crm_rows(services: Services, sql: str) -> list[tuple]:
    database = services.config.active_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.text_factory = bytes  # (a row may hold text that is not UTF-8)
        rows = connection.execute(sql).fetchall()
    connection.close()
    return rows


EVERY_KIND = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, at DATETIME NOT NULL,
                        tag TEXT, meta JSON, due DATE, starts TIME, flag BOOLEAN,
                        amount NUMERIC(12, 4), data BLOB, anything);
    INSERT INTO notes VALUES
        (1, 'support', '2020-01-05 09:00:00', 'plain', '{"channel": "email", "n": [1, 2]}',
         '2020-02-29', '10:00', 'yes', '12.3400', X'00ff', 5),
        (2, 'support', '2020-01-05T09:00:00Z', NULL, '[1,2]', '2020/02/29', NULL, 1, 7,
         'text in a blob', 1.25),
        (3, 'support', '2020-01-05', '', NULL, NULL, '10:00:00.5', 0, 1e308, NULL, 'text'),
        (4, 'support', '2020-01-05 09:00:00.123456+08:00', 'sub', '"a string"', '', '',
         'no', -0.0, X'', X'C328');
"""


def every_value(services: Services) -> list[tuple]:
    """Each row's every value as SQLite holds it: its storage class and its SQL literal."""
    columns = [row[1] for row in crm_rows(services, "PRAGMA table_info(notes)")]
    shown = ", ".join(f"typeof({c}), quote({c})" for c in (c.decode() for c in columns))
    return crm_rows(services, f"SELECT {shown} FROM notes ORDER BY id")


def test_rows_come_back_with_every_value_as_sqlite_stored_it(tmp_path: Path) -> None:
    """SQLite keeps any value in any column: a JSON column's text, 'yes' in a BOOLEAN, text
    in a BLOB, an integer in an untyped column. Archived and restored, every value of every
    row is the same, of the same storage class."""
    with open_crm(tmp_path, EVERY_KIND) as services:
        before = every_value(services)
        assert run_archive_job(services, utcnow()).archived == 4
        assert crm_rows(services, "SELECT id FROM notes") == []
        record = services.store.get("note:2")
        assert (record["created_at"], record["subject"]) == ("2020-01-05T09:00:00Z", "")
        assert services.store.get("note:4")["created_at"] == "2020-01-05T01:00:00.123456Z"

        report = restore_many(
            services.sessions, services.store, services.index, services.crm,
            [f"note:{n}" for n in range(1, 5)], "tester", utcnow(), "a test",
        )

        assert len(report.restored) == 4
        assert every_value(services) == before
        assert verify_all(services).problems == []


UNREADABLE = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, at TIMESTAMP NOT NULL,
                        tag TEXT, other TEXT);
    INSERT INTO notes VALUES (1, 'support', '2020-01-01 00:00:00', 'fine', NULL);
    INSERT INTO notes VALUES (2, 'support', '2020-01-01 00:00:00', 'other', CAST(X'C328' AS TEXT));
    INSERT INTO notes VALUES (3, 'support', '2020-01-01 00:00:00', CAST(X'C328' AS TEXT), NULL);
    INSERT INTO notes VALUES (4, 'support', '2020-01-01 00:00:00', 'fine too', NULL);
"""


@pytest.fixture
def unreadable(tmp_path: Path) -> Iterator[Services]:
    with open_crm(tmp_path, UNREADABLE) as services:
        yield services


def test_a_row_holding_a_value_that_cannot_be_read_stays_and_the_run_goes_on(
    unreadable: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """Text that is not UTF-8 (which the driver cannot read), in a mapped column or not: such
    a row stays in the CRM, logged; the other rows are archived, run after run."""
    for _ in range(2):
        report = run_archive_job(unreadable, utcnow())
        assert unreadable.store.find_archived([f"note:{n}" for n in range(1, 5)]) == {
            "note:1", "note:4",
        }
        assert [row[0] for row in crm_rows(unreadable, "SELECT id FROM notes")] == [2, 3]
    assert report.archived == 0
    for record_id in ("note:2", "note:3"):
        assert f"row {record_id} is not archived" in caplog.text
    assert verify_all(unreadable).problems == []


CASES_AND_NOTES = """
[[active.table]]
name = "cases"
key = "id"
id_prefix = "case:"
kind = "ticket"
category = { column = "queue" }
subject = { column = "title" }
status = "closed"
created_at = { column = "at" }
updated_at = { column = "at" }

[[active.table]]
name = "notes"
key = "id"
id_prefix = "note:"
kind = "note"
category = { column = "queue" }
body = { column = "body" }
status = "closed"
created_at = { column = "at" }
updated_at = { column = "at" }
parent = { column = "case_id", table = "cases" }
"""


def cases_and_notes(tmp_path: Path) -> tuple[Path, Path]:
    """An installation on a SQLite CRM of two aged cases with two notes each; its config and
    database."""
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as connection:
        connection.executescript("""
            CREATE TABLE cases (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, title TEXT,
                                at DATETIME NOT NULL);
            CREATE TABLE notes (id INTEGER PRIMARY KEY, case_id INTEGER REFERENCES cases(id),
                                queue TEXT NOT NULL, body TEXT, at DATETIME NOT NULL);
            INSERT INTO cases VALUES (1, 'support', 'case 1', '2020-01-05 09:00:00'),
                                     (2, 'support', 'case 2', '2020-01-05 09:00:00');
            INSERT INTO notes VALUES (1, 1, 'support', 'a', '2020-01-05 09:00:00'),
                                     (2, 1, 'support', 'b', '2020-01-05 09:00:00'),
                                     (3, 2, 'support', 'c', '2020-01-05 09:00:00'),
                                     (4, 2, 'support', 'd', '2020-01-05 09:00:00');
        """)
    connection.close()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[active]\nurl = "sqlite:///{database}"\n{CASES_AND_NOTES}\n'
        '[archive]\ndir = "archive"\n[index]\ndir = "index"\n'
        "[retention.default]\narchive_after_days = 365\n"
    )
    assert archivist("init", "--config", str(config)).returncode == 0
    return config, database


def killed_mid_archive(tmp_path: Path, point: str = "archive.after_store") -> tuple[Path, Path]:
    """`cases_and_notes` and an `archivist archive` killed at `point`: by default once it
    stored them, before it deleted their rows."""
    config, database = cases_and_notes(tmp_path)
    killed = archivist("archive", "--config", str(config),
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return config, database


def run_in_crm(database: Path, *statements: str) -> None:
    """The CRM's own writes (no foreign key enforced: SQLite's default)."""
    with sqlite3.connect(database) as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def where_each_is(
    config: Path, database: Path, deleted_by_crm: frozenset[str] = frozenset()
) -> dict[str, str]:
    """`active` or `archived` for every record, asserting none is in both places or neither
    but those the CRM deleted itself, whose stored copies are then `restored` (gone from the
    CRM with the rest of their process kept there, as in an uncrashed run)."""
    with sqlite3.connect(database) as connection:
        active = {f"case:{i}" for (i,) in connection.execute("SELECT id FROM cases")}
        active |= {f"note:{i}" for (i,) in connection.execute("SELECT id FROM notes")}
    connection.close()
    everyone = {"case:1", "case:2", "note:1", "note:2", "note:3", "note:4"}
    with Services.open(load_config(config)) as services:
        archived = services.store.find_archived(everyone)
        assert list(services.store.iter_pending()) == []
        gone = everyone - active - archived
        assert {i: services.store.info(i).state for i in gone} == dict.fromkeys(
            deleted_by_crm, "restored"
        )
    assert not active & archived and active | archived | deleted_by_crm == everyone
    return {
        i: "active" if i in active else "archived" if i in archived else "restored"
        for i in sorted(everyone)
    }


def test_settling_keeps_a_process_whole_when_the_crm_changed_its_root(tmp_path: Path) -> None:
    config, database = killed_mid_archive(tmp_path)
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE cases SET title = 'changed by the CRM' WHERE id = 1")
    connection.close()

    disposed = archivist("dispose", "--as-of", "2021-01-01", "--config", str(config))

    assert disposed.returncode == 0, disposed.stderr
    assert where_each_is(config, database) == {
        "case:1": "active", "note:1": "active", "note:2": "active",  # the changed process
        "case:2": "archived", "note:3": "archived", "note:4": "archived",
    }


def test_settling_keeps_a_process_whole_when_the_crm_deleted_its_root_and_changed_a_row(
    tmp_path: Path,
) -> None:
    config, database = killed_mid_archive(tmp_path)
    run_in_crm(database, "DELETE FROM cases WHERE id = 1",
               "UPDATE notes SET body = 'changed by the CRM' WHERE id = 1")

    disposed = archivist("dispose", "--as-of", "2021-01-01", "--config", str(config))

    assert disposed.returncode == 0, disposed.stderr
    # The process stays in the CRM whole, as the CRM left it: its root, which the CRM deleted,
    # is not left archived apart from it (a process split for good, and a restore of the root
    # would undo the CRM's delete); its stored copy stays readable, marked restored.
    assert where_each_is(config, database, deleted_by_crm=frozenset({"case:1"})) == {
        "case:1": "restored",
        "note:1": "active", "note:2": "active",  # the rest of the changed process
        "case:2": "archived", "note:3": "archived", "note:4": "archived",
    }


def test_a_killed_restore_whose_row_the_crm_changed_since_is_completed(tmp_path: Path) -> None:
    config, database = cases_and_notes(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0
    killed = archivist("restore", "case:1", "--reason", "asked", "--config", str(config),
                       env={"ARCHIVIST_CRASH_AT": "restore.after_commit:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_in_crm(database, "UPDATE notes SET body = 'changed by the CRM' WHERE id = 1")

    disposed = archivist("dispose", "--as-of", "2021-01-01", "--config", str(config))

    assert disposed.returncode == 0, disposed.stderr
    assert where_each_is(config, database) == {
        "case:1": "active", "note:1": "active", "note:2": "active",
        "case:2": "archived", "note:3": "archived", "note:4": "archived",
    }


def test_a_killed_restore_whose_key_the_crm_gave_another_row_is_undone(tmp_path: Path) -> None:
    """The restore's insert never committed; the CRM then gave the case's key to a new case.
    That row is not the archived case: the restore is undone and the process stays archived,
    rather than the case marked restored over a row that is not it."""
    config, database = cases_and_notes(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0
    killed = archivist("restore", "case:1", "--reason", "asked", "--config", str(config),
                       env={"ARCHIVIST_CRASH_AT": "restore.after_insert:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_in_crm(database, "INSERT INTO cases VALUES (1, 'sales', 'a new case', "
                         "'2026-01-05 09:00:00')")

    disposed = archivist("dispose", "--as-of", "2021-01-01", "--config", str(config))

    assert disposed.returncode == 0, disposed.stderr
    with Services.open(load_config(config)) as services:
        states = {i: services.store.info(i).state for i in ("case:1", "note:1", "note:2")}
        assert states == {"case:1": "archived", "note:1": "archived", "note:2": "archived"}
        assert list(services.store.iter_pending()) == []
        assert services.store.get("case:1")["subject"] == "case 1"


def test_settling_reads_the_tables_referencing_the_crm_when_it_deletes(tmp_path: Path) -> None:
    """A worker started before the CRM added a table whose rows cascade from a case: its
    settling must not delete the case, and with it rows that were never archived."""
    config, database = killed_mid_archive(tmp_path)
    with Services.open(load_config(config)) as services:  # a worker started before ...
        with sqlite3.connect(database) as connection:  # ... the CRM added attachments
            connection.executescript("""
                CREATE TABLE attachments (id INTEGER PRIMARY KEY, name TEXT,
                    case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE);
                INSERT INTO attachments VALUES (1, 'contract.pdf', 1);
            """)
        connection.close()
        run_dispose_job(services, datetime(2021, 1, 1, tzinfo=UTC))

    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT name FROM attachments").fetchall() == [
            ("contract.pdf",)
        ]
    connection.close()
    assert where_each_is(config, database) == {
        "case:1": "active", "note:1": "active", "note:2": "active",  # referenced: it stays
        "case:2": "archived", "note:3": "archived", "note:4": "archived",
    }


@pytest.mark.parametrize(("point", "archived"), [
    ("archive.after_store", 0),  # the rows are still in the CRM
    ("archive.after_commit", 6),  # their delete committed, the catalog not told yet
])
def test_stats_after_a_killed_crm_archive_count_each_record_once(
    tmp_path: Path, point: str, archived: int
) -> None:
    config, _database = killed_mid_archive(tmp_path, point)

    with Services.open(load_config(config)) as services:
        stats = collect_stats(services)

    assert (stats["active"], stats["archived"]) == (6 - archived, archived)


def test_disposal_with_nothing_to_settle_does_not_need_the_tables_to_fit(tmp_path: Path) -> None:
    config, database = killed_mid_archive(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0  # settled
    with Services.open(load_config(config)) as services:  # a worker started before ...
        with sqlite3.connect(database) as connection:  # ... the CRM dropped a mapped column
            connection.execute("ALTER TABLE cases DROP COLUMN title")
        connection.close()

        report = run_dispose_job(services, datetime(2040, 1, 1, tzinfo=UTC))

    assert report.purged == 6


def test_a_move_to_settle_on_tables_that_no_longer_fit_is_refused_by_name(
    tmp_path: Path,
) -> None:
    """A server or worker opened before the CRM dropped a mapped column (a command started
    after it refuses the config at once): nothing is settled, nothing erased."""
    config, database = killed_mid_archive(tmp_path)
    with Services.open(load_config(config)) as services:
        with sqlite3.connect(database) as connection:
            connection.execute("ALTER TABLE cases DROP COLUMN title")
        connection.close()

        with pytest.raises(CrmTablesChanged, match="no longer fit the mapping"):
            run_dispose_job(services, datetime(2021, 1, 1, tzinfo=UTC))
        with pytest.raises(CrmTablesChanged, match="no longer fit the mapping"):
            erase_records(services, record_id="case:2", actor="admin", at=utcnow())

        assert len(list(services.store.iter_pending())) == 6
        assert services.store.info("case:2").state == "archived"


def test_a_retry_takes_a_killed_restores_whole_process_out_of_search(tmp_path: Path) -> None:
    config, _database = cases_and_notes(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0
    killed = archivist("restore", "case:1", "--reason", "asked", "--config", str(config),
                       env={"ARCHIVIST_CRASH_AT": "restore.before_index:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with Services.open(load_config(config)) as services:
        assert len(list(services.index.iter_hits(SearchQuery()))) == 6  # still found
        with pytest.raises(NotArchived):
            restore_crm_process(services.sessions, services.store, services.index,
                                services.crm_tables_now(), "note:2", "admin", utcnow())

        found = {hit.id for hit in services.index.iter_hits(SearchQuery())}
    assert found == {"case:2", "note:3", "note:4"}


def test_a_second_recovery_at_once_is_refused(tmp_path: Path) -> None:
    """Two recoveries of one installation at once would mix their files: the second is
    refused while the first holds the recovery lock."""
    from archive_store.backup import recovering_alone

    config, _database = cases_and_notes(tmp_path)
    folder = tmp_path / "backup"
    assert archivist("backup", "create", str(folder), "--config", str(config)).returncode == 0
    with recovering_alone(load_config(config).archive_dir):  # a recovery under way
        second = archivist("backup", "recover", str(folder), "--force", "--config", str(config))
    assert second.returncode == 1
    assert "another recovery of the installation" in second.stderr, second.stderr
    assert archivist("verify", "--config", str(config)).returncode == 0  # nothing was replaced

def test_a_forced_recovery_of_an_older_backup_leaves_an_installation_that_opens(
    tmp_path: Path,
) -> None:
    """The CRM database keeps how far the catalog had committed (an archive run's delete
    writes it): recovering a backup taken before later runs sets it to the backup's catalog,
    which would otherwise pass for one that lost its latest writes."""
    config, database = cases_and_notes(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0
    folder = tmp_path / "backup"
    assert archivist("backup", "create", str(folder), "--config", str(config)).returncode == 0
    run_in_crm(database, "INSERT INTO cases VALUES (3, 'support', 'case 3', "
                         "'2020-01-05 09:00:00')")
    assert archivist("archive", "--config", str(config)).returncode == 0
    recovered = archivist("backup", "recover", str(folder), "--force", "--config", str(config))
    assert recovered.returncode == 0, recovered.stderr
    for command in (["verify"], ["stats"], ["archive"]):
        result = archivist(*command, "--config", str(config))
        assert result.returncode == 0, (command, result.stderr)
        assert "lost its latest writes" not in result.stderr


def _as_an_earlier_version_made_it(folder: Path, database: Path) -> None:
    """Turn a backup into what one of CRM tables in a SQLite file held before: a copy of the
    whole file (the CRM's tables with it) in place of Archivist's own tables."""
    shutil.rmtree(folder / "tables", ignore_errors=True)  # (an earlier version made none)
    with sqlite3.connect(database) as source, sqlite3.connect(folder / "active.db") as copy:
        source.backup(copy)
        # ... without the columns added since (before processes, before a run's runner and as_of)
        copy.executescript(
            "DROP INDEX ix_active_parent; ALTER TABLE active_records DROP COLUMN parent_id;"
            "ALTER TABLE active_records DROP COLUMN has_parent_id;"
            "ALTER TABLE job_runs DROP COLUMN runner; ALTER TABLE job_runs DROP COLUMN as_of;"
        )
    source.close()
    copy.close()
    metadata = json.loads((folder / "backup.json").read_text())
    (folder / "backup.json").write_text(json.dumps({**metadata, "active_database": "sqlite"}))
    manifest = {k: v for k, v in load_manifest(folder).items() if not k.startswith("tables/")}
    for name in ("active.db", "backup.json"):
        manifest[name] = hash_file(folder / name)
    write_manifest(folder, manifest)


@pytest.mark.parametrize("made_by", ["this version", "an earlier version"])
def test_a_recovery_leaves_the_crm_s_own_rows_in_its_sqlite_file_as_they_are(
    tmp_path: Path, made_by: str
) -> None:
    """The CRM's tables in a SQLite file are the CRM's: a backup holds Archivist's own tables
    from it, and a recovery (forced, over the same installation) brings those back and leaves
    what the CRM wrote since; so does a backup an earlier version made of the whole file."""
    config, database = cases_and_notes(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0
    hold = ("--category", "legal", "--config", str(config))
    assert archivist("hold", "add", *hold, "--reason", "kept").returncode == 0
    folder = tmp_path / "backup"
    created = archivist("backup", "create", str(folder), "--config", str(config))
    assert created.returncode == 0, created.stderr
    if made_by == "this version":
        assert "active.db" not in load_manifest(folder)
        assert "tables/legal_holds.jsonl" in load_manifest(folder)
    else:
        _as_an_earlier_version_made_it(folder, database)
    assert archivist("backup", "verify", str(folder), "--config", str(config)).returncode == 0
    run_in_crm(database, "INSERT INTO cases VALUES (9, 'support', 'opened since', "
                         "'2026-11-30 09:00:00')",
               "INSERT INTO notes VALUES (9, 9, 'support', 'new', '2026-11-30 09:00:00')")
    assert archivist("hold", "remove", *hold).returncode == 0

    refused = archivist("backup", "recover", str(folder), "--config", str(config))
    assert refused.returncode != 0
    assert "already holds 6 in its archive" in refused.stderr, refused.stderr
    recovered = archivist("backup", "recover", str(folder), "--force", "--config", str(config))

    assert recovered.returncode == 0, recovered.stderr
    assert ": 2 active, 6 archived, indexed 6" in recovered.stdout
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT id, title FROM cases").fetchall() == [
            (9, "opened since")]
        assert connection.execute("SELECT id, body FROM notes").fetchall() == [(9, "new")]
    connection.close()
    held = archivist("hold", "list", "--config", str(config))
    assert "legal" in held.stdout, held.stdout  # Archivist's own tables, as backed up
    assert archivist("verify", "--config", str(config)).returncode == 0
    with Services.open(load_config(config)) as services:
        assert services.store.find_archived({"case:1", "case:2", "note:1", "note:2", "note:3",
                                             "note:4", "case:9", "note:9"}) == {
            "case:1", "case:2", "note:1", "note:2", "note:3", "note:4"}
        assert collect_stats(services)["active"] == 2


def _disposed_with_the_ledger_an_earlier_version_left(
    config: Path, database: Path, seq_of: str
) -> None:
    """Archive and dispose of every row of `cases_and_notes`, then put back the ledger entries
    an earlier version left behind when it disposed of rows (without the version they left
    as), or with `seq_of="disposed"` ones naming the version since disposed of."""
    assert archivist("archive", "--config", str(config)).returncode == 0
    with Services.open(load_config(config)) as services:
        seqs = {i: services.store.info(i).seq for i in ("case:1", "case:2", "note:1",
                                                       "note:2", "note:3", "note:4")}
    disposed = archivist("dispose", "--as-of", "2099-01-01", "--config", str(config))
    assert disposed.returncode == 0, disposed.stderr
    roots = {"case:1": "case:1", "note:1": "case:1", "note:2": "case:1",
             "case:2": "case:2", "note:3": "case:2", "note:4": "case:2"}
    if seq_of == "disposed":
        run_in_crm(database, *(
            "INSERT INTO archived_process_members (record_id, root_id, seq) "
            f"VALUES ('{i}', '{root}', {seqs[i]})" for i, root in roots.items()
        ))
    else:  # the ledger as an earlier version made it, which the next start upgrades
        run_in_crm(
            database, "DROP TABLE archived_process_members",
            "CREATE TABLE archived_process_members (record_id VARCHAR(128) NOT NULL "
            "PRIMARY KEY, root_id VARCHAR(128) NOT NULL)",
            "CREATE INDEX ix_archived_process_root ON archived_process_members (root_id)",
            *(f"INSERT INTO archived_process_members VALUES ('{i}', '{root}')"
              for i, root in roots.items()),
        )


@pytest.mark.parametrize("seq_of", ["none", "disposed"])
def test_a_killed_archive_of_a_disposed_record_s_key_used_again_is_settled_by_the_rows(
    tmp_path: Path, seq_of: str
) -> None:
    """A ledger entry left from a disposed record's move says nothing about the move of the
    new row the CRM gave its key: a run killed before that row's delete leaves the row to be
    deleted by the next run, not in its table and archived at once."""
    config, database = cases_and_notes(tmp_path)
    _disposed_with_the_ledger_an_earlier_version_left(config, database, seq_of)
    run_in_crm(database, "INSERT INTO cases VALUES (1, 'support', 'a new case 1', "
                         "'2021-03-01 09:00:00')")
    killed = archivist("archive", "--config", str(config),
                       env={"ARCHIVIST_CRASH_AT": "archive.after_store:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    settled = archivist("archive", "--config", str(config))

    assert settled.returncode == 0, settled.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT id FROM cases").fetchall() == []
    connection.close()
    with Services.open(load_config(config)) as services:
        entry = services.store.info("case:1")
        assert (entry.state, entry.version, entry.pending) == ("archived", 2, None)
        assert services.store.get("case:1")["subject"] == "a new case 1"
        stats = collect_stats(services)
    assert (stats["active"], stats["archived"]) == (0, 1)


def test_a_recovery_does_not_count_rows_an_earlier_version_disposed_of_as_lost(
    tmp_path: Path,
) -> None:
    """Rows disposed of since the backup was taken are in neither place on purpose, also
    where an earlier version left them in the ledger of rows that left: only the row archived
    since is counted lost, by the refusal and by the forced recovery."""
    config, database = cases_and_notes(tmp_path)
    folder = tmp_path / "backup"
    assert archivist("backup", "create", str(folder), "--config", str(config)).returncode == 0
    _disposed_with_the_ledger_an_earlier_version_left(config, database, "none")
    run_in_crm(database, "INSERT INTO cases VALUES (3, 'support', 'case 3', "
                         "'2020-01-05 09:00:00')")
    assert archivist("archive", "--config", str(config)).returncode == 0

    refused = archivist("backup", "recover", str(folder), "--config", str(config))
    recovered = archivist("backup", "recover", str(folder), "--force", "--config", str(config))

    assert refused.returncode != 0
    assert "and 1 CRM rows left their tables" in refused.stderr, refused.stderr
    assert "(first: case:3)" in refused.stderr
    assert recovered.returncode == 0, recovered.stderr
    assert "warning: 1 CRM rows that left their tables" in recovered.stderr, recovered.stderr


def test_a_recovery_counts_rows_restored_in_the_backup_and_archived_again_since_as_lost(
    tmp_path: Path,
) -> None:
    """A row the backup holds restored is expected in the CRM after the recovery: archived
    again since, it is in neither place then, and counted with the rows archived since, by
    the refusal and by the forced recovery."""
    config, database = cases_and_notes(tmp_path)
    assert archivist("archive", "--config", str(config)).returncode == 0
    restored = archivist("restore", "case:1", "--reason", "reopen", "--config", str(config))
    assert restored.returncode == 0, restored.stderr
    folder = tmp_path / "backup"
    assert archivist("backup", "create", str(folder), "--config", str(config)).returncode == 0
    run_in_crm(database, "INSERT INTO cases VALUES (3, 'support', 'case 3', "
                         "'2020-01-05 09:00:00')")
    later = f"{utcnow().year + 2}-01-01"  # the restored rows have aged again
    assert archivist("archive", "--as-of", later, "--config", str(config)).returncode == 0
    with Services.open(load_config(config)) as services:
        again = services.store.find_archived({"case:1", "note:1", "note:2", "case:3"})
    assert again == {"case:1", "note:1", "note:2", "case:3"}

    refused = archivist("backup", "recover", str(folder), "--config", str(config))
    recovered = archivist("backup", "recover", str(folder), "--force", "--config", str(config))

    assert refused.returncode != 0
    assert "and 4 CRM rows left their tables" in refused.stderr, refused.stderr
    assert recovered.returncode == 0, recovered.stderr
    assert "warning: 4 CRM rows that left their tables" in recovered.stderr, recovered.stderr
    with sqlite3.connect(database) as connection:  # the loss the warning counts
        assert connection.execute("SELECT id FROM cases").fetchall() == []
        assert connection.execute("SELECT id FROM notes").fetchall() == []
    connection.close()
    with Services.open(load_config(config)) as services:
        assert services.store.find_archived(again) == set()


def test_row_depths_put_parents_first_in_one_walk_of_each_row() -> None:
    """Walking up from every row was quadratic: a process of 66,000 rows never finished."""
    from indexer.jobs.crm_archiver import CrmRow, row_depths

    def rows(parents: dict[str, str | None]) -> list[CrmRow]:
        return [CrmRow(table=None, key=i, record={"id": i, "parent_id": p})  # type: ignore[arg-type]
                for i, p in parents.items()]

    tree = {"c": "b", "a": None, "b": "a", "d": "a", "e": "outside"}
    assert row_depths(rows(tree)) == {"a": 0, "b": 1, "c": 2, "d": 1, "e": 0}
    assert row_depths(rows({"x": "y", "y": "x", "z": "x"})) in (  # a loop ends, wherever cut
        {"x": 1, "y": 0, "z": 2}, {"x": 0, "y": 1, "z": 1})
    chain = {f"m{n}": (f"m{n - 1}" if n else None) for n in range(200_000)}
    depths = row_depths(reversed(rows(chain)))
    assert all(depths[f"m{n}"] == n for n in range(0, 200_000, 997))
