"""Config loading: the sample works as it is, relative paths, inheritance, clear errors."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archivist.config import load_config
from archivist.errors import ConfigError
from archivist.retention import RetentionPolicy
from indexer.whoosh.index import SearchIndex
from indexer.whoosh.workers import start_worker

REPO = Path(__file__).resolve().parents[1]


def test_sample_config_loads_with_contract_policies():
    config = load_config(REPO / "config.toml")
    assert config.active_url == f"sqlite:///{REPO / 'data' / 'active.db'}"
    assert config.archive_dir == REPO / "data" / "archive"
    assert config.retention.default == RetentionPolicy(365, 5)
    assert config.retention.policy_for("finance") == RetentionPolicy(180, 7)
    # medical sets keep_years only and inherits archive_after_days from the default
    assert config.retention.policy_for("medical") == RetentionPolicy(365, 10)


def test_a_retention_ending_before_records_are_archived_is_warned_of(tmp_path, caplog):
    path = tmp_path / "config.toml"
    path.write_text(
        "[retention.default]\narchive_after_days = 3650\nkeep_years = 1\n"
        "[retention.category.short]\narchive_after_days = 30\nkeep_years = 0\n"
        "[retention.category.fine]\narchive_after_days = 365\nkeep_years = 1\n"
        # longer than 1 year in three years of four, than 2 years always
        "[retention.category.leap]\narchive_after_days = 366\nkeep_years = 1\n"
        "[retention.category.two]\narchive_after_days = 732\nkeep_years = 2\n"
        "[retention.category.fine2]\narchive_after_days = 730\nkeep_years = 2\n"
        "[retention.category.none]\narchive_after_days = 0\nkeep_years = 0\n"
    )
    with caplog.at_level("WARNING", logger="archivist.config"):
        load_config(path)
    assert [r.getMessage() for r in caplog.records] == [
        "retention.default: archive_after_days = 3650 is longer than keep_years = 1: a record "
        "would stay active past the end of its retention, and be due for disposal as soon as it "
        "is archived",
        "retention.category.short: archive_after_days = 30 is longer than keep_years = 0: a "
        "record would stay active past the end of its retention, and be due for disposal as "
        "soon as it is archived",
        "retention.category.leap: archive_after_days = 366 is longer than keep_years = 1: a "
        "record would stay active past the end of its retention, and be due for disposal as "
        "soon as it is archived",
        "retention.category.two: archive_after_days = 732 is longer than keep_years = 2: a "
        "record would stay active past the end of its retention, and be due for disposal as "
        "soon as it is archived",
        "retention.category.none: keep_years = 0: a record is due for disposal as soon as it is "
        "archived, and purged by the next disposal run",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="archivist.config"):
        load_config(REPO / "config.toml")
    assert caplog.records == []


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "c.toml").write_text('[active]\nurl = "sqlite:///db/a.db"\n[index]\ndir = "ix"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/c.toml")
    assert config.active_url == f"sqlite:///{folder / 'db' / 'a.db'}"
    assert config.index_dir == folder / "ix"


def test_non_sqlite_urls_are_kept_as_they_are(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[active]\nurl = "postgresql+psycopg://u:p@localhost/crm"\n')
    assert load_config(path).active_url == "postgresql+psycopg://u:p@localhost/crm"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[retention.default]\nkeep_years = -1\n", "retention.default.keep_years must not be"),
        ("[retention.category.finance]\nkeep_years = 'seven'\n", "must be an integer"),
        ("[worker]\narchive_cron = 'every day'\n", "worker.archive_cron is not a crontab"),
        ("[server]\nport = true\n", "server.port must be an integer"),
        ("[server]\nport = 99999\n", "server.port must be between 0 and 65535, got 99999"),
        ("[index]\nworker_nice = 25\n", "index.worker_nice must be between 0 and 19"),
        ("[server]\nmax_query_length = 10001\n", "server.max_query_length must be at most"),
        # beyond these a cut-off falls before year 1: every run would fail, not the config
        ("[retention.category.legal]\nkeep_years = 3000\n",
         "retention.category.legal.keep_years must be at most 1,000, got 3000"),
        ("[retention.default]\narchive_after_days = 1000000\n",
         "retention.default.archive_after_days must be at most 365,000"),
        ("[active\n", "cannot read config"),
        # the scheduler cannot place an interval much longer: the worker failed at start
        ("[worker]\nindex_interval_seconds = 400000000000\n",
         "worker.index_interval_seconds must be at most 604,800"),
        ("[worker]\ndispose_cron = '0 0 30 2 *'\n",
         "worker.dispose_cron = '0 0 30 2 *' names no day that exists: it would never run"),
        # a driver that is not installed: said at start, with what to write instead
        ("[active]\nurl = 'postgresql://me@localhost/crm'\n",
         "active.url: no database driver for 'postgresql' is installed (No module named "
         "'psycopg2'); write sqlite:///PATH, or postgresql+psycopg://"),
        ("[active]\nurl = 'nosuchdb://x'\n", "active.url: no database driver for 'nosuchdb'"),
        # kinds no record could have
        ("[records]\nkinds = ['note', ' spaced ']\n",
         "records.kinds: ' spaced ' must not begin or end with a space"),
        (f"[records]\nkinds = ['note', '{'k' * 65}']\n",
         "is longer than 64 characters, which no record's kind may be"),
        ("[records]\nkinds = ['note', '  ']\n", "records.kinds: '  ' is blank"),
        ("[records]\nkinds = ['note', 'ticket', 'note']\n", "records.kinds names 'note' twice"),
        # SQLAlchemy reads the port while it parses the URL
        ("[active]\nurl = 'postgresql+psycopg://u@127.0.0.1:notaport/x'\n",
         "active.url is not a database URL: its host and port cannot be read (invalid literal"),
        ("[active]\nurl = 'postgresql+psycopg://u@[::1/x'\n",
         "active.url is not a database URL: its host and port cannot be read"),
        ("[active]\nurl = 'postgresql+psycopg://u@db:99999/x'\n",
         "active.url: port 99999 is not 1 to 65535"),
        # nothing would persist from one command to the next
        ("[active]\nurl = 'sqlite:///:memory:'\n", "active.url: an in-memory SQLite database"),
        ("[active]\nurl = 'sqlite://'\n", "active.url: an in-memory SQLite database"),
        ("[active]\nurl = 'sqlite:///file:a?mode=memory&uri=true'\n",
         "active.url: an in-memory SQLite database"),
        ('[index]\ndir = "data/i\\u0000dx"\n', "index.dir must be a path, got 'data/i\\x00dx'"),
        ("[archive]\nkey_file = ''\n", "archive.key_file must be a path, got ''"),
        # "" would listen on every interface
        ("[server]\nhost = ''\n", "server.host is empty"),
        ("[server]\nhost = '  '\n", "server.host is empty"),
        # a date is named as the file writes it, not as Python's repr
        ("[retention.default]\nkeep_years = 1979-05-27\n",
         "retention.default.keep_years must be an integer, got the date 1979-05-27"),
        # a retention table no record's category could ever match
        ('[retention.category.""]\nkeep_years = 7\n',
         "[retention.category.'']: a category name must not be empty"),
        ('[retention.category." finance"]\nkeep_years = 7\n',
         "[retention.category.' finance']: a category name must not begin or end with a space"),
        (f'[retention.category.{"f" * 129}]\nkeep_years = 7\n',
         "a category name must be at most 128 characters"),
    ],
)
def test_bad_values_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)  # the file, as for an unknown key
    assert message in str(error.value)


def test_over_the_crm_s_tables_a_category_is_held_to_its_column_only(tmp_path):
    """A CRM's category column may hold what Archivist's own records may not (a space around
    it, more than 128 characters): a retention table for such a category loads."""
    path = tmp_path / "c.toml"
    name = " finance" + "x" * 130
    path.write_text(f"{CASES_ENTRY}category = {{ column = 'queue' }}\nstatus = 'open'\n"
                    "created_at = { column = 'at' }\nupdated_at = { column = 'at' }\n"
                    f'[retention.category."{name}"]\nkeep_years = 7\n')
    assert load_config(path).retention.categories[name].keep_years == 7
    path.write_text(path.read_text().replace(f'"{name}"', '""'))
    with pytest.raises(ConfigError, match="a category name must not be empty"):
        load_config(path)


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf[retention.default]\nkeep_years = 9\n")
    assert load_config(path).retention.default.keep_years == 9


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_index_workers_run_at_the_configured_niceness(tmp_path, make_record):
    """The processes that analyse records for the index run at `index.worker_nice`."""
    path = tmp_path / "c.toml"
    path.write_text('[index]\ndir = "ix"\nworker_nice = 7\n')
    config = load_config(path)
    assert config.index_worker_nice == 7
    index = SearchIndex.open(config.index_dir, worker_nice=config.index_worker_nice)
    index.add([(make_record(), datetime(2021, 1, 1, tzinfo=UTC))])  # chooses the pair terms
    gen = index._current_gen()
    proc = start_worker(gen, "year", 0, tmp_path / "parts", config.index_worker_nice)
    try:
        deadline = time.monotonic() + 30
        nice = None
        while time.monotonic() < deadline:
            # field 19 of /proc/<pid>/stat (after the parenthesised command name) is the niceness
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            nice = int(fields[16])
            if nice == 7:
                break
            time.sleep(0.05)
        assert nice == 7
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
        index.close()


CASES_ENTRY = "[[active.table]]\nname = 'cases'\nkey = 'id'\nid_prefix = 'case:'\nkind = 'ticket'\n"
TYPO_CASES = [
    ("[retention.category.finance]\nkeep_year = 7\n",
     "unknown key 'keep_year' in [retention.category.finance]; did you mean 'keep_years'?"),
    ("[retention.default]\narchive_after_day = 30\n",
     "unknown key 'archive_after_day' in [retention.default]; did you mean "
     "'archive_after_days'?"),
    ("[retension.default]\nkeep_years = 5\n",
     "unknown table [retension]; did you mean [retention]?"),
    ("[retention.categories.finance]\nkeep_years = 7\n",
     "unknown table 'categories' in [retention]; did you mean 'category'?"),
    ("[server]\nthread = 8\n", "unknown key 'thread' in [server]; did you mean 'threads'?"),
    ("[archive]\ndirectory = 'x'\n", "unknown key 'directory' in [archive]"),
    ("colour = 'blue'\n", "unknown key 'colour' at the top level"),
    ("[[active.table]]\nname = 'cases'\nkye = 'id'\n",
     "unknown key 'kye' in [[active.table]] entry 1; did you mean 'key'?"),
    ("[[active.table]]\nname = 'cases'\nsubjct = { column = 'title' }\n",
     "unknown key 'subjct' in [[active.table]] entry 1; did you mean 'subject'?"),
    # inside a field's or the parent's inline table
    (CASES_ENTRY + "category = { column = 'queue', colum = 'x' }\n",
     "[[active.table]] #1 (cases): category: unknown key 'colum'; did you mean 'column'? "
     "(known: column)"),
    (CASES_ENTRY + "category = 'support'\nstatus = 'open'\ncreated_at = { column = 'at' }\n"
     "updated_at = { column = 'at' }\nparent = { column = 'case_id', tabel = 'cases' }\n",
     "[[active.table]] #1 (cases): parent: unknown key 'tabel'; did you mean 'table'? "
     "(known: column, table)"),
]


@pytest.mark.parametrize(("text", "message"), TYPO_CASES)
def test_config_unknown_keys_are_named_with_a_suggestion(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value).startswith(f"{path}: {message}")
    assert "\n" not in str(excinfo.value)


def test_config_accepts_every_key_of_the_contract(tmp_path):
    """The contract's keys, this round's new ones included, load without complaint."""
    path = tmp_path / "c.toml"
    path.write_text(
        (REPO / "config.toml").read_text()
        + """
