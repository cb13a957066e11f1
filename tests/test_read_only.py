"""A read-only archive folder (a read-only mount, an audit copy): reads work, writes say why."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.importer import import_lines
from archivist.tokens import create_token
from indexer.jobs.runs import run_archive_job
from indexer.jobs.verification import verify_all
from indexer.services import Services
from indexer.stats import collect_stats
from server import close_app, create_app

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` read-only for this process, for real.

    As root, permission bits do not stop writes, so the folder is bind-mounted read-only over
    itself (skipped only where mounting is not allowed, e.g. a container without
    CAP_SYS_ADMIN); otherwise its mode is set to 0555.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root, and mounting is not allowed here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        probe = folder / ".probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def archivist(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archivist", *args, "--config", str(config_path)],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def archived(config_path, make_record):
    """An installation with 20 archived, indexed records; the archive folder's path."""
    with Services.open(load_config(config_path), create=True) as services:
        lines = [json.dumps(make_record(id=f"RO{i}", body="refund please")).encode()
                 for i in range(20)]
        import_lines(lines, services.sessions, services.store.find_archived)
        assert run_archive_job(services, AS_OF).indexed == 20
    return config_path.parent / "data" / "archive"


def test_read_only_archive_folder_still_verifies_counts_and_searches(config_path, archived):
    with read_only(archived):
        result = archivist(config_path, "verify")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ok: 20 records checked")
        stats = archivist(config_path, "stats")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["archived"] == 20

        config = load_config(config_path)
        with Services.open(config) as services:
            assert services.store.read_only
            assert verify_all(services).problems == []
            assert collect_stats(services)["indexed"] == 20
            assert services.store.get("RO3")["id"] == "RO3"
        app = create_app(config)
        try:
            client = app.test_client()
            with Services.open(config) as services:
                with services.sessions.begin() as session:
                    secret = create_token(session, "ro-agent", "agent", utcnow())
            response = client.get("/api/v1/search?q=refund",
                                  headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 200
            assert response.json["total"] == 20
        finally:
            close_app(app)


def test_writing_to_a_read_only_archive_folder_is_a_clear_error(config_path, archived):
    with read_only(archived):
        result = archivist(config_path, "archive", "--as-of", "2030-01-01")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the archive folder {archived} is read-only")
    assert len(result.stderr.splitlines()) == 1


def test_an_erasure_refused_by_a_read_only_archive_is_not_finished_later(
    config_path, archived
):
    """Refused before it began: no ledger line asks a later run to finish it (where a hold
    placed meanwhile would not have stopped it)."""
    with read_only(archived):
        result = archivist(config_path, "erase", "--record", "RO1", "--reason", "GDPR")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the archive folder {archived} is read-only")
    ledger = Path(str(load_config(config_path).key_file) + ".erasures")
    assert not ledger.exists() or ledger.read_text() == ""
    assert archivist(config_path, "archive", "--as-of", "2030-01-01").returncode == 0
    with Services.open(load_config(config_path)) as services:
        assert services.store.info("RO1").state == "archived"


def _sign_in(client, secret: str) -> str:
    """Sign the test client in to the web UI; the session's CSRF token."""
    page = client.get("/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/sign-in", data={"token": secret, "csrf_token": csrf})
    assert response.status_code == 303
    page = client.get("/records/RO1").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def test_the_server_refuses_writes_to_a_read_only_archive_folder_with_the_reason(
    config_path, archived
):
    """Restores and erasures are a 503 `read_only` naming the folder, in the API and the web
    UI alike, not a 500; holds (kept in the active database) and reads still work."""
    config = load_config(config_path)
    with Services.open(config) as services:
        with services.sessions.begin() as session:
            secret = create_token(session, "ro-admin", "admin", utcnow())
    headers = {"Authorization": f"Bearer {secret}"}
    with read_only(archived):
        app = create_app(config)
        try:
            client = app.test_client()
            refusals = [
                client.post("/api/v1/records/RO1/restore", headers=headers,
                            json={"reason": "back"}),
                client.post("/api/v1/restore", headers=headers,
                            json={"ids": ["RO2"], "reason": "back"}),
                client.post("/api/v1/erase", headers=headers,
                            json={"record_id": "RO3", "reason": "GDPR"}),
            ]
            for response in refusals:
                assert response.status_code == 503, response.json
                assert response.json["error"]["code"] == "read_only"
                assert response.json["error"]["message"].startswith(
                    f"the archive folder {archived} is read-only")

            dry_runs = [
                client.post("/api/v1/restore", headers=headers,
                            json={"ids": ["RO2"], "reason": "back", "dry_run": True}),
                client.post("/api/v1/erase", headers=headers,
                            json={"record_id": "RO3", "reason": "GDPR", "dry_run": True}),
            ]
            assert [r.status_code for r in dry_runs] == [200, 200], [r.json for r in dry_runs]

            placed = client.post("/api/v1/holds", headers=headers,
                                 json={"scope": "record", "value": "RO4", "reason": "case"})
            assert placed.status_code == 201, placed.json
            assert client.delete("/api/v1/holds/record/RO4", headers=headers).status_code == 204
            assert client.get("/api/v1/records/RO1", headers=headers).status_code == 200
            assert client.get("/api/v1/stats", headers=headers).json["archived"] == 20
            assert client.get("/healthz").status_code == 200

            csrf = _sign_in(client, secret)
            page = client.post("/records/RO1/restore",
                               data={"reason": "back", "csrf_token": csrf})
            assert page.status_code == 503
            assert f"the archive folder {archived} is read-only" in page.get_data(as_text=True)
            assert client.get("/admin").status_code == 200
        finally:
            close_app(app)
    with Services.open(config) as services:
        assert {services.store.info(f"RO{i}").state for i in (1, 2, 3)} == {"archived"}


def test_a_restore_the_index_cannot_follow_says_so_as_a_warning(config_path, archived):
    """The restore is done (exit 0); that search still shows the records until the index can
    be written is a warning, not an `error:` line."""
    index = config_path.parent / "data" / "index"
    with read_only(index):
        result = archivist(config_path, "restore", "RO1", "RO2", "--reason", "case 12")
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "warning: 2 records restored, but the index cannot be written" in result.stderr
    with Services.open(load_config(config_path)) as services:
        assert services.store.info("RO1").state == "restored"


def test_a_backup_of_a_read_only_archive_folder_says_why_it_needs_to_write_there(
    config_path, archived, tmp_path
):
    """A backup reads the archive, but locks it (files in that folder) so that no record moves
    while the active database and the catalog are copied: refused, saying that, and before
    anything is written into the backup folder."""
    folder = tmp_path / "backup"
    with read_only(archived):
        result = archivist(config_path, "backup", "create", str(folder))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the archive folder {archived} is read-only")
    assert "a backup locks the archive" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not folder.exists() or not any(folder.iterdir())
