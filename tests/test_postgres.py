"""The same data path on a real PostgreSQL server: upserts, archive batches, holds, leases,
restore and reconcile use PostgreSQL's own SQL there.

Runs whenever PostgreSQL's server programs are installed (`scripts/setup --test` installs them);
with ARCHIVIST_REQUIRE_POSTGRES=1 (set by scripts/test) a missing server is a failure.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from archivist.active_db import find_active, utcnow
from archivist.config import load_config
from archivist.holds import add_hold
from archivist.importer import import_lines
from archivist.leases import acquire_lease
from indexer.jobs.reconcile import reconcile_pending
from indexer.jobs.restore import restore_record
from indexer.jobs.runs import run_archive_job
from indexer.search import SearchQuery
from indexer.services import Services
from tests.pg import find_pg_bin, run_postgres

if find_pg_bin() is None and not os.environ.get("ARCHIVIST_REQUIRE_POSTGRES"):
    pytest.skip("PostgreSQL is not installed", allow_module_level=True)

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg_url():
    with run_postgres() as url:
        yield url


@pytest.fixture
def pg_services(tmp_path: Path, pg_url: str):
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'[active]\nurl = "{pg_url}"\n[archive]\ndir = "archive"\nbatch_size = 100\n'
        '[index]\ndir = "index"\n[retention.category.finance]\narchive_after_days = 180\n'
    )
    # A fresh schema for each test's installation: what an earlier test archived there (its
    # job runs, the archive's recorded head) would stand for an archive this one has lost.
    from sqlalchemy import create_engine

    admin = create_engine(pg_url)
    with admin.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    admin.dispose()
    with Services.open(load_config(config_path), create=True) as services:
        yield services


def on_new_database(pg_url: str, name: str, folder: Path, more_config: str = "") -> Path:
    """Write `folder/config.toml` for an installation over a new, empty database `name` of the
    test's server; returns the config's path."""
    from sqlalchemy import create_engine

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    folder.mkdir()
    path = folder / "config.toml"
    path.write_text(
        f'[active]\nurl = "{pg_url.replace("/archivist?", f"/{name}?")}"\n'
        f'[archive]\ndir = "archive"\n[index]\ndir = "index"\n{more_config}'
    )
    return path


def load(services, records):
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    report = import_lines(lines, services.sessions, services.store.find_archived)
    assert report.rejected == 0, report.errors
    return report


def test_postgres_archive_round_trip_with_policies_and_holds(pg_services, make_record):
    services = pg_services
    boundary = AS_OF - timedelta(days=180)
    iso = lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    records = [
        make_record(id="F-at", category="finance", updated_at=iso(boundary),
                    attributes={"invoice": "INV-2023-004512", "lines": [1, 2]}),
        make_record(id="F-after", category="finance",
                    updated_at=iso(boundary + timedelta(seconds=1))),
        make_record(id="S-old", body="客户要求退款", updated_at="2020-01-01T08:00:00+08:00"),
        make_record(id="S-held", customer_id="C-HOLD", updated_at="2020-01-01T00:00:00Z"),
        *[make_record(id=f"BULK-{i}", updated_at="2021-01-01T00:00:00Z") for i in range(250)],
    ]
    load(services, records)
    load(services, [make_record(id="F-after", category="finance", subject="upserted",
                                updated_at=iso(boundary + timedelta(seconds=1)))])
    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-HOLD", "litigation", utcnow())
    report = run_archive_job(services, AS_OF)
    assert report.archived == 252 and report.indexed == 252
    assert services.store.get("F-at") == records[0]
    with services.sessions.begin() as session:
        active = find_active(session, ["F-at", "F-after", "S-old", "S-held"])
    assert sorted(active) == ["F-after", "S-held"]
    assert active["F-after"].subject == "upserted"
    assert services.index.search(SearchQuery(q="退款")).total == 1
    assert services.store.verify() == []


def test_postgres_restore_and_reconcile(pg_services, make_record):
    services = pg_services
    load(services, [make_record(id="P1", body="contract renewal"),
                     make_record(id="P2", body="contract renewal")])
    run_archive_job(services, AS_OF)
    restore_record(services.sessions, services.store, services.index, "P1", "admin", utcnow())
    with services.sessions.begin() as session:
        assert find_active(session, ["P1"])["P1"].to_json() == services.store.get("P1")
    assert [h.id for h in services.index.search(SearchQuery(q="renewal")).hits] == ["P2"]

    # a restore interrupted after the active insert committed is finished by reconcile
    services.store.begin_restore("P2")
    from archivist.active_db import insert_record
    from archivist.records import record_from_json

    with services.sessions.begin() as session:
        insert_record(session, record_from_json(services.store.get("P2")))
    assert reconcile_pending(services.sessions, services.store, utcnow()) == 1
    assert services.store.info("P2").state == "restored"


def test_postgres_lease_is_exclusive(pg_services):
    now = utcnow()
    with pg_services.sessions.begin() as session:
        assert acquire_lease(session, "archive", "w1", now, timedelta(minutes=5))
    with pg_services.sessions.begin() as session:
        assert not acquire_lease(session, "archive", "w2", now, timedelta(minutes=5))
    with pg_services.sessions.begin() as session:
        assert acquire_lease(session, "archive", "w2", now + timedelta(minutes=6),
                             timedelta(minutes=5))


def test_postgres_backup_recovers_into_another_database(
    pg_services, pg_url, make_record, tmp_path
):
    """On PostgreSQL the backup holds Archivist's own tables as rows; a recovery into an
    empty database brings back the active records, holds and archive, and the same answers."""
    from sqlalchemy import select

    from archivist.active_db import ActiveRecord
    from archivist.holds import list_holds
    from indexer.jobs.backup import create_backup, recover_backup
    from indexer.jobs.verification import verify_all

    services = pg_services
    load(services, [
        *[make_record(id=f"PB-{i}", body=f"refund 退款 INV-2021-{i:05d}",
                      updated_at="2021-01-01T00:00:00Z") for i in range(40)],
        make_record(id="PB-young", body="refund pending", updated_at="2026-05-30T00:00:00Z"),
    ])
    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-PB", "litigation 7", utcnow())
    run_archive_job(services, AS_OF)
    restore_record(services.sessions, services.store, services.index, "PB-3", "admin", utcnow())

    def state(target: Services):
        with target.sessions.begin() as session:
            active = sorted(session.scalars(select(ActiveRecord.id)))
            holds = [(h.scope, h.value, h.reason) for h in list_holds(session)]
        archived = sorted(e.record_id for e in target.store.iter_catalog(state="archived"))
        answers = {q: sorted(h.id for h in target.index.iter_hits(SearchQuery(q=q)))
                   for q in ("refund", "退款", "INV-2021-00007")}
        return active, holds, archived, answers

    before = state(services)
    assert "PB-3" in before[0] and "PB-young" in before[0] and len(before[2]) == 39
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())

    other = tmp_path / "other"
    on_new_database(pg_url, "recovered", other,
                    "[retention.category.finance]\narchive_after_days = 180\n")
    (other / "archive.key").write_bytes((tmp_path / "archive.key").read_bytes())
    config = load_config(other / "config.toml")
    recover_backup(config, folder, utcnow())
    with Services.open(config) as target:
        assert state(target) == before
        assert verify_all(target).problems == []
        # the recovered rows keep their times: a later run archives them by their age
        run_archive_job(target, datetime(2028, 1, 1, tzinfo=UTC))
        assert target.store.info("PB-young").state == "archived"


def test_a_backup_of_the_embedded_database_recovers_onto_postgresql(
    services, archived, make_record, pg_url, tmp_path
):
    """A backup holds the embedded SQLite database as a copy of the file; recovered into an
    installation on PostgreSQL, Archivist's tables (active records among them) are read from
    that copy."""
    from sqlalchemy import select

    from archive_store.backup import load_manifest
    from archivist.active_db import ActiveRecord
    from archivist.holds import list_holds
    from indexer.jobs.backup import create_backup, recover_backup
    from indexer.jobs.verification import verify_all

    archived(
        *[make_record(id=f"EB-{i}", body=f"refund EB {i}") for i in range(12)],
        make_record(id="EB-young", body="refund pending", updated_at="2025-12-30T00:00:00Z"),
    )
    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-EB", "litigation 9", utcnow())
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())
    assert "active.db" in load_manifest(folder)

    other = tmp_path / "other"
    on_new_database(pg_url, "fromsqlite", other)
    (other / "archive.key").write_bytes(services.config.key_file.read_bytes())
    config = load_config(other / "config.toml")

    report = recover_backup(config, folder, utcnow())

    assert (report.active, report.archived) == (1, 12)
    with Services.open(config) as target:
        with target.sessions.begin() as session:
            assert list(session.scalars(select(ActiveRecord.id))) == ["EB-young"]
            assert [(h.scope, h.value) for h in list_holds(session)] == [("customer", "C-EB")]
        assert target.index.search(SearchQuery(q="refund")).total == 12
        assert verify_all(target).problems == []


def test_postgres_import_racing_an_archive_run_never_leaves_a_record_in_both_places(
    pg_services, make_record
):
    """On PostgreSQL the import holds the rows it checks (`FOR UPDATE`): an archive batch
    cannot delete one between the import's check and its write."""
    import threading

    from archivist.active_db import find_active

    services = pg_services
    load(services, [make_record(id="RACE-1", body="first")])
    checked, archived_meanwhile = threading.Event(), threading.Event()

    def slow_find_archived(ids):
        found = services.store.find_archived(ids)
        checked.set()
        archived_meanwhile.wait(timeout=3)
        return found

    line = json.dumps(make_record(id="RACE-1", body="second")).encode()
    result = {}
    importer = threading.Thread(target=lambda: result.update(
        report=import_lines([line], services.sessions, slow_find_archived)))
    importer.start()
    assert checked.wait(timeout=10)
    runner = threading.Thread(target=lambda: result.update(run=run_archive_job(services, AS_OF)))
    runner.start()
    runner.join(timeout=2)
    archived_meanwhile.set()
    importer.join(timeout=60)
    runner.join(timeout=60)

    assert result["report"].imported == 1 and "run" in result
    with services.sessions.begin() as session:
        active = find_active(session, ["RACE-1"])
    in_archive = services.store.find_archived(["RACE-1"])
    assert len(active) + len(in_archive) == 1, (active, in_archive)
    if active:
        assert active["RACE-1"].body == "second"


