"""Restoring processes: one record brings its whole process back; bulk restore by ids and by
search; restores that stick through the restore grace."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from click.testing import CliRunner

from archivist.active_db import find_active, utcnow
from archivist.importer import import_lines
from cli.commands import main
from indexer.jobs.restore import restore_process
from indexer.jobs.runs import run_archive_job
from indexer.processes import find_archived_parents

PROCESS = ["CASE-9", "TKT-9", "MSG-9a", "MSG-9b", "NOTE-9"]


@pytest.fixture
def case(archived, make_record):
    return archived(
        make_record(id="CASE-9", kind="process", subject="Refund case", body="refund case"),
        make_record(id="TKT-9", kind="ticket", parent_id="CASE-9", body="ticket"),
        make_record(id="MSG-9a", parent_id="TKT-9", body="退款 message",
                    attributes={"channel": "email"}),
        make_record(id="MSG-9b", parent_id="TKT-9", body="refund message"),
        make_record(id="NOTE-9", kind="note", parent_id="CASE-9", body="note"),
        make_record(id="OTHER", body="refund elsewhere"),
    )


def search_ids(client, headers, query=""):
    body = client.get(f"/api/v1/search?{query}&per_page=100", headers=headers).json
    return {h["id"] for h in body["hits"]}


def active(services, ids):
    with services.sessions.begin() as session:
        return find_active(session, ids)


def test_restoring_one_record_restores_its_process(client, admin_headers, services, case):
    response = client.post(
        "/api/v1/records/MSG-9a/restore", json={"reason": "customer reopened"},
        headers=admin_headers,
    )
    assert response.status_code == 200, response.json
    assert response.json["id"] == "MSG-9a" and response.json["state"] == "restored"
    assert sorted(response.json["restored"]) == sorted(PROCESS)
    back = active(services, PROCESS)
    by_id = {r["id"]: r for r in case}
    assert {i: r.to_json() for i, r in back.items()} == {i: by_id[i] for i in PROCESS}
    assert search_ids(client, admin_headers) == {"OTHER"}
    for record_id in PROCESS:
        last = client.get(f"/api/v1/records/{record_id}", headers=admin_headers).json
        assert last["archive"]["state"] == "restored"
        event = last["history"][-1]
        assert (event["event"], event["actor"], event["reason"]) == (
            "restored", "test-admin", "customer reopened"
        )
    audit = client.get("/api/v1/audit?action=restore", headers=admin_headers).json["entries"]
    assert len(audit) == 1
    assert sorted(audit[0]["details"]["restored"]) == sorted(PROCESS)
    again = client.post("/api/v1/records/CASE-9/restore", headers=admin_headers)
    assert again.status_code == 409
    assert services.store.verify() == []


def test_two_racing_restores_of_one_process(services, case):
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def run(record_id):
        barrier.wait()
        try:
            results[record_id] = restore_process(
                services.sessions, services.store, services.index, record_id, "admin",
                utcnow(), "race",
            )
        except Exception as e:  # noqa: BLE001 - the loser's error is what we check
            results[record_id] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in ("MSG-9a", "NOTE-9")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(type(v).__name__ for v in results.values())
    assert outcomes[1] == "list", outcomes
    loser = next(v for v in results.values() if not isinstance(v, list))
    assert getattr(loser, "code", None) in {"restore_in_progress", "not_archived"}
    assert set(active(services, PROCESS)) == set(PROCESS)
    assert services.store.find_archived(PROCESS) == set()
    assert all(len([e for e in services.store.history(i) if e.event == "restored"]) == 1
               for i in PROCESS)


def test_bulk_restore_by_search_takes_the_search_hits_and_their_processes(
    client, admin_headers, services, case
):
    before = search_ids(client, admin_headers, "q=message")
    assert before == {"MSG-9a", "MSG-9b"}  # 退款 message and refund message
    body = {"search": {"q": "message"}, "reason": "reopened", "dry_run": True}
    dry = client.post("/api/v1/restore", json=body, headers=admin_headers)
    assert dry.status_code == 200, dry.json
    assert dry.json == {"matched": 2, "restored": 5, "processes": 1,
                        "ids": dry.json["ids"], "skipped": [], "dry_run": True}
    assert sorted(dry.json["ids"]) == sorted(PROCESS)
    assert active(services, PROCESS) == {}  # the dry run changed nothing
    assert services.store.find_archived(PROCESS) == set(PROCESS)
    body["dry_run"] = False
    done = client.post("/api/v1/restore", json=body, headers=admin_headers).json
    assert (done["matched"], done["restored"], done["processes"]) == (2, 5, 1)
    assert set(active(services, [*PROCESS, "OTHER"])) == set(PROCESS)
    assert search_ids(client, admin_headers) == {"OTHER"}
    events = [services.store.history(i)[-1] for i in PROCESS]
    assert {(e.event, e.actor, e.reason) for e in events} == {
        ("restored", "test-admin", "reopened")
    }


def test_bulk_restore_by_ids_lists_skipped_records(client, admin_headers, services, case):
    body = {"ids": ["OTHER", "NEVER", "OTHER"], "reason": "audit"}
    first = client.post("/api/v1/restore", json=body, headers=admin_headers).json
    assert (first["matched"], first["restored"], first["ids"]) == (2, 1, ["OTHER"])
    assert first["skipped"] == [{"id": "NEVER", "code": "not_found"}]
    second = client.post("/api/v1/restore", json=body, headers=admin_headers).json
    assert second["restored"] == 0
    assert {s["id"]: s["code"] for s in second["skipped"]} == {
        "OTHER": "already_active", "NEVER": "not_found"
    }
    audit = client.get("/api/v1/audit?action=restore", headers=admin_headers).json["entries"]
    assert [(e["target"], e["details"]["ids"], e["details"]["skipped_ids"]) for e in audit] == [
        ("ids", ["OTHER", "NEVER", "OTHER"], {"OTHER": "already_active", "NEVER": "not_found"}),
        ("ids", ["OTHER", "NEVER", "OTHER"], {"NEVER": "not_found"}),
    ]  # an auditor sees what was asked and what was not done, not counts alone


def test_bulk_restore_over_the_limit_is_too_many(
    config_path, tmp_path, make_record, services
):
    from server import close_app, create_app
    from tests.conftest import _token_headers

    config_path.write_text(config_path.read_text() + "\n[server]\nmax_bulk_restore = 3\n")
    from archivist.config import load_config

    config = load_config(config_path)
    lines = [json.dumps(make_record(id=f"T{i}")).encode() for i in range(5)]
    import_lines(lines, services.sessions, services.store.find_archived)
    run_archive_job(services, datetime(2026, 1, 1, tzinfo=UTC))
    app = create_app(config)
    try:
        client = app.test_client()
        headers = _token_headers(services, "admin")
        body = {"search": {"q": ""}, "reason": "too much"}
        response = client.post("/api/v1/restore", json=body, headers=headers)
        assert response.status_code == 400
        assert response.json["error"]["code"] == "too_many"
        assert services.store.find_archived([f"T{i}" for i in range(5)]) == {
            f"T{i}" for i in range(5)
        }
        small = {"ids": ["T1", "T2"], "reason": "fine"}
        assert client.post("/api/v1/restore", json=small, headers=headers).json["restored"] == 2
    finally:
        close_app(app)


@pytest.mark.parametrize(
    "body",
    [
        {"ids": ["X"]},  # no reason
        {"ids": ["X"], "reason": ""},
        {"ids": ["X"], "reason": "x" * 501},
        {"reason": "r"},  # neither ids nor search
        {"ids": ["X"], "search": {}, "reason": "r"},
        {"search": {"sort": "sideways"}, "reason": "r"},
        {"search": {"page": 2}, "reason": "r"},
        # "no" or 0 taken for false would make a real run of what was meant as a dry run
        {"ids": ["X"], "reason": "r", "dry_run": "no"},
        {"ids": ["X"], "reason": "r", "dry_run": 0},
    ],
)
def test_bulk_restore_bad_bodies_are_400(client, admin_headers, body):
    response = client.post("/api/v1/restore", json=body, headers=admin_headers)
    assert response.status_code == 400, response.json
    assert set(response.json["error"]) == {"code", "message"}


def test_a_restore_by_search_says_why_it_takes_no_page(client, admin_headers):
    body = {"search": {"q": "refund", "per_page": 5}, "reason": "r"}
    response = client.post("/api/v1/restore", json=body, headers=admin_headers)
    assert response.status_code == 400
    assert response.json["error"]["message"] == (
        "per_page: a restore by search restores every match; page and per_page do not apply"
    )
    erase = {"customer_id": "C1", "reason": "r", "dry_run": "yes"}
    assert client.post("/api/v1/erase", json=erase, headers=admin_headers).status_code == 400


def test_cli_restore_by_search_refuses_a_page_as_a_usage_error(config_path, services):
    for search, said in (("q=refund&page=2", "page and per_page do not apply"),
                         ("q=refund&per_page=5", "page and per_page do not apply"),
                         ("process=A&process=B", "process")):
        result = CliRunner().invoke(main, ["restore", "--search", search, "--reason", "r",
                                           "--dry-run", "--config", str(config_path)])
        assert result.exit_code == 2, (search, result.output)
        assert len(result.output.strip().splitlines()) == 1 and said in result.output


def test_bulk_restore_is_for_admins(client, agent_headers, auditor_headers):
    body = {"ids": ["X"], "reason": "r"}
    assert client.post("/api/v1/restore", json=body, headers=agent_headers).status_code == 403
    assert client.post("/api/v1/restore", json=body, headers=auditor_headers).status_code == 403


def test_cli_restore_by_search_and_ids(config_path, services, case):
    runner = CliRunner()
    dry = runner.invoke(main, ["restore", "--search", "q=refund case", "--reason", "check",
                               "--dry-run", "--config", str(config_path)])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.strip() == "would restore 5 (1 processes)"
    assert services.store.find_archived(PROCESS) == set(PROCESS)
    done = runner.invoke(main, ["restore", "NOTE-9", "NOPE", "--reason", "reopened",
                                "--config", str(config_path)])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == "restored 5 (1 processes)"
    assert "skipped NOPE: not_found" in done.stderr
    assert set(active(services, PROCESS)) == set(PROCESS)
    # every record given skipped: nothing restored is a failure a script can see
    again = runner.invoke(main, ["restore", "NOTE-9", "NOPE", "--reason", "again",
                                 "--config", str(config_path)])
    assert again.exit_code == 1, again.output
    assert again.stdout.strip() == "restored 0 (0 processes)"
    assert "skipped NOTE-9: already_active" in again.stderr
    assert again.stderr.strip().endswith("error: nothing restored: every record was skipped")
    dry_again = runner.invoke(main, ["restore", "NOTE-9", "--reason", "again", "--dry-run",
                                     "--config", str(config_path)])
    assert dry_again.exit_code == 1, dry_again.output
    assert dry_again.stdout.strip() == "would restore 0 (0 processes)"
    assert dry_again.stderr.strip().endswith(
        "error: nothing would be restored: every record was skipped"
    )
    usage = runner.invoke(main, ["restore", "--reason", "x", "--config", str(config_path)])
    assert usage.exit_code != 0
    # read as the API reads a query string: a repeat refused, not its first taken
    for search, message in (("q=&q=refund", "given more than once"), ("q=%FF", "UTF-8")):
        refused = runner.invoke(main, ["restore", "--search", search, "--reason", "x",
                                       "--dry-run", "--config", str(config_path)])
        assert refused.exit_code != 0 and message in refused.stderr, refused.output


def test_a_restored_process_sticks_until_its_grace_ends(services, make_record):
    records = [
        make_record(id="G", updated_at="2020-01-01T00:00:00Z"),
        make_record(id="G-1", parent_id="G", updated_at="2020-01-01T00:00:00Z"),
    ]
    lines = [json.dumps(r).encode() for r in records]
    import_lines(lines, services.sessions, services.store.find_archived,
                 find_archived_parents=partial(find_archived_parents, services.store))
    run_archive_job(services, datetime(2026, 1, 1, tzinfo=UTC))
    restored_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    restore_process(services.sessions, services.store, services.index, "G-1", "admin",
                    restored_at, "reopened")
    grace_ends = restored_at + timedelta(days=365)
    before = grace_ends - timedelta(seconds=1)
    assert run_archive_job(services, before, dry_run=True).archived == 0
    assert run_archive_job(services, before, dry_run=True).held_back == 1
    assert run_archive_job(services, before).archived == 0
    assert set(active(services, ["G", "G-1"])) == {"G", "G-1"}
    assert run_archive_job(services, grace_ends, dry_run=True).archived == 2
    assert run_archive_job(services, grace_ends).archived == 2
    assert services.store.find_archived(["G", "G-1"]) == {"G", "G-1"}
    assert services.store.get("G-1") == records[1]  # updated_at itself never changed


def test_a_bulk_restore_brings_back_what_an_archive_batch_moved_after_its_plan(
    services, make_record, monkeypatch
):
    """A late reply to an archived case is archived by a run while a bulk restore of the case
    is under way: the restore brings it back too, so no process is left split."""
    import indexer.jobs.restore as restore_module
    from indexer.jobs.restore import restore_many

    old = "2020-01-02T00:00:00Z"
    as_of = datetime(2026, 1, 1, tzinfo=UTC)
    load = partial(import_lines, sessions=services.sessions,
                   find_archived=services.store.find_archived,
                   find_archived_parents=partial(find_archived_parents, services.store))
    load([json.dumps(make_record(id=f"P{i}", updated_at=old)).encode() for i in range(3)])
    run_archive_job(services, as_of)
    load([json.dumps(make_record(id=f"K{i}", parent_id=f"P{i}", updated_at=old)).encode()
          for i in range(3)])
    plan = restore_module._plan_groups

    def plan_then_an_archive_run(*args):
        planned = plan(*args)
        assert run_archive_job(services, as_of).archived == 3  # the replies leave meanwhile
        return planned

    monkeypatch.setattr(restore_module, "_plan_groups", plan_then_an_archive_run)
    report = restore_many(services.sessions, services.store, services.index,
                          ["P0", "P1", "P2"], "admin", utcnow(), "bulk")

    everything = [f"{p}{i}" for p in "PK" for i in range(3)]
    assert sorted(report.restored) == sorted(everything)
    assert set(active(services, everything)) == set(everything)
    assert services.store.find_archived(everything) == set()


def test_a_skipped_process_is_named_by_the_ids_asked_for_in_it() -> None:
    """Another restore marked the process's root: the skip names what this caller asked for
    (a child of that process), not the root it never sent."""
    from indexer.jobs.restore import Skipped, _as_requested

    groups = [["W", "W-c1", "W-c2", "W-c3"], ["K1"]]
    problems = [Skipped("W", "restore_in_progress")]
    assert _as_requested(problems, groups, ["W-c2", "K1", "W-c3"]) == [
        Skipped("W-c2", "restore_in_progress"), Skipped("W-c3", "restore_in_progress"),
    ]
    assert _as_requested([Skipped("K1", "already_active")], groups, ["K1"]) == [
        Skipped("K1", "already_active"),
    ]


def test_a_process_archived_again_during_a_bulk_restore_is_counted_once(services, case):
    """An archive run between a bulk restore's batch and its last look for records left
    behind moves the process out again; it is brought back, and listed once."""
    from indexer.jobs.restore import restore_many

    now = utcnow()
    again: list[int] = []

    def archive_run_meanwhile(_done: int, _planned: int) -> None:
        later = now + timedelta(days=3650)  # past the restore grace
        again.append(run_archive_job(services, later).archived)

    report = restore_many(services.sessions, services.store, services.index, ["MSG-9a"],
                          "test", now, "reopened", progress=archive_run_meanwhile)

    assert again == [len(PROCESS)]  # the whole process had left again
    assert sorted(report.restored) == sorted(PROCESS)  # each once
    assert sorted(active(services, PROCESS)) == sorted(PROCESS)
    assert services.store.verify() == []
