"""Proof of disposal: the disposal list holds exactly what a run purged, for auditors only."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, datetime

from archivist.active_db import utcnow
from archivist.disposals import DisposalFilter, DueRecord, list_disposals, note_due
from indexer.jobs.runs import run_dispose_job

AS_OF = datetime(2029, 6, 1, tzinfo=UTC)


def _listed(services):
    with services.sessions.begin() as session:
        return list_disposals(session, DisposalFilter(per_page=100)).disposals


def test_disposal_list_holds_exactly_the_purged_records(services, archived, make_record):
    archived(
        make_record(id="old-support", updated_at="2020-01-02T00:00:00Z"),
        make_record(id="old-finance", category="finance", updated_at="2020-01-02T00:00:00Z"),
        make_record(id="young-finance", category="finance", updated_at="2024-05-01T00:00:00Z"),
        make_record(id="held", customer_id="C-HELD", updated_at="2020-01-02T00:00:00Z"),
    )
    from archivist.holds import add_hold

    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-HELD", "litigation", utcnow())
    before = services.store.hashes(e.record_id for e in services.store.iter_catalog())

    report = run_dispose_job(services, AS_OF, actor="cli")

    purged = {e.record_id for e in services.store.iter_catalog(state="purged")}
    listed = {d.record_id: d for d in _listed(services)}
    assert report.purged == 2
    assert set(listed) == purged == {"old-support", "old-finance"}
    finance = listed["old-finance"]
    assert (finance.category, finance.policy, finance.keep_years) == (
        "finance", "category.finance", 7
    )
    support = listed["old-support"]
    assert (support.category, support.policy, support.keep_years) == ("support", "default", 5)
    assert all(d.sha256 == before[d.record_id] for d in listed.values())
    assert {d.actor for d in listed.values()} == {"cli"}
    assert len({d.run_id for d in listed.values()}) == 1
    assert all(d.as_of == AS_OF and d.purged_at is not None for d in listed.values())

    assert run_dispose_job(services, AS_OF, actor="worker").purged == 0
    assert set(d.record_id for d in _listed(services)) == purged  # nothing listed twice


def test_dry_run_lists_nothing(services, archived, make_record):
    archived(make_record(id="old", updated_at="2020-01-02T00:00:00Z"))
    run_dispose_job(services, AS_OF, dry_run=True)
    assert _listed(services) == []


def test_rows_a_crash_left_unconfirmed_are_settled_by_the_next_run(
    services, archived, make_record
):
    archived(
        make_record(id="purged-then-crash", updated_at="2020-01-02T00:00:00Z"),
        make_record(id="noted-not-purged", updated_at="2024-12-01T00:00:00Z"),
    )
    shas = services.store.hashes(["purged-then-crash", "noted-not-purged"])
    with services.sessions.begin() as session:  # a run noted both, purged one, then crashed
        note_due(session, "crashed-run", [
            DueRecord(i, shas[i], "support", "default", 5) for i in sorted(shas)
        ], AS_OF, "worker")
    services.store.purge(["purged-then-crash"], utcnow(), "disposal")
    assert _listed(services) == []  # unconfirmed rows are not proof yet

    run_dispose_job(services, datetime(2026, 1, 1, tzinfo=UTC))  # nothing due itself

    listed = _listed(services)
    assert [(d.record_id, d.run_id) for d in listed] == [("purged-then-crash", "crashed-run")]


def test_an_archive_run_settles_the_list_but_leaves_a_live_run_s_rows_alone(
    services, archived, make_record
):
    """Any job settles the rows a crashed disposal left, but not while a disposal run holds
    the store's disposal lock (in this or another process): those rows are that run's."""
    import subprocess
    import sys
    import threading

    from indexer.jobs.runs import run_archive_job

    archived(make_record(id="purged-then-crash", updated_at="2020-01-02T00:00:00Z"))
    sha = services.store.hashes(["purged-then-crash"])["purged-then-crash"]
    with services.sessions.begin() as session:
        note_due(session, "crashed-run", [
            DueRecord("purged-then-crash", sha, "support", "default", 5)
        ], AS_OF, "worker")
    services.store.purge(["purged-then-crash"], utcnow(), "disposal")

    holder = subprocess.Popen(  # a disposal run under way in another process
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(services.store.directory / "dispose.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        run_archive_job(services, datetime(2026, 1, 1, tzinfo=UTC))
        assert _listed(services) == []  # left to the run under way
    finally:
        holder.communicate("")

    held, release = threading.Event(), threading.Event()

    def disposal_thread() -> None:  # a run under way in another thread of this process
        with services.store.disposing():
            held.set()
            release.wait(60)

    thread = threading.Thread(target=disposal_thread)
    thread.start()
    try:
        assert held.wait(60)
        run_archive_job(services, datetime(2026, 1, 1, tzinfo=UTC))
        assert _listed(services) == []
    finally:
        release.set()
        thread.join(60)
    run_archive_job(services, datetime(2026, 1, 1, tzinfo=UTC))
    assert [(d.record_id, d.run_id) for d in _listed(services)] == [
        ("purged-then-crash", "crashed-run")]


def test_the_category_filter_takes_any_case_of_letters_beyond_ascii(
    services, archived, make_record, client, auditor_headers
):
    archived(*[
        make_record(id=f"gone-{n}", category=category, updated_at="2020-01-02T00:00:00Z")
        for n, category in enumerate(["MÉDICAL", "médical", "Médical", "medical"])
    ])
    run_dispose_job(services, AS_OF)

    for asked in ("médical", "MÉDICAL"):
        page = client.get("/api/v1/disposals", query_string={"category": asked},
                          headers=auditor_headers).json
        assert sorted(d["record_id"] for d in page["disposals"]) == ["gone-0", "gone-1", "gone-2"]
        exported = client.get("/api/v1/disposals.csv", query_string={"category": asked},
                              headers=auditor_headers).get_data(as_text=True)
        assert sorted(r["record_id"] for r in csv.DictReader(io.StringIO(exported))) == [
            "gone-0", "gone-1", "gone-2"]


def test_auditor_reads_and_exports_the_list_and_an_agent_may_not(
    services, archived, make_record, client, auditor_headers, agent_headers
):
    archived(
        make_record(id="gone-1", updated_at="2020-01-02T00:00:00Z"),
        make_record(id="gone-2", category="billing", updated_at="2020-01-02T00:00:00Z"),
        make_record(id="kept", updated_at="2024-12-01T00:00:00Z"),
    )
    run_dispose_job(services, AS_OF)

    page = client.get("/api/v1/disposals?per_page=1", headers=auditor_headers)
    assert page.status_code == 200
    assert page.json["total"] == 2 and len(page.json["disposals"]) == 1
    both = client.get("/api/v1/disposals", headers=auditor_headers).json["disposals"]
    assert {d["record_id"] for d in both} == {"gone-1", "gone-2"}
    assert set(both[0]) == {
        "record_id", "sha256", "category", "policy", "keep_years", "as_of", "purged_at",
        "actor", "run_id",  # as the CSV's columns
    }
    for category in ("billing", "BILLING"):  # any case, as search's filter
        billing = client.get(f"/api/v1/disposals?category={category}",
                             headers=auditor_headers).json
        assert [d["record_id"] for d in billing["disposals"]] == ["gone-2"]
    run_id = billing["disposals"][0]["run_id"]
    by_run = client.get(f"/api/v1/disposals?run={run_id}", headers=auditor_headers).json
    assert by_run["total"] == 2

    exported = client.get("/api/v1/disposals.csv", headers=auditor_headers)
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [r["record_id"] for r in rows] == [d["record_id"] for d in both]  # newest first too
    [audited] = client.get("/api/v1/audit?action=export",
                           headers=auditor_headers).json["entries"]
    assert audited["target"] == "disposals"  # checkable against the file, as an export is
    assert audited["details"]["rows"] == 2
    assert audited["details"]["bytes"] == len(exported.data)
    assert audited["details"]["sha256"] == hashlib.sha256(exported.data).hexdigest()

    assert client.get("/api/v1/disposals", headers=agent_headers).status_code == 403
    assert client.get("/api/v1/disposals.csv", headers=agent_headers).status_code == 403
    bad = client.get("/api/v1/disposals?per_page=0", headers=auditor_headers)
    assert bad.status_code == 400 and bad.json["error"]["code"]
    unknown = client.get("/api/v1/disposals?colour=red", headers=auditor_headers)
    assert unknown.status_code == 400


def _old(make_record, n, **fields):
    return [make_record(id=f"D-{i:03d}", customer_id=f"C{i % 4}", updated_at="2020-01-02T00:00:00Z",
                        **fields) for i in range(n)]


def test_a_hold_placed_while_a_run_goes_on_keeps_its_records_from_the_next_chunk_on(
    services, archived, make_record, monkeypatch
):
    import indexer.jobs.disposal as disposal
    from archivist.holds import add_hold

    archived(*_old(make_record, 40))
    monkeypatch.setattr(disposal, "PURGE_CHUNK", 10)
    first: set[str] = set()

    def placed_after_the_first_chunk(count):
        if not first:
            first.update(e.record_id for e in services.store.iter_catalog(state="purged"))
            with services.sessions.begin() as session:
                add_hold(session, "customer", "C1", "litigation", utcnow())

    report = disposal.dispose_due_records(
        services.sessions, services.store, services.config.retention, AS_OF, utcnow(),
        on_purged=placed_after_the_first_chunk)

    held = {f"D-{i:03d}" for i in range(40) if i % 4 == 1}
    purged = {e.record_id for e in services.store.iter_catalog(state="purged")}
    assert len(first) == 10 and held - first  # the hold came with held records still due
    assert purged & held == first & held  # only what the first chunk took before the hold
    assert report.purged == len(purged) == 40 - len(held - first)
    assert {d.record_id for d in _listed(services)} == purged


def test_a_run_stops_between_chunks_when_asked(services, archived, make_record, monkeypatch):
    import indexer.jobs.disposal as disposal

    archived(*_old(make_record, 30))
    monkeypatch.setattr(disposal, "PURGE_CHUNK", 10)
    report = disposal.dispose_due_records(
        services.sessions, services.store, services.config.retention, AS_OF, utcnow(),
        should_stop=lambda: True)
    assert report.purged == 10
    assert len(list(services.store.iter_catalog(state="archived"))) == 20


def test_disposal_runs_take_turns_and_the_list_holds_every_purge(
    services, archived, make_record
):
    """A second run must not take a live run's unconfirmed list rows for a crashed run's:
    runs take turns on the store's disposal lock."""
    import threading

    from indexer.jobs.disposal import dispose_due_records

    archived(*_old(make_record, 20))
    done = threading.Event()

    def run():
        dispose_due_records(services.sessions, services.store, services.config.retention,
                            AS_OF, utcnow())
        done.set()

    with services.store.disposing():  # another run holds it
        thread = threading.Thread(target=run)
        thread.start()
        assert not done.wait(1.0)
    thread.join(60)
    assert done.is_set()
    purged = {e.record_id for e in services.store.iter_catalog(state="purged")}
    assert len(purged) == 20 and {d.record_id for d in _listed(services)} == purged


def test_a_record_being_restored_is_not_purged(services, archived, make_record):
    """Restore and disposal race: the restore's mark keeps the record whole, so it is back in
    the active database and nowhere listed as purged, never both."""
    archived(*_old(make_record, 2))
    assert services.store.begin_restores([["D-000"]]) == [None]
    assert services.store.purge(["D-000", "D-001"], utcnow(), "disposal") == 1
    assert services.store.info("D-000").state == "archived"
    services.store.complete_restores(["D-000"], utcnow(), "admin")
    assert services.store.info("D-000").state == "restored"
    assert services.store.info("D-001").state == "purged"


def test_a_database_from_before_the_category_index_gains_it_at_start(services):
    """The category filter reads the list's spellings of a category through an index: a
    database made before it has it added when an installation opens it."""
    from sqlalchemy import inspect

    from indexer.services import Services

    with services.engine.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_disposals_category")
    with Services.open(services.config) as again:
        names = {i["name"] for i in inspect(again.engine).get_indexes("disposals")}
    assert "ix_disposals_category" in names
