"""Config loading: the sample works as it is, relative paths, inheritance, clear errors."""

from __future__ import annotations

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
        ("[index]\nworker_nice = 25\n", "index.worker_nice must be between 0 and 19"),
        ("[active\n", "cannot read config"),
    ],
)
def test_bad_values_are_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


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
