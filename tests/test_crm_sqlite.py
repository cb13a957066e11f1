"""The CRM's own tables in a SQLite database (`[active] url` may be any SQLAlchemy URL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from archivist.active_db import utcnow
from archivist.config import load_config
from indexer.jobs.runs import run_archive_job
from indexer.jobs.verification import verify_all
from indexer.services import Services

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


UNREADABLE = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, at TIMESTAMP NOT NULL,
                        tag TEXT, due DATE, data BLOB);
    INSERT INTO notes VALUES (1, 'support', '2020-01-01 00:00:00.000000', 'fine', '2020-02-29',
                              X'00ff');
    INSERT INTO notes VALUES (2, 'support', '2020-01-01 00:00:00.000000', 'slashed date',
                              '2020/02/29', NULL);
    INSERT INTO notes VALUES (3, 'support', '2020-01-01 00:00:00.000000', 'text in a blob',
                              NULL, 'not bytes');
    INSERT INTO notes VALUES (4, 'support', '2020-01-01 00:00:00.000000', CAST(X'C328' AS TEXT),
                              NULL, NULL);
    INSERT INTO notes VALUES (5, 'support', '2020-01-01 00:00:00.000000', 'fine too', NULL,
                              NULL);
"""


@pytest.fixture
def unreadable(tmp_path: Path) -> Iterator[Services]:
    with open_crm(tmp_path, UNREADABLE) as services:
        yield services


def test_a_row_holding_a_value_that_cannot_be_read_stays_and_the_run_goes_on(
    unreadable: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A date the driver cannot parse, text in a BLOB column, text that is not UTF-8: each
    such row stays in the CRM, logged; the other rows are archived, run after run."""
    for _ in range(2):
        report = run_archive_job(unreadable, utcnow())
        assert unreadable.store.find_archived([f"note:{n}" for n in range(1, 6)]) == {
            "note:1", "note:5",
        }
        assert [row[0] for row in crm_rows(unreadable, "SELECT id FROM notes")] == [2, 3, 4]
    assert report.archived == 0
    for record_id in ("note:2", "note:3", "note:4"):
        assert f"row {record_id} is not archived" in caplog.text
    assert verify_all(unreadable).problems == []
