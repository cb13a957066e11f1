"""The audit log: append-only, hash chained, safe under concurrent appends, checked by verify."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import delete, select, update

from archivist.active_db import AuditEntry
from archivist.audit import (
    AuditEvent,
    AuditFilter,
    AuditWriter,
    iter_chain_problems,
    list_audit,
    write_audit,
)
from cli.commands import main
from indexer.jobs.verification import verify_all

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _event(n: int, actor: str = "alice", action: str = "search") -> AuditEvent:
    return AuditEvent(
        T0 + timedelta(minutes=n), actor, action, f"q{n}", "ok", {"n": n, "q": "退款"}
    )


def _problems(services: Any) -> list[str]:
    with services.sessions.begin() as session:
        return list(iter_chain_problems(session))


def test_appended_entries_chain_and_verify(services: Any) -> None:
    assert write_audit(services.sessions, [_event(1), _event(2)]) == [1, 2]
    assert write_audit(services.sessions, [_event(3)]) == [3]
    assert _problems(services) == []
    with services.sessions.begin() as session:
        rows = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
    assert rows[0].prev_hash == "0" * 64
    assert [r.prev_hash for r in rows[1:]] == [r.entry_hash for r in rows[:-1]]


def test_an_edited_entry_is_detected(services: Any) -> None:
    write_audit(services.sessions, [_event(n) for n in range(1, 6)])
    with services.sessions.begin() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(actor="mallory"))
    assert _problems(services) == ["audit log: entry 3 was changed after it was written"]


def test_a_deleted_entry_is_detected(services: Any) -> None:
    write_audit(services.sessions, [_event(n) for n in range(1, 6)])
    with services.sessions.begin() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 2))
    assert _problems(services) == [
        "audit log: entries 2..2 are missing",
        "audit log: entry 3 does not follow the entry before it",
    ]


def test_archivist_verify_fails_on_a_damaged_audit_log(services: Any, config_path: Path) -> None:
    write_audit(services.sessions, [_event(n) for n in range(1, 4)])
    assert verify_all(services).problems == []
    ok = CliRunner().invoke(main, ["verify", "--config", str(config_path)])
    assert ok.exit_code == 0, ok.output
    with services.sessions.begin() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 1).values(outcome="denied"))
    result = CliRunner().invoke(main, ["verify", "--config", str(config_path)])
    assert result.exit_code == 1
    assert "audit log: entry 1 was changed" in result.stderr


def test_concurrent_writers_keep_one_chain(services: Any) -> None:
    writer = AuditWriter(services.sessions, max_batch=7)

    def work(t: int) -> None:
        for n in range(40):
            # direct appends and batched ones race for the head of the chain
            if n % 4 == 0:
                write_audit(services.sessions, [_event(n, actor=f"direct{t}")])
            else:
                writer.record(_event(n, actor=f"writer{t}"), wait=n % 2 == 0)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    with services.sessions.begin() as session:
        assert list_audit(session, AuditFilter(per_page=1)).total == 240
    assert _problems(services) == []


def test_list_audit_filters_and_pages(services: Any) -> None:
    write_audit(
        services.sessions,
        [
            _event(n, actor="alice" if n % 2 else "bob", action="read" if n % 3 else "search")
            for n in range(1, 13)
        ],
    )
    with services.sessions.begin() as session:
        page = list_audit(session, AuditFilter(actor="bob", action="read", per_page=2, page=2))
        assert page.total == 4
        assert [e.seq for e in page.entries] == [4, 2]
        window = list_audit(
            session,
            AuditFilter(date_from=T0 + timedelta(minutes=3), date_to=T0 + timedelta(minutes=5)),
        )
        assert [e.seq for e in window.entries] == [5, 4, 3]
        assert window.entries[0].details == {"n": 5, "q": "退款"}


def test_audit_endpoint_filters_by_actor_action_and_time(
    client: Any, auditor_headers: dict[str, str], agent_headers: dict[str, str]
) -> None:
    client.get("/api/v1/search?q=a", headers=agent_headers)
    client.get("/api/v1/records/NOPE", headers=agent_headers)
    client.get("/api/v1/search?q=b", headers=auditor_headers)
    body = client.get(
        "/api/v1/audit?actor=test-agent&action=search", headers=auditor_headers
    ).get_json()
    assert [(e["actor"], e["target"]) for e in body["entries"]] == [("test-agent", "a")]
    reads = client.get("/api/v1/audit?action=read", headers=auditor_headers).get_json()
    assert [(e["target"], e["outcome"]) for e in reads["entries"]] == [("NOPE", "not_found")]
    future = client.get("/api/v1/audit?from=2999-01-01", headers=auditor_headers).get_json()
    assert future["total"] == 0
    paged = client.get("/api/v1/audit?per_page=1&page=2", headers=auditor_headers).get_json()
    assert paged["total"] == 3 and paged["entries"][0]["target"] == "NOPE"


def test_cli_hold_changes_and_disposal_are_audited(services: Any, config_path: Path) -> None:
    runner = CliRunner()
    args = ["--customer", "C7", "--config", str(config_path)]
    assert (
        runner.invoke(main, ["hold", "add", *args[:2], "--reason", "case", *args[2:]]).exit_code
        == 0
    )
    assert runner.invoke(main, ["hold", "remove", *args]).exit_code == 0
    assert runner.invoke(main, ["hold", "remove", *args]).exit_code == 1
    disposed = runner.invoke(
        main, ["dispose", "--as-of", "2026-01-01", "--config", str(config_path)]
    )
    assert disposed.exit_code == 0
    with services.sessions.begin() as session:
        entries = list_audit(session, AuditFilter(actor="cli")).entries
    assert [(e.action, e.target, e.outcome) for e in entries] == [
        ("dispose", "archive", "ok"),
        ("hold_remove", "customer:C7", "bad_hold"),
        ("hold_remove", "customer:C7", "ok"),
        ("hold_add", "customer:C7", "ok"),
    ]
    assert entries[0].details == {"as_of": "2026-01-01T00:00:00Z", "purged": 0}
    assert _problems(services) == []


def test_a_failed_action_is_audited_with_its_own_code_or_error() -> None:
    """A database library's error (whose code may be None, which the log cannot hold) is
    audited as `error`, so the entry is written and the real error is not hidden behind it."""
    from sqlalchemy.exc import IntegrityError, StatementError

    from archive_store import RecordNotFound
    from archivist.audit import audit_outcome

    assert audit_outcome(RecordNotFound("R1")) == "not_found"
    assert audit_outcome(IntegrityError("INSERT", {}, Exception("duplicate"))) == "error"
    assert audit_outcome(StatementError("compile", "INSERT", {}, Exception("NullType"))) == "error"
    assert audit_outcome(ValueError("x")) == "error"


def test_refused_dry_runs_are_audited_as_dry_runs(
    services: Any, client: Any, admin_headers: dict[str, str], archived: Any,
    make_record: Any, config_path: Path,
) -> None:
    from archivist.active_db import utcnow
    from archivist.holds import add_hold

    archived(make_record(id="D-1", customer_id="C-D"), make_record(id="D-2", customer_id="C-D"))
    with services.sessions.begin() as session:
        add_hold(session, "record", "D-1", "litigation", utcnow())
    answers = [
        client.post("/api/v1/erase", headers=admin_headers,
                    json={"record_id": "NOPE", "reason": "asked", "dry_run": True}),
        client.post("/api/v1/erase", headers=admin_headers,
                    json={"customer_id": "C-D", "reason": "asked", "dry_run": True}),
        client.post("/api/v1/erase", headers=admin_headers,
                    json={"record_id": "D-1", "reason": "asked"}),
    ]
    assert [a.status_code for a in answers] == [404, 409, 409]
    cli = CliRunner().invoke(main, ["erase", "--record", "D-1", "--reason", "asked",
                                    "--dry-run", "--config", str(config_path)])
    assert cli.exit_code == 1
    with services.sessions.begin() as session:
        entries = list_audit(session, AuditFilter(action="erase")).entries
    assert [(e.actor, e.outcome, e.details["dry_run"]) for e in reversed(entries)] == [
        ("test-admin", "not_found", True),
        ("test-admin", "on_hold", True),
        ("test-admin", "on_hold", False),
        ("cli", "on_hold", True),
    ]
    # a restore's dry run refused is marked too
    import dataclasses

    from server import close_app, create_app

    server = dataclasses.replace(services.config.server, max_bulk_restore=1)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        refused = app.test_client().post(
            "/api/v1/restore", headers=admin_headers,
            json={"ids": ["D-1", "D-2"], "reason": "asked", "dry_run": True},
        )
    finally:
        close_app(app)
    assert refused.status_code == 400 and refused.json["error"]["code"] == "too_many"
    with services.sessions.begin() as session:
        [entry] = list_audit(session, AuditFilter(action="restore")).entries
    assert (entry.outcome, entry.details["dry_run"]) == ("too_many", True)


def test_entries_the_database_cannot_take_yet_are_written_once_it_can(tmp_path: Path) -> None:
    """A search's entry (nobody waits for it) was dropped while the database was down; now it
    waits for the database, the oldest given up past the limit, and a waiting caller is told."""
    import pytest
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import sessionmaker

    from archivist.active_db import create_schema

    folder = tmp_path / "not-yet"  # no such folder: SQLite cannot open the file
    engine = create_engine(f"sqlite:///{folder}/active.db")
    sessions = sessionmaker(engine)
    writer = AuditWriter(sessions, max_kept=3)
    for n in range(5):
        writer.record(_event(n), wait=False)
    with pytest.raises(OperationalError):
        writer.record(_event(99, actor="waiter"), wait=True)
    writer.flush()  # returns: the database could not take them (yet)

    folder.mkdir()
    create_schema(engine)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sessions.begin() as session:
            if list_audit(session, AuditFilter(per_page=10)).total >= 3:
                break
        time.sleep(0.1)
    writer.close()
    with sessions.begin() as session:
        entries = list_audit(session, AuditFilter(per_page=10)).entries
    assert sorted(e.target for e in entries) == ["q2", "q3", "q4"]  # the two oldest given up
    engine.dispose()
