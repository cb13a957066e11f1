"""Backup and recovery: consistent, incremental, checked by a manifest, recovered whole."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from archive_store.backup import load_manifest
from archive_store.crypto import KEY_ENV, load_key
from archivist.active_db import ActiveRecord, sqlite_path, utcnow
from archivist.config import load_config
from archivist.tokens import create_token
from indexer.jobs.backup import (
    InstallationNotEmpty,
    backup_status,
    create_backup,
    recover_backup,
    verify_backup,
)
from indexer.jobs.restore import restore_record
from indexer.jobs.verification import verify_all
from indexer.search import SearchQuery
from indexer.services import Services
from tests.conftest import CONFIG_TEXT, write_jsonl

QUERIES = ("refund", "退款", "INV-2023-000002", "")


def _body(n: int) -> str:
    return (
        "The customer asked for a refund of the kettle.",
        "客户 申请 退款，订单 已经 取消。",
        f"Invoice INV-2023-{n:06d} was paid twice.",
    )[n % 3]


def _records(make_record: Callable[..., dict[str, Any]], start: int, count: int,
             updated_at: str = "2020-01-02T00:00:00Z") -> list[dict[str, Any]]:
    return [
        make_record(id=f"B-{n:05d}", body=_body(n), customer_id=f"C{n % 7}", updated_at=updated_at,
                    category=("support", "billing", "finance")[n % 3])
        for n in range(start, start + count)
    ]


def _answers(services: Services) -> dict[str, list[str]]:
    return {
        q: sorted(hit.id for hit in services.index.iter_hits(SearchQuery(q=q)))
        for q in QUERIES
    }


def _places(services: Services) -> tuple[set[str], set[str]]:
    """Ids in the active database, ids archived."""
    with services.sessions.begin() as session:
        active = set(session.scalars(select(ActiveRecord.id)))
    archived = {e.record_id for e in services.store.iter_catalog(state="archived")}
    return active, archived


def archive_key(services: Services) -> bytes:
    """The installation's archive key (never inside a backup)."""
    return load_key(services.config.key_file)


def _fresh_config(tmp_path: Path, name: str) -> Any:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.toml").write_text(CONFIG_TEXT)
    # the archive key travels apart from backups, as a recovery rehearsal carries it
    shutil.copy2(tmp_path / "archive.key", folder / "archive.key")
    config = load_config(folder / "config.toml")
    with Services.open(config, create=True):
        pass
    return config