def test_postgres_two_imports_at_once_cannot_each_close_half_a_cycle(pg_services, make_record):
    """Each import checks its parents against what is committed: one that started while
    another had not committed yet waits for it, and then sees the other's parent."""
    import threading

    from archivist.importer import BATCH_SIZE

    services = pg_services
    load(services, [make_record(id="CX"), make_record(id="CY")])
    first_checked, go_on = threading.Event(), threading.Event()

    def first_file():
        yield json.dumps(make_record(id="CX", parent_id="CY")).encode()
        yield from [b""] * BATCH_SIZE  # blank lines: CX's batch is checked and written...
        first_checked.set()
        go_on.wait(timeout=10)  # ... but not committed until the second import had its go

    reports = {}
    first = threading.Thread(target=lambda: reports.update(
        first=import_lines(first_file(), services.sessions, services.store.find_archived)))
    first.start()
    assert first_checked.wait(timeout=30)
    line = json.dumps(make_record(id="CY", parent_id="CX")).encode()
    second = threading.Thread(target=lambda: reports.update(
        second=import_lines([line], services.sessions, services.store.find_archived)))
    second.start()
    second.join(timeout=2)
    go_on.set()
    first.join(timeout=60)
    second.join(timeout=60)

    assert reports["first"].imported == 1 and reports["first"].rejected == 0
    assert reports["second"].imported == 0
    assert "would close a cycle" in reports["second"].errors[0].reason
    with services.sessions.begin() as session:
        active = find_active(session, ["CX", "CY"])
    assert (active["CX"].parent_id, active["CY"].parent_id) == ("CY", None)


