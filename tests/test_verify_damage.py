"""`archivist verify` on a damaged installation: one honest line per damage, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.importer import import_lines
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.runs import run_archive_job
from indexer.services import Services

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def archivist(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archivist", *args, "--config", str(config_path)],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def installed(config_path, make_record):
    """An installation whose 40 records (two years, so two shards) are archived and indexed."""
    records = [
        make_record(id=f"D{i:02d}", created_at=f"{2019 + i % 2}-03-01T00:00:00Z")
        for i in range(40)
    ]
    with Services.open(load_config(config_path), create=True) as services:
        lines = [json.dumps(r).encode() for r in records]
        assert import_lines(lines, services.sessions, services.store.find_archived).imported == 40
        assert run_archive_job(services, AS_OF).indexed == 40
    assert archivist(config_path, "verify").returncode == 0
    return config_path


def index_file(config_path: Path, pattern: str) -> Path:
    index_dir = config_path.parent / "data" / "index"
    generation = index_dir / (index_dir / "CURRENT").read_text().strip()
    if pattern == "CURRENT":
        return index_dir / "CURRENT"
    if pattern == "META":
        return generation / "META"
    return sorted((generation / "2019").glob(pattern))[0]


@pytest.mark.parametrize(
    ("name", "damage", "says"),
    [
        ("CURRENT", "delete", "the index is missing"),
        ("CURRENT", "garble", "the index is damaged"),
        ("META", "delete", "the index is damaged"),
        ("META", "garble", "the index is damaged"),
        ("*.toc", "delete", "the index is damaged"),
        ("*.toc", "garble", "the index is damaged"),
        ("*.seg", "delete", "the index is damaged"),
        ("*.seg", "garble", "the index is damaged"),
    ],
)
def test_verify_says_once_that_the_index_is_missing_or_damaged(installed, name, damage, says):
    path = index_file(installed, name)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"garbage\n" * 8)

    result = archivist(installed, "verify")
    assert result.returncode == 1, result.stderr
    assert "unexpected" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), lines
    assert "archivist index --rebuild" in lines[0]
    assert "D07" not in result.stderr  # no list of every id

    rebuilt = archivist(installed, "index", "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout.strip() == "rebuilt, indexed 40"
    assert archivist(installed, "verify").returncode == 0


def test_a_deleted_index_folder_is_refused_not_replaced_by_an_empty_index(installed):
    """An index folder gone (deleted, or its volume not mounted) is not made again empty: that
    index would answer every search with nothing, and `archive` and `index` would add to it as
    if it were whole."""
    import shutil

    from server import close_app, create_app
    from tests.conftest import _token_headers

    index_dir = installed.parent / "data" / "index"
    shutil.rmtree(index_dir)
    for command in (["index"], ["archive"], ["init"]):
        result = archivist(installed, *command)
        assert result.returncode == 1, (command, result.stdout)
        assert result.stderr.startswith(f"error: there is no index in {index_dir}, yet 40 "), (
            command, result.stderr)
        assert "archivist index --rebuild" in result.stderr
        assert not index_dir.exists(), command
    checked = archivist(installed, "verify")
    assert checked.returncode == 1
    assert checked.stderr.startswith(
        f"the index is missing: there is no index in {index_dir}, yet 40 records were indexed")
    assert not index_dir.exists()  # not made again, empty, for a server to search
    with Services.open(load_config(installed)) as services:
        app = create_app(services.config)
        try:
            client = app.test_client()
            response = client.get("/api/v1/search?q=", headers=_token_headers(services, "agent"))
            assert response.status_code == 503, response.get_json()
            assert response.get_json()["error"]["code"] == "index_unavailable"
            assert client.get("/healthz").status_code == 503
        finally:
            close_app(app)
    assert not index_dir.exists()

    assert archivist(installed, "index", "--rebuild").stdout.strip() == "rebuilt, indexed 40"
    assert archivist(installed, "verify").returncode == 0
    assert archivist(installed, "index").stdout.strip() == "indexed 0"


def test_a_failed_rebuild_of_a_deleted_index_leaves_no_empty_index_behind(installed):
    """`index --rebuild` where the index folder is gone makes an empty index to build beside:
    when the rebuild fails (here on a segment file that is missing), that empty index must go
    too, or every command and the server would take it for the index and find nothing."""
    import shutil

    index_dir = installed.parent / "data" / "index"
    shutil.rmtree(index_dir)
    segment = sorted((installed.parent / "data" / "archive" / "segments").glob("*.seg"))[0]
    aside = segment.with_name(segment.name + ".aside")
    segment.rename(aside)
    failed = archivist(installed, "index", "--rebuild")
    assert failed.returncode == 1, failed.stdout
    assert "segment" in failed.stderr and "unexpected" not in failed.stderr
    aside.rename(segment)

    assert not index_dir.exists()  # as before the rebuild: no index at all
    for command in (["index"], ["init"]):
        result = archivist(installed, *command)
        assert result.returncode == 1, (command, result.stdout)
        assert result.stderr.startswith(f"error: there is no index in {index_dir}, yet 40 "), (
            command, result.stderr)
    assert archivist(installed, "verify").stderr.startswith("the index is missing")
    assert archivist(installed, "index", "--rebuild").stdout.strip() == "rebuilt, indexed 40"
    assert archivist(installed, "verify").returncode == 0


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_verify_names_the_records_of_a_damaged_archive_segment(installed, damage):
    segments = sorted((installed.parent / "data" / "archive" / "segments").glob("*.seg"))
    if damage == "delete":
        segments[0].unlink()
    else:
        data = bytearray(segments[0].read_bytes())
        data[200] ^= 0xFF
        segments[0].write_bytes(bytes(data))

    result = archivist(installed, "verify")
    assert result.returncode == 1
    assert "unexpected" not in result.stderr
    named = result.stderr.splitlines()[-1]
    assert named.startswith("damaged or missing: D")
    assert len(named.split()) - 3 >= 1


def test_index_lag_is_reported_but_is_no_damage(installed, make_record):
    """Archived but not yet indexed (a crashed run's leftover): verify says so, exit 0."""
    config = load_config(installed)
    with Services.open(config) as services:
        lines = [json.dumps(make_record(id=f"L{i}")).encode() for i in range(3)]
        import_lines(lines, services.sessions, services.store.find_archived)
        archive_due_records(
            services.sessions, services.store, config.retention, AS_OF, utcnow()
        )  # moved, not indexed
    result = archivist(installed, "verify")
    assert result.returncode == 0, result.stderr
    assert "3 records wait for index catch-up" in result.stdout