def test_backup_recovers_into_a_fresh_installation_with_the_same_answers(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    archived(*_records(make_record, 0, 300))
    restore_record(services.sessions, services.store, services.index, "B-00004", "test", utcnow())
    expected = _answers(services)
    expected_places = _places(services)
    with services.sessions.begin() as session:
        secret = create_token(session, "kept-token", "agent", utcnow())

    report = create_backup(services, tmp_path / "backup", utcnow())

    assert report.records == 300 and report.archived == 299 and report.active == 1
    assert verify_backup(tmp_path / "backup", archive_key(services)) == []
    assert not any((tmp_path / "backup" / "archive").glob("*.key"))
    fresh = _fresh_config(tmp_path, "fresh")
    recovered = recover_backup(fresh, tmp_path / "backup", utcnow())
    assert (recovered.archived, recovered.active) == (299, 1)
    with Services.open(fresh) as again:
        assert verify_all(again).problems == []
        assert _answers(again) == expected
        assert _places(again) == expected_places
        with again.sessions.begin() as session:
            from archivist.tokens import find_token

            assert find_token(session, secret) is not None  # tokens travel with the backup
        # a recovery's lock and marks are not the store's state: a backup of it holds neither
        assert not (fresh.archive_dir / "RECOVERING").exists()
        create_backup(again, tmp_path / "again", utcnow())
    assert [name for name in load_manifest(tmp_path / "again") if "recover" in name.lower()] == []


def test_a_recovery_ranks_every_search_as_before(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """Restored records leave deleted documents in the live index until a merge; the recovery
    rebuilds the index without them. Relevance counts live records only, so the same search
    ranks the same records with the same scores on both sides."""
    words = "refund kettle invoice cancel late broken warranty paid twice angry".split()
    archived(*(
        make_record(id=f"S-{n:04d}", customer_id=f"C{n % 5}", body=" ".join(
            words[(n * 7 + k * k) % len(words)] for k in range(2 + n % 11)
        ))
        for n in range(240)
    ))
    for n in range(0, 240, 4):
        restore_record(services.sessions, services.store, services.index, f"S-{n:04d}", "test",
                       utcnow())
    queries = ("refund", "kettle OR warranty", '"paid twice"', "ref* AND NOT angry")

    def ranked(installation: Services) -> dict[str, list[tuple[str, float]]]:
        return {
            q: [(h.id, h.score) for h in installation.index.search(
                SearchQuery(q=q, per_page=100)).hits]
            for q in queries
        }

    expected = ranked(services)
    assert all(len({score for _id, score in hits}) > 3 for hits in expected.values())
    create_backup(services, tmp_path / "backup", utcnow())
    fresh = _fresh_config(tmp_path, "fresh")
    recover_backup(fresh, tmp_path / "backup", utcnow())
    with Services.open(fresh) as again:
        assert ranked(again) == expected


def test_backup_verify_names_a_flipped_byte_and_a_missing_file(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    archived(*_records(make_record, 0, 200))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    segment = sorted((folder / "archive" / "segments").iterdir())[0]
    data = bytearray(segment.read_bytes())
    data[200] ^= 0x01
    segment.write_bytes(bytes(data))

    problems = verify_backup(folder, archive_key(services))

    name = f"archive/segments/{segment.name}"
    assert f"damaged: {name} (SHA-256 differs from the manifest)" in problems
    assert any(p.startswith("archive: record B-") for p in problems)  # the chain names the record
    (folder / "active.db").unlink()
    assert "missing: active.db" in verify_backup(folder, archive_key(services))
    result = subprocess.run(
        [sys.executable, "-m", "archivist", "backup", "verify", str(folder),
         "--config", str(services.config.path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert name in result.stderr and "missing: active.db" in result.stderr


def test_backup_verify_with_a_config_named_and_missing_says_so(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """As every command: a config named on the command line or in ARCHIVIST_CONFIG must be
    there (it went on without a key, and called the archive unreadable); the key alone, in the
    environment, checks a backup with no installation at all."""
    archived(*_records(make_record, 0, 20))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    missing = tmp_path / "nowhere" / "config.toml"
    env = {k: v for k, v in os.environ.items() if k not in ("ARCHIVIST_CONFIG", KEY_ENV)}

    def verify(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "archivist", "backup", "verify", str(folder), *args],
            capture_output=True, text=True, cwd=tmp_path, env={**env, **extra},
        )

    for result in (verify("--config", str(missing)), verify(ARCHIVIST_CONFIG=str(missing))):
        assert result.returncode == 1
        assert str(missing) in result.stderr and "archive: cannot be checked" not in result.stderr
    key = (tmp_path / "archive.key").read_text().strip()
    alone = verify(**{KEY_ENV: key})
    assert alone.returncode == 0, alone.stderr


def test_recover_refuses_a_damaged_backup(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    archived(*_records(make_record, 0, 20))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    catalog = folder / "archive" / "catalog.db"
    catalog.write_bytes(catalog.read_bytes()[:-10])
    fresh = _fresh_config(tmp_path, "fresh")
    with pytest.raises(Exception, match="does not verify: damaged: archive/catalog.db"):
        recover_backup(fresh, folder, utcnow())
    with Services.open(fresh) as again:
        assert again.store.counts()["archived"] == 0


def test_second_backup_copies_only_what_is_new(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    archived(*_records(make_record, 0, 400))
    folder = tmp_path / "backup"
    first = create_backup(services, folder, utcnow())
    sealed = {
        name: (folder / name).stat()
        for name in load_manifest(folder)
        if name.startswith("archive/segments/")
    }
    assert len(sealed) >= 3 and first.files == len(sealed) + 2  # + catalog and active.db

    archived(*_records(make_record, 400, 300))  # (enough to fill the active segment)
    second = create_backup(services, folder, utcnow())

    manifest = load_manifest(folder)
    new_segments = [n for n in manifest if n.startswith("archive/segments/") and n not in sealed]
    assert new_segments
    size = {n: (folder / n).stat().st_size for n in manifest}
    databases = size["archive/catalog.db"] + size["active.db"]
    fresh = sum(size[n] for n in new_segments)
    # at most: the new segments, the databases, and the tail of the segment that was active
    assert second.bytes <= fresh + databases + 65536
    assert second.bytes < sum(size.values()) - sum(s.st_size for s in sealed.values()) / 2
    # new segments, the grown active one, catalog and active.db: nothing sealed again
    assert second.files <= len(new_segments) + 3
    unchanged = 0
    for name, before in sealed.items():
        after = (folder / name).stat()
        if after.st_size == before.st_size:
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
            unchanged += 1
    assert unchanged >= len(sealed) - 1  # only the segment that was active may have grown
    assert verify_backup(folder, archive_key(services)) == []
    assert second.records == 700


def _installation_with_records(tmp_path: Path, make_record: Any) -> Any:
    """Another installation with five records of its own archived."""
    other = _fresh_config(tmp_path, "other")
    with Services.open(other) as target:
        from archivist.importer import import_lines

        lines = [json.dumps(r).encode() for r in _records(make_record, 1000, 5)]
        import_lines(lines, target.sessions, target.store.find_archived)
        from indexer.jobs.runs import run_archive_job

        run_archive_job(target, datetime(2026, 1, 1, tzinfo=UTC))
    return other


def _backup_and_another_installation(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> tuple[Path, Any]:
    """A backup of 30 archived records, and another installation with five of its own."""
    archived(*_records(make_record, 0, 30))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    return folder, _installation_with_records(tmp_path, make_record)


def _recover_cli(folder: Path, config: Any, *args: str,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archivist", "backup", "recover", str(folder),
         "--config", str(config.path), *args],
        capture_output=True, text=True, env=None if env is None else {**os.environ, **env},
    )


def test_recover_is_refused_into_an_installation_with_records_unless_forced(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
    config_path: Path,
) -> None:
    folder, other = _backup_and_another_installation(services, archived, make_record, tmp_path)

    with pytest.raises(InstallationNotEmpty, match="--force"):
        recover_backup(other, folder, utcnow())
    with Services.open(other) as target:
        assert {e.record_id for e in target.store.iter_catalog()} == {
            f"B-{n:05d}" for n in range(1000, 1005)
        }
    cli = _recover_cli(folder, other)
    assert cli.returncode == 1 and "--force" in cli.stderr and cli.stderr.count("\n") == 1
    assert "already holds 0 active records and 5 in its archive (5 archived, 0 restored, " \
        "0 purged, 0 erased)" in cli.stderr

    recover_backup(other, folder, utcnow(), force=True)
    with Services.open(other) as target:
        assert len(list(target.store.iter_catalog())) == 30
        assert verify_all(target).problems == []


def test_a_forced_recovery_replaces_an_installation_sealed_with_another_key(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
) -> None:
    folder, other = _backup_and_another_installation(services, archived, make_record, tmp_path)
    # made again below with a key of its own, as a new installation (its index and job runs
    # would say an archive was there)
    (other.path.parent / "archive.key").unlink()
    shutil.rmtree(other.archive_dir)
    shutil.rmtree(other.index_dir)
    database = sqlite_path(other.active_url)
    assert database is not None
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("DELETE FROM job_runs")
    with Services.open(other, create=True) as target:
        assert archive_key(target) != archive_key(services)
        from archivist.importer import import_lines
        from indexer.jobs.runs import run_archive_job

        lines = [json.dumps(r).encode() for r in _records(make_record, 2000, 3)]
        import_lines(lines, target.sessions, target.store.find_archived)
        assert run_archive_job(target, datetime(2026, 1, 1, tzinfo=UTC)).archived == 3
    # the backup's key is put in place, as a recovery needs
    shutil.copy2(tmp_path / "archive.key", other.path.parent / "archive.key")

    refused = _recover_cli(folder, other)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "sealed with another key than the backup's" in refused.stderr
    assert "--force" in refused.stderr
    forced = _recover_cli(folder, other, "--force")

    assert forced.returncode == 0, forced.stderr
    with Services.open(other) as target:
        assert {e.record_id for e in target.store.iter_catalog()} == {
            f"B-{n:05d}" for n in range(30)}
        assert verify_all(target).problems == []


def test_a_forced_recovery_that_runs_out_of_disk_leaves_the_installation_as_it_was(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
) -> None:
    folder, other = _backup_and_another_installation(services, archived, make_record, tmp_path)
    with Services.open(other) as target:
        before = _places(target), _answers(target)
    assert len(before[0][1]) == 5

    # the disk fills while the backup's second file is copied in
    full = _recover_cli(folder, other, "--force", env={"ARCHIVIST_FAIL_AT": "recover.stage_file:2"})
    assert full.returncode != 0 and full.stderr.count("\n") == 1
    assert "No space left on device" in full.stderr
    with Services.open(other) as target:
        assert (_places(target), _answers(target)) == before
        assert verify_all(target).problems == []
    assert not (other.archive_dir / ".recovering").exists()
    assert not list((other.path.parent / "data").glob("*.recovering"))

    assert _recover_cli(folder, other, "--force").returncode == 0
    with Services.open(other) as target:
        active, archived_ids = _places(target)
        assert archived_ids == {f"B-{n:05d}" for n in range(30)} and not active
        assert verify_all(target).problems == []


def test_a_recovery_keeps_tokens_revoked_since_the_backup_revoked_and_ends_web_sessions(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
    client: Any, admin_headers: dict[str, str], config_path: Path,
) -> None:
    from archivist.tokens import find_token
    from archivist.web_sessions import WebSession
    from tests.test_ui_pages import _sign_in

    archived(*_records(make_record, 0, 5))
    with services.sessions.begin() as session:
        leaked = create_token(session, "ops", "admin", utcnow())
        kept = create_token(session, "ops-2", "admin", utcnow())
    _sign_in(client, admin_headers)
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    revoked = subprocess.run(
        [sys.executable, "-m", "archivist", "token", "revoke", "ops", "--config",
         str(config_path)], capture_output=True, text=True,
    )
    assert revoked.returncode == 0, revoked.stderr

    other = _fresh_config(tmp_path, "other")  # the key, and the ledgers beside it
    for ledger in tmp_path.glob("archive.key.*"):
        shutil.copy2(ledger, other.path.parent / ledger.name)
    recover_backup(other, folder, utcnow())

    with Services.open(other) as target, target.sessions.begin() as session:
        assert find_token(session, leaked) is None  # not back from before its revocation
        assert find_token(session, kept) is not None
        assert session.query(WebSession).count() == 0


@pytest.mark.parametrize("then", ["init", "backup"])
def test_a_token_revoked_by_a_version_without_a_revocation_ledger_stays_revoked_on_recovery(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
    config_path: Path, then: str,
) -> None:
    """An earlier version revoked tokens in the database alone: `init` after the upgrade, or
    the next backup, lists them in the ledger, so a backup from before stays without them."""
    from archivist.active_db import ApiToken
    from archivist.tokens import find_token, revocation_ledger_path

    archived(*_records(make_record, 0, 5))
    with services.sessions.begin() as session:
        late = create_token(session, "late", "agent", utcnow())
    before = tmp_path / "before"
    create_backup(services, before, utcnow())
    ledger = revocation_ledger_path(services.config.key_file)
    ledger.unlink()  # the earlier version kept none, and revoked in the database only
    with services.sessions.begin() as session:
        session.execute(ApiToken.__table__.update().values(revoked_at=utcnow()))

    if then == "init":
        command = ["init", "--config", str(config_path)]
    else:
        command = ["backup", "create", str(tmp_path / "after"), "--config", str(config_path)]
    ran = subprocess.run([sys.executable, "-m", "archivist", *command],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ledger.exists()

    other = _fresh_config(tmp_path, "other")  # the key, and the ledgers beside it
    for copied in tmp_path.glob("archive.key.*"):
        shutil.copy2(copied, other.path.parent / copied.name)
    recover_backup(other, before, utcnow())
    with Services.open(other) as target, target.sessions.begin() as session:
        assert find_token(session, late) is None


def test_recover_into_an_installation_init_made_before_the_backup_s_key_was_copied_in(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
) -> None:
    """`init` made a key of its own; the backup's key copied over it then must open the
    backup, and the empty archive, which nothing was sealed into yet, takes it."""
    archived(*_records(make_record, 0, 10))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    late = tmp_path / "late"
    late.mkdir()
    (late / "config.toml").write_text(CONFIG_TEXT)
    config = load_config(late / "config.toml")
    init = subprocess.run([sys.executable, "-m", "archivist", "init", "--config", str(config.path)],
                          capture_output=True, text=True)  # a key of its own, bound
    assert init.returncode == 0, init.stderr
    shutil.copy2(tmp_path / "archive.key", late / "archive.key")

    report = recover_backup(config, folder, utcnow())

    assert report.archived == 10
    with Services.open(config) as target:
        assert verify_all(target).problems == []
        assert _answers(target) == _answers(services)


def test_admin_status_warns_without_a_recent_backup(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
    client: Any, admin_headers: dict[str, str],
) -> None:
    now = utcnow()
    assert backup_status(services, now).overdue
    from tests.test_ui_pages import _sign_in

    _sign_in(client, admin_headers)
    assert 'data-testid="backup-warning"' in client.get("/admin").get_data(as_text=True)

    archived(*_records(make_record, 0, 5))
    create_backup(services, tmp_path / "backup", now)
    status = backup_status(services, utcnow())
    assert not status.overdue and status.last_records == 5
    page = client.get("/admin").get_data(as_text=True)
    assert "Last backup finished" in page and 'data-testid="backup-warning"' not in page
    assert backup_status(services, utcnow() + timedelta(days=8)).overdue  # default: 7 days


def test_backup_create_prints_the_contract_line(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path,
    config_path: Path,
) -> None:
    archived(*_records(make_record, 0, 12))
    result = subprocess.run(
        [sys.executable, "-m", "archivist", "backup", "create", str(tmp_path / "b"),
         "--config", str(config_path)],
        capture_output=True, text=True, env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("backed up 12 records, ") and line.endswith(" bytes copied")
    from archivist.audit import AuditFilter, list_audit

    with services.sessions.begin() as session:
        entries = list_audit(session, AuditFilter(action="backup")).entries
    assert [(e.actor, e.outcome, e.details["records"]) for e in entries] == [("cli", "ok", 12)]


def test_two_backups_into_one_folder_at_once_are_refused(
    services: Services, tmp_path: Path
) -> None:
    from archive_store.backup import BackupError
    from indexer.jobs.backup import _writing

    folder = tmp_path / "backup"
    folder.mkdir()
    with _writing(folder):
        with pytest.raises(BackupError, match="another backup is being written"):
            create_backup(services, folder, utcnow())
    (folder / ".backup.lock").touch()  # where an earlier version locked the folder
    assert create_backup(services, folder, utcnow()).files > 0
    # the MANIFEST lists every other file the folder holds
    held = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert held - {"MANIFEST"} == set(load_manifest(folder))


def test_backup_after_disposal_drops_replaced_segment_generations(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    archived(*_records(make_record, 0, 200))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    before = {n for n in load_manifest(folder) if n.startswith("archive/segments/")}
    from indexer.jobs.runs import run_dispose_job

    assert run_dispose_job(services, datetime(2030, 1, 1, tzinfo=UTC)).purged == 200

    report = create_backup(services, folder, utcnow())

    after = {n for n in load_manifest(folder) if n.startswith("archive/segments/")}
    assert after != before and report.files >= len(after - before)
    gone = before - after  # replaced by disposal's next generation
    assert gone and not any((folder / n).exists() for n in gone)
    assert verify_backup(folder, archive_key(services)) == []
    fresh = _fresh_config(tmp_path, "fresh")
    recover_backup(fresh, folder, utcnow())
    with Services.open(fresh) as again:
        assert again.store.counts()["purged"] == 200
        assert verify_all(again).problems == []


def test_backup_verify_names_an_edited_audit_entry_even_with_the_manifest_redone(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    import sqlite3

    from archive_store.backup import hash_file, write_manifest
    from archivist.audit import AuditEvent, write_audit

    archived(*_records(make_record, 0, 5))
    write_audit(services.sessions, [
        AuditEvent(utcnow(), "helpdesk", "search", "refund"),
        AuditEvent(utcnow(), "helpdesk", "export", "refund"),
    ])
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    assert verify_backup(folder, archive_key(services)) == []
    conn = sqlite3.connect(folder / "active.db")
    conn.execute("UPDATE audit_log SET target = 'nothing' WHERE action = 'export'")
    conn.commit()
    conn.close()
    manifest = load_manifest(folder)
    manifest["active.db"] = hash_file(folder / "active.db")
    write_manifest(folder, manifest)

    problems = verify_backup(folder, archive_key(services))

    assert len(problems) == 1 and problems[0].startswith("active.db: audit log: entry ")
    assert problems[0].endswith("was changed after it was written")


def test_backup_into_the_installation_or_a_folder_of_other_files_is_refused(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """A backup run deletes what its manifest does not list: it never writes into the
    installation's own folders, nor into a folder that holds other files and no backup."""
    from archive_store.backup import BackupError

    archived(*_records(make_record, 0, 20))
    config = services.config
    for folder in (config.archive_dir.parent, config.archive_dir, config.archive_dir / "x",
                   config.index_dir):
        before = sorted(p for p in config.archive_dir.parent.rglob("*"))
        with pytest.raises(BackupError, match="overlaps the installation"):
            create_backup(services, folder, utcnow())
        assert sorted(p for p in config.archive_dir.parent.rglob("*")) == before
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BackupError, match="a link to nothing"):
        create_backup(services, tmp_path / "gone", utcnow())
    usb = tmp_path / "usb"
    (usb / "archive" / "photos").mkdir(parents=True)
    (usb / "archive" / "photos" / "img1.jpg").write_bytes(b"x")
    (usb / "movie.partial").write_bytes(b"x")
    with pytest.raises(BackupError, match="holds other files and no backup"):
        create_backup(services, usb, utcnow())
    assert (usb / "archive" / "photos" / "img1.jpg").exists() and (usb / "movie.partial").exists()
    assert verify_all(services).problems == []


def test_an_older_backup_kept_as_hard_links_stays_whole(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """`cp -al` keeps older backups cheaply: the next run must not write through the links."""
    archived(*_records(make_record, 0, 200))
    folder, old = tmp_path / "backup", tmp_path / "backup.old"
    create_backup(services, folder, utcnow())
    subprocess.run(["cp", "-al", str(folder), str(old)], check=True)
    archived(*_records(make_record, 200, 10))
    create_backup(services, folder, utcnow())
    key = archive_key(services)
    assert verify_backup(old, key) == [] and verify_backup(folder, key) == []
    assert json.loads((old / "backup.json").read_text())["archived"] == 200
    # copies damaged since the run that made them (new files: the old backup keeps its own)
    sealed = sorted(n for n in load_manifest(folder) if n.startswith("archive/segments/"))[0]
    for name in (sealed, "archive/catalog.db"):
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / name).unlink()
        (folder / name).write_bytes(bytes(data))
    create_backup(services, folder, utcnow())
    assert verify_backup(folder, key) == [] and verify_backup(old, key) == []


def test_a_backup_after_the_store_was_recovered_and_written_copies_it_again(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """A store recovered from an older backup and written to since holds segments with the
    names the folder's copies have and other bytes: those copies are not trusted."""
    from archivist.importer import import_lines
    from indexer.jobs.runs import run_archive_job
    from tests.conftest import ARCHIVE_AS_OF

    archived(*_records(make_record, 0, 100))
    first, folder = tmp_path / "first", tmp_path / "backup"
    create_backup(services, first, utcnow())
    archived(*_records(make_record, 100, 50))
    create_backup(services, folder, utcnow())
    other = _fresh_config(tmp_path, "other")
    recover_backup(other, first, utcnow(), force=True)
    with Services.open(other) as again:
        lines = [json.dumps(make_record(id=f"N-{n:05d}", body=_body(n))).encode()
                 for n in range(58)]
        assert import_lines(lines, again.sessions, again.store.find_archived).rejected == 0
        run_archive_job(again, datetime.fromisoformat(ARCHIVE_AS_OF))
        sealed = sorted(n for n in load_manifest(folder) if n.startswith("archive/segments/"))
        live = again.config.archive_dir / "segments" / sealed[-1].rsplit("/", 1)[1]
        # the same name, longer than the folder's copy: an append would splice two histories
        assert live.stat().st_size > (folder / sealed[-1]).stat().st_size

        report = create_backup(again, folder, utcnow())

        assert verify_backup(folder, archive_key(again)) == []
        assert report.archived == 158
    third = _fresh_config(tmp_path, "third")
    recover_backup(third, folder, utcnow())
    with Services.open(third) as recovered:
        assert verify_all(recovered).problems == []
        archived_ids = {e.record_id for e in recovered.store.iter_catalog(state="archived")}
        assert "N-00057" in archived_ids and "B-00099" in archived_ids
        assert "B-00100" not in archived_ids


def test_backup_verify_with_a_wrong_or_no_key_says_so_once(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """A key that does not open the backup is one problem, not one per sealed record that
    would call a sound backup damaged."""
    from archive_store.crypto import make_key

    archived(*_records(make_record, 0, 200))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    for key in (make_key(), None):
        problems = verify_backup(folder, key)
        assert len(problems) == 1, problems
        assert problems[0].startswith("archive: cannot be checked: ")
    assert verify_backup(folder, archive_key(services)) == []


def test_backup_verify_with_another_installation_s_key_does_not_call_the_backup_damaged(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    archived(*_records(make_record, 0, 20))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text(CONFIG_TEXT)
    with Services.open(load_config(other / "config.toml"), create=True):
        pass  # an installation with its own new key
    result = subprocess.run(
        [sys.executable, "-m", "archivist", "backup", "verify", str(folder),
         "--config", str(other / "config.toml")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "give the archive key the backup was made with" in result.stderr
    assert "damaged" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"backup {folder} does not verify: 1 problem"


def test_a_backup_and_what_a_recovery_installs_are_private_to_their_owner(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """The backup holds token hashes, the audit log and the active records in plain text."""
    archived(*_records(make_record, 0, 20))
    folder = tmp_path / "backup"
    old_umask = os.umask(0o022)
    try:
        create_backup(services, folder, utcnow())
        fresh = _fresh_config(tmp_path, "fresh")
        (fresh.archive_dir / "catalog.db").chmod(0o644)  # so that only a recovery makes it 0600
        recover_backup(fresh, folder, utcnow(), force=True)
    finally:
        os.umask(old_umask)
    modes = {p: p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}
    assert modes and all(
        mode == (0o700 if path.is_dir() else 0o600) for path, mode in modes.items()
    ), {str(p): oct(m) for p, m in modes.items()}
    assert (fresh.archive_dir / "catalog.db").stat().st_mode & 0o077 == 0
    database = fresh.archive_dir.parent / "active.db"
    assert database.stat().st_mode & 0o077 == 0


def _cli_with_file_limit(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`archivist ARGS` unable to grow any file past `limit` bytes, as on a full disk (the
    write fails with EFBIG, its signal ignored, instead of ending the process)."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "archivist", *args], capture_output=True,
                          text=True, preexec_fn=limit_files, timeout=300)


def test_a_first_backup_stopped_by_a_full_disk_is_finished_by_the_next_run(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """What the stopped run left is private, unfinished for `verify`, and the backup's own."""
    archived(*_records(make_record, 0, 30))
    folder = tmp_path / "bk"
    config = str(services.config.path)
    services.close()  # (its databases' write-ahead logs put back into their files)
    # room for the installation's own small writes, not for the catalog's copy
    stopped = _cli_with_file_limit(40_000, "backup", "create", str(folder), "--config", config)

    assert stopped.returncode == 1, stopped.stderr
    assert stopped.stderr.startswith(
        f"error: cannot copy {services.config.archive_dir / 'catalog.db'} to "
        f"{folder / 'archive' / 'catalog.db.partial'}: "), stopped.stderr
    assert stopped.stderr.count("\n") == 1
    left = [folder, *folder.rglob("*")]
    assert {p.relative_to(folder).as_posix() for p in left} >= {".", "archive/catalog.db.partial"}
    modes = {str(p): oct(p.stat().st_mode & 0o777) for p in left}
    assert all(oct(0o700 if p.is_dir() else 0o600) == modes[str(p)] for p in left), modes
    key = load_key(services.config.key_file)
    assert verify_backup(folder, key) == [
        "missing: MANIFEST (not a backup, or one that did not finish)"]

    again = subprocess.run([sys.executable, "-m", "archivist", "backup", "create", str(folder),
                            "--config", config], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("backed up 30 records")
    assert verify_backup(folder, key) == []
    assert not [p for p in folder.rglob("*") if ".partial" in p.name]


def test_what_a_stopped_first_backup_left_is_taken_for_an_unfinished_backup(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """A folder holding only the copies a run writes before it keeps them (as a run that
    wrote no `backup.json` yet left it) is written into; one more file of anyone else's is not."""
    from archive_store.backup import BackupError

    archived(*_records(make_record, 0, 10))
    folder = tmp_path / "bk"
    (folder / "archive").mkdir(parents=True)
    for name in ("archive/catalog.db.partial", "archive/catalog.db.partial-journal",
                 "active.db.partial"):
        (folder / name).write_bytes(b"half")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(BackupError, match="holds other files and no backup"):
        create_backup(services, folder, utcnow())
    (folder / "notes.txt").unlink()

    assert create_backup(services, folder, utcnow()).records == 10
    assert verify_backup(folder, load_key(services.config.key_file)) == []
    assert not [p for p in folder.rglob("*") if ".partial" in p.name]


def test_a_backup_missing_what_it_says_it_holds_is_refused_before_anything_is_replaced(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """`active.db` removed with its manifest line still leaves a backup that says it holds an
    embedded database: verify names it, and recover replaces nothing. A file put into the
    backup's archive folder afterwards (not in the manifest) is never installed."""
    from archive_store.backup import write_manifest

    archived(*_records(make_record, 0, 30))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    (folder / "archive" / "stray.bin").write_bytes(b"not the backup's")
    assert verify_backup(folder, archive_key(services)) == []
    other = _fresh_config(tmp_path, "other")
    recover_backup(other, folder, utcnow())
    assert not (other.archive_dir / "stray.bin").exists()

    manifest = load_manifest(folder)
    del manifest["active.db"]
    (folder / "active.db").unlink()
    write_manifest(folder, manifest)
    assert verify_backup(folder, archive_key(services)) == [
        "missing: active.db is not in the manifest"]
    third = _fresh_config(tmp_path, "third")
    from archive_store.backup import BackupDamaged
    with pytest.raises(BackupDamaged, match="active.db"):
        recover_backup(third, folder, utcnow())
    third.key_file.unlink()  # a machine the key was not copied to
    from archive_store.crypto import KeyMissing
    with pytest.raises(KeyMissing, match="the archive key the backup was made with"):
        recover_backup(third, folder, utcnow())
    assert not third.key_file.exists()


def test_backup_verify_with_the_key_file_missing_asks_for_the_backup_s_key(
    services: Services, archived: Callable[..., Any], make_record: Any, tmp_path: Path
) -> None:
    """Not `archivist init`, which would make a new key that cannot open the backup."""
    archived(*_records(make_record, 0, 5))
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    services.config.key_file.rename(tmp_path / "key-put-away")
    result = subprocess.run(
        [sys.executable, "-m", "archivist", "backup", "verify", str(folder),
         "--config", str(services.config.path)],
        capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                             if k != "ARCHIVIST_ARCHIVE_KEY"},
    )
    assert result.returncode != 0
    assert "give the key the backup was made with" in result.stderr
    assert "archivist init" not in result.stderr


def test_a_backup_an_earlier_version_made_verifies_and_recovers(tmp_path: Path) -> None:
    """A backup made while the catalog kept a row per entry with its hashes (see
    `tests/data/make_v1_backup.py`): checked without being written to, then recovered into a
    fresh installation, whose catalog is upgraded, with the answers it gave."""
    data = Path(__file__).resolve().parent / "data"
    folder = tmp_path / "backup"
    shutil.copytree(data / "backup_v1", folder)
    shutil.copy2(data / "backup_v1.key", tmp_path / "archive.key")
    catalog = folder / "archive" / "catalog.db"
    before = catalog.read_bytes()

    assert verify_backup(folder, load_key(tmp_path / "archive.key")) == []
    assert catalog.read_bytes() == before  # checked without being written to
    fresh = _fresh_config(tmp_path, "fresh")
    assert recover_backup(fresh, folder, utcnow()).archived == 19
    with Services.open(fresh) as again:
        assert verify_all(again).problems == []
        assert _answers(again) == json.loads((data / "backup_v1.json").read_text())
        assert again.store.history("B-00003")[-1].reason == "asked by the customer"
        assert again.store.last_seq() == 21
        # Backing up into the same folder again: the store is the backup's history (its head
        # entry is found, by its hash, in the upgraded catalog), so the segment is not copied.
        segment_file = folder / "archive" / "segments" / "000001.0.seg"
        copied_before = segment_file.stat().st_ino
        create_backup(again, folder, utcnow())
        assert segment_file.stat().st_ino == copied_before
        assert verify_backup(folder, load_key(tmp_path / "archive.key")) == []


@pytest.mark.parametrize("copied", ["archive.key*", "archive.key"])
def test_a_rehearsal_as_the_readme_shows_warns_of_no_ledger_only_when_left_behind(
    tmp_path: Path, make_record: Any, copied: str
) -> None:
    """The README's rehearsal copies `archive.key*` before `init`: from an installation that
    never erased anything, that copies the (empty) erasure ledger too, so the recovery has no
    ledger to warn of; leaving the ledger behind still warns."""
    live = tmp_path / "live"
    live.mkdir()
    (live / "config.toml").write_text(
        CONFIG_TEXT.replace('dir = "data/archive"\n',
                            'dir = "data/archive"\nkey_file = "data/keys/archive.key"\n'))
    records = write_jsonl(tmp_path / "r.jsonl", _records(make_record, 0, 6))

    def cli(*args: str, config: Path = live / "config.toml") -> str:
        result = subprocess.run([sys.executable, "-m", "archivist", *args, "--config",
                                 str(config)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stderr

    for args in (("init",), ("import", str(records)), ("archive", "--as-of", "2026-01-01"),
                 ("backup", "create", str(tmp_path / "backup")),
                 ("backup", "verify", str(tmp_path / "backup"))):
        cli(*args)
    rehearsal = tmp_path / "rehearsal"
    (rehearsal / "data" / "keys").mkdir(parents=True)
    shutil.copy2(live / "config.toml", rehearsal / "config.toml")
    for key_file in (live / "data" / "keys").glob(copied):
        shutil.copy2(key_file, rehearsal / "data" / "keys" / key_file.name)
    cli("init", config=rehearsal / "config.toml")

    stderr = cli("backup", "recover", str(tmp_path / "backup"), config=rehearsal / "config.toml")

    keys = rehearsal / "data" / "keys"
    if copied == "archive.key*":
        assert stderr == ""
    else:  # one line each: a revoked token could work again as well
        lines = stderr.splitlines()
        assert len(lines) == 2, stderr
        assert lines[0].startswith(
            f"warning: no erasure ledger at {keys / 'archive.key.erasures'}: ")
        assert lines[1].startswith(
            f"warning: no revocation ledger at {keys / 'archive.key.revoked'}: ")
    cli("verify", config=rehearsal / "config.toml")