def test_postgres_an_audit_entry_the_database_refuses_takes_no_other_with_it(pg_services):
    """PostgreSQL's text cannot hold a NUL: such an entry fails alone, the rest of its batch
    is written (a search naming a NUL must not leave other requests unaudited)."""
    from archivist.active_db import AuditEntry
    from archivist.audit import AuditEvent, AuditWriter, iter_chain_problems

    with pg_services.engine.begin() as connection:
        connection.execute(text("TRUNCATE audit_log"))
    writer = AuditWriter(pg_services.sessions)
    events = [AuditEvent(utcnow(), "agent", "search", target)
              for target in ("before", "bad\x00one", "after")]
    with writer._cond:  # all three queued before the writer's thread takes them: one batch
        for event in events:
            writer.record(event, wait=False)
    writer.close()
    with pg_services.read_sessions.begin() as session:
        targets = [e.target for e in session.query(AuditEntry).order_by(AuditEntry.seq)]
        assert list(iter_chain_problems(session)) == []
    assert targets == ["before", "after"]


def test_postgres_many_racing_audit_writers_all_append(pg_services):
    """Processes appending at once (each server worker, the CLI, the worker) all read the same
    head under READ COMMITTED: appends take turns, so none gives up after its retries."""
    import threading

    from archivist.active_db import AuditEntry
    from archivist.audit import AuditEvent, iter_chain_problems, write_audit

    with pg_services.engine.begin() as connection:
        connection.execute(text("TRUNCATE audit_log"))
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(60):
                write_audit(pg_services.sessions,
                            [AuditEvent(utcnow(), f"writer{t}", "search", f"q{n}")])
        except BaseException as e:  # the test reads them below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with pg_services.read_sessions.begin() as session:
        assert session.query(AuditEntry).count() == 12 * 60
        assert list(iter_chain_problems(session)) == []