[records]
kinds = ["note", "ticket", "process", "communication"]

[backup]
max_age_days = 3

[[active.table]]
name = "cases"
key = "id"
id_prefix = "case:"
kind = "process"
category = { column = "queue" }
customer_id = { column = "account_id" }
owner = { column = "assignee" }
subject = { column = "title" }
body = { column = "description" }
status = { column = "state" }
created_at = { column = "opened_at" }
updated_at = { column = "last_activity_at" }

[[active.table]]
name = "case_messages"
key = "msg_id"
id_prefix = "msg:"
kind = "communication"
category = { column = "queue" }
status = "closed"
created_at = { column = "sent_at" }
updated_at = { column = "sent_at" }
parent = { column = "case_id", table = "cases" }
"""
    )
    text = path.read_text().replace(
        '[archive]\ndir = "data/archive"\n',
        '[archive]\ndir = "data/archive"\n'  # (config.toml names key_file already)
        "segment_max_bytes = 1048576\nbatch_size = 100\n",
    ).replace(
        "port = 8080\n",
        "port = 8080\nprocesses = 2\nthreads = 8\nrate_limit_per_minute = 60\n"
        "max_query_length = 500\nmax_request_bytes = 4096\ntoken_cache_seconds = 1\n"
        'secret_key = "s"\nsecure_cookies = true\nmax_bulk_restore = 500\n',
    ).replace(
        '[index]\ndir = "data/index"\n',
        '[index]\ndir = "data/index"\nshard_period = "month"\nworker_nice = 5\n',
    ).replace(
        'dispose_cron = "30 3 * * 0"',
        'dispose_cron = "30 3 * * 0"\nindex_interval_seconds = 30',
    )
    assert "key_file" in text and "max_bulk_restore" in text and "worker_nice" in text
    path.write_text(text)
    config = load_config(path)
    assert config.server.threads == 8 and config.shard_period == "month"


@pytest.mark.parametrize(
    "command",
    [["init"], ["archive", "--as-of", "2030-01-01"], ["verify"], ["stats"], ["worker"],
     ["serve"], ["hold", "list"]],
)
def test_config_typo_stops_every_command_with_one_line(tmp_path, command):
    path = tmp_path / "c.toml"
    path.write_text('[archive]\ndir = "data/archive"\n[retention.default]\nkeep_year = 5\n')
    result = subprocess.run(
        [sys.executable, "-m", "archivist", *command, "--config", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}: unknown key 'keep_year' in [retention.default]; "
        "did you mean 'keep_years'? (known: archive_after_days, keep_years)"
    ]
    assert not (tmp_path / "data").exists(), "nothing runs"
