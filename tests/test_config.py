"""Config loading: the sample works as it is, relative paths, inheritance, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archivist.config import load_config
from archivist.errors import ConfigError
from archivist.retention import RetentionPolicy

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
        ("[worker]\nnice = 25\n", "worker.nice must be between 0 and 19"),
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


def test_jobs_run_at_the_configured_niceness_and_never_raise_priority(tmp_path):
    """`archivist archive` lowers its priority to `worker.nice` (checked in a child process, since
    a process cannot raise its priority back)."""
    path = tmp_path / "c.toml"
    path.write_text("[worker]\nnice = 7\n")
    assert load_config(path).worker.nice == 7
    script = (
        "import os, sys\n"
        "from archivist.config import load_config\n"
        "from indexer.jobs import lower_job_priority\n"
        "lower_job_priority(load_config(sys.argv[1]).worker.nice)\n"
        "first = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_job_priority(3)\n"
        "print(first, os.getpriority(os.PRIO_PROCESS, 0))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True,
        cwd=REPO,
    )
    assert out.stdout.split() == ["7", "7"]