def test_postgres_a_nul_in_any_request_text_is_a_400_not_an_unaudited_answer(
    pg_services, make_record
):
    from archivist.active_db import AuditEntry
    from archivist.tokens import create_token
    from server import close_app, create_app

    load(pg_services, [make_record(id="N-1", updated_at="2020-01-02T00:00:00Z")])
    run_archive_job(pg_services, datetime(2026, 1, 1, tzinfo=UTC))
    with pg_services.sessions.begin() as session:
        secret = create_token(session, "nul-admin", "admin", utcnow())
    headers = {"Authorization": f"Bearer {secret}"}
    app = create_app(pg_services.config)
    try:
        client = app.test_client()
        answers = [
            client.get("/api/v1/search?q=refund%00x", headers=headers),
            client.get("/api/v1/search?customer_id=C%001", headers=headers),
            client.get("/api/v1/export.csv?q=a%00b", headers=headers),
            client.get("/api/v1/records/N%001", headers=headers),
            client.post("/api/v1/records/N-1/restore", json={"reason": "a\x00b"},
                        headers=headers),
            client.post("/api/v1/erase", json={"record_id": "N-1", "reason": "x\x00"},
                        headers=headers),
            client.post("/api/v1/holds", data={"scope": "record", "value": "N-1",
                                               "reason": "x\x00"}, headers=headers),
        ]
        for response in answers:
            assert response.status_code == 400, response.request.path
            assert "NUL" in response.get_json()["error"]["message"]
        assert client.get("/api/v1/search?q=refund", headers=headers).status_code == 200
        app.extensions["archivist_audit"].flush()
    finally:
        close_app(app)
    with pg_services.read_sessions.begin() as session:
        actions = [e.action for e in session.query(AuditEntry).filter(
            AuditEntry.actor == "nul-admin")]
    assert actions == ["search"]  # the one request answered is audited
    assert pg_services.store.info("N-1").state == "archived"


def test_postgres_rows_are_locked_in_one_order_whatever_order_they_are_given_in(
    pg_services, make_record
):
    """An import locks its file's rows 500 at a time; an archive batch locks its own. Each
    locks in id order, so neither can hold a later row while waiting for an earlier one the
    other holds (PostgreSQL would kill one of them as a deadlock)."""
    import threading

    from sqlalchemy.exc import OperationalError

    from archivist.active_db import lock_active

    services = pg_services
    ids = [f"L-{n:04d}" for n in range(600)]
    load(services, [make_record(id=i) for i in ids])
    holder = services.sessions()
    holder.execute(text("SET lock_timeout = '10s'"))
    holder.execute(text("SELECT id FROM active_records WHERE id = 'L-0000' FOR UPDATE")).all()

    def lock_all_in_file_order() -> None:  # (the file lists them last to first)
        with services.sessions.begin() as session:
            lock_active(session, list(reversed(ids)))

    locker = threading.Thread(target=lock_all_in_file_order)
    locker.start()
    try:
        with services.engine.connect() as watcher:  # until the locker waits for L-0000
            for _ in range(200):
                waiting = watcher.execute(
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one()
                watcher.commit()
                if waiting:
                    break
                time.sleep(0.05)
        try:  # a row the locker would hold by now, had it locked the file's first chunk first
            holder.execute(
                text("SELECT id FROM active_records WHERE id = 'L-0599' FOR UPDATE")).all()
        except OperationalError as e:
            pytest.fail(f"the two transactions waited for each other: {e.orig}")
    finally:
        holder.rollback()
        holder.close()
        locker.join(timeout=30)


def test_postgres_import_refuses_a_nul_in_a_text_field_line_by_line(pg_services, make_record):
    from tests.test_importer import check_nul_lines_are_refused_one_by_one

    check_nul_lines_are_refused_one_by_one(pg_services, make_record)


def test_a_forced_recovery_onto_postgresql_over_an_archive_sealed_with_another_key(
    pg_services, pg_url, make_record, tmp_path
):
    """On PostgreSQL the backup's tables are loaded through the installation, which an archive
    sealed with another key cannot open: a forced recovery says to move that archive away and
    changes nothing; once it is moved, the recovery replaces the installation."""
    from sqlalchemy import create_engine, select

    from archive_store.backup import BackupError
    from archivist.active_db import ActiveRecord
    from indexer.jobs.backup import create_backup, recover_backup
    from indexer.jobs.verification import verify_all

    services = pg_services
    load(services, [make_record(id=f"PK-{i}", body="refund", updated_at="2021-01-01T00:00:00Z")
                    for i in range(5)])
    run_archive_job(services, AS_OF)
    folder = tmp_path / "backup"
    create_backup(services, folder, utcnow())

    other = tmp_path / "other"
    on_new_database(pg_url, "sealed_other", other)
    config = load_config(other / "config.toml")
    with Services.open(config, create=True) as target:  # a key of its own
        load(target, [*[make_record(id=f"OT-{i}", updated_at="2021-01-01T00:00:00Z")
                        for i in range(3)],
                      make_record(id="OT-young", updated_at="2026-05-30T00:00:00Z")])
        assert run_archive_job(target, AS_OF).archived == 3
    assert (other / "archive.key").read_bytes() != (tmp_path / "archive.key").read_bytes()
    (other / "archive.key").write_bytes((tmp_path / "archive.key").read_bytes())
    catalog = (other / "archive" / "catalog.db").read_bytes()

    with pytest.raises(BackupError, match="move that folder away first"):
        recover_backup(config, folder, utcnow(), force=True)

    assert (other / "archive" / "catalog.db").read_bytes() == catalog
    check = create_engine(pg_url.replace("/archivist?", "/sealed_other?"))
    with check.connect() as connection:
        assert connection.execute(text("SELECT id FROM active_records")).scalars().all() == [
            "OT-young"]
    check.dispose()

    (other / "archive").rename(other / "archive.old")
    recover_backup(config, folder, utcnow(), force=True)
    with Services.open(config) as target:
        assert sorted(e.record_id for e in target.store.iter_catalog()) == [
            f"PK-{i}" for i in range(5)]
        with target.sessions.begin() as session:
            assert list(session.scalars(select(ActiveRecord.id))) == []
        assert verify_all(target).problems == []
