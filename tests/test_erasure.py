"""Erasure on request: a customer's archived text leaves every file Archivist keeps."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archive_store.segment import iter_frames
from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.holds import add_hold
from archivist.importer import import_lines
from indexer.jobs.erasure import (
    OnHold,
    append_ledger,
    apply_erasure_ledger,
    erase_records,
    ledger_path,
    load_ledger,
)
from indexer.jobs.indexing import sync_index
from indexer.jobs.restore import restore_record
from indexer.jobs.verification import verify_all
from indexer.search import SearchQuery
from indexer.services import Services
from tests.test_cli import archivist

MARKER = b"zorblaxquintle"
EMAIL = b"erin.erasure@example.org"
RESTORED_MARKER = b"quoffelbrandt"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    """Every file under a folder whose bytes contain `needle` (what `grep -r` would find)."""
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-shm",))
    }


@pytest.fixture
def erasable(services: Services, archived: Any, make_record: Any) -> dict[str, Any]:
    """Other customers' records, and customer C-ERASE's with a marker word and an e-mail address;
    one of theirs was archived and then restored (its archived version stays in the segments)."""
    others = [
        make_record(id=f"O-{i:03d}", customer_id=f"C{i % 7:03d}",
                    body=f"Parcel {i} arrived damaged; refund approved by agent {i % 5}.")
        for i in range(60)
    ]
    theirs = [
        make_record(id=f"E-{i:03d}", customer_id="C-ERASE", subject=f"Call {i}",
                    body=f"Customer {EMAIL.decode()} mentioned {MARKER.decode()} again.")
        for i in range(5)
    ]
    restored = make_record(id="E-RST", customer_id="C-ERASE",
                           body=f"Note {RESTORED_MARKER.decode()} for {EMAIL.decode()}")
    archived(*others, *theirs, restored)
    restore_record(services.sessions, services.store, services.index, "E-RST", "admin", NOW)
    sync_index(services.store, services.index)
    return {"theirs": [r["id"] for r in theirs], "restored": "E-RST", "make": make_record}


def test_erasing_a_customer_no_record_has_or_had_warns_of_a_typo(
    services: Services, archived: Any, make_record: Any, config_path: Path
) -> None:
    """As a hold on a value that matches nothing does: `erased 0` alone reads as done."""
    archived(make_record(id="T-GONE", customer_id="C-GONE"))
    recent = {"created_at": "2026-05-01T00:00:00Z", "updated_at": "2026-05-02T00:00:00Z"}
    line = json.dumps({**make_record(id="T-ACTIVE", customer_id="C-ACTIVE"), **recent})
    assert import_lines([line.encode()], services.sessions, services.store.find_archived
                        ).rejected == 0
    still = "still active: 0 record(s) of this customer in the active database (the CRM's to erase)"

    def erase(customer: str, *args: str) -> tuple[list[str], str]:
        result = archivist("erase", "--customer", customer, "--reason", "asked", *args,
                           "--config", str(config_path))
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines(), result.stderr

    for args, outcome in ((["--dry-run"], "would be"), ([], "was")):
        out, err = erase("C-1O42", *args)  # a letter O for the zero
        assert out == ["would erase 0" if args else "erased 0", still]
        assert err.splitlines() == [
            "warning: No record, archived or active, has that customer ('C-1O42') now or had it "
            f"before, so nothing {outcome} erased: check the value for a typo or an invisible "
            "character pasted with it."
        ]
    assert erase("C-GONE", "--dry-run") == (["would erase 1", still], "")
    assert erase("C-ACTIVE", "--dry-run")[1] == ""  # active only: the CRM's, but known
    assert erase("C-GONE") == (["erased 1", still], "")
    assert erase("C-GONE") == (["erased 0", still], "")  # erased before: the ledger knows


def test_archived_text_is_not_in_the_archive_folder(services: Services, erasable: Any) -> None:
    archive = services.config.archive_dir
    assert services.store.get("E-000")["body"].count(MARKER.decode()) == 1
    assert files_holding(archive, MARKER) == []
    assert files_holding(archive, EMAIL) == []


def test_erasing_a_customer_leaves_no_trace_in_any_file(
    services: Services, erasable: Any, config_path: Path
) -> None:
    result = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR request 17",
                       "--config", str(config_path))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "erased 6"
    assert "still active: 1 record(s)" in lines[1]  # E-RST, restored, is the CRM's to erase
    data = config_path.parent / "data"
    for folder in (services.config.archive_dir, services.config.index_dir):
        assert files_holding(folder, MARKER) == []
        assert files_holding(folder, EMAIL) == []
        assert files_holding(folder, RESTORED_MARKER) == []
        assert files_holding(folder, MARKER[:-1]) == []  # the index keeps stems: zorblaxquintl
    # the database folder: the active copy of E-RST holds the e-mail, but no erased text does
    assert files_holding(data, MARKER) == []
    with Services.open(services.config) as fresh:
        assert fresh.index.search(SearchQuery(q=MARKER.decode())).total == 0
        assert fresh.index.search(SearchQuery(customer_id="C-ERASE")).total == 0
        assert fresh.index.search(SearchQuery(q="refund")).total == 60
        result_verify = verify_all(fresh)
        assert result_verify.problems == []
        info = fresh.store.info("E-000")
        assert info.state == "erased" and info.customer_id is None
        assert [e.event for e in fresh.store.history("E-RST")] == [
            "archived", "restored", "erased"
        ]
    assert archivist("verify", "--config", str(config_path)).returncode == 0


def test_a_hold_whose_reason_names_the_customer_keeps_holding_without_the_words(
    services: Services, erasable: Any, config_path: Path
) -> None:
    """The audited placing of such a hold was blanked, yet the hold itself kept the words
    (`GET /holds`, the holds page, active.db), and a recovery brought them back."""
    from sqlalchemy import select

    from archivist.active_db import LegalHold
    from archivist.audit import AuditFilter, list_audit
    from archivist.holds import list_holds

    reason = f"complaint by {EMAIL.decode()} about {MARKER.decode()}"
    with services.sessions.begin() as session:
        add_hold(session, "record", "O-001", reason, utcnow())
        add_hold(session, "category", "billing", "tax audit 2026", utcnow())
    result = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR request 17",
                       "--config", str(config_path))

    assert result.returncode == 0, result.stderr
    with services.read_sessions.begin() as session:
        holds = {(h.scope, h.value): h.reason for h in list_holds(session)}
        [entry] = list_audit(session, AuditFilter(action="erase")).entries
    assert holds == {("record", "O-001"): "(erased)", ("category", "billing"): "tax audit 2026"}
    assert entry.details["hold_reasons_erased"] == 1
    assert files_holding(config_path.parent / "data", MARKER) == []
    # A recovered database holds the hold as it was: the ledger erases its reason again.
    with services.sessions.begin() as session:
        session.scalars(select(LegalHold).where(LegalHold.value == "O-001")).one().reason = reason
    assert apply_erasure_ledger(services, NOW) == 0
    with services.read_sessions.begin() as session:
        assert {h.value: h.reason for h in list_holds(session)}["O-001"] == "(erased)"


@pytest.fixture
def few_among_many(services: Services, archived: Any, make_record: Any) -> list[str]:
    """60 finance records (kept 7 years) and, in the same index segment, 5 support records
    (kept 5) of customer C-ERASE with the marker: few enough that removing them alone does
    not make the merge policy rewrite their segment."""
    archived(
        *[make_record(id=f"F-{i:03d}", category="finance", customer_id=f"C{i % 7:03d}",
                      body=f"Invoice {i} paid; refund declined.") for i in range(60)],
        *[make_record(id=f"S-{i}", customer_id="C-ERASE",
                      body=f"Customer {EMAIL.decode()} mentioned {MARKER.decode()}.")
          for i in range(5)],
    )
    assert files_holding(services.config.index_dir, MARKER[:-1])  # the index keeps stems
    return [f"S-{i}" for i in range(5)]


def test_disposal_takes_the_records_words_out_of_the_index_files_too(
    services: Services, few_among_many: list[str]
) -> None:
    """A removed document's words stay in its index segment until the segment is rewritten:
    disposal rewrites the segments that held what it purged."""
    from indexer.jobs.runs import run_dispose_job

    report = run_dispose_job(services, NOW, actor="cli")  # support is due, finance is not
    assert report.purged == 5
    assert files_holding(services.config.index_dir, MARKER[:-1]) == []
    assert files_holding(services.config.index_dir, EMAIL) == []
    assert services.index.search(SearchQuery(q="refund")).total == 60
    assert verify_all(services).problems == []


def test_erasing_a_customer_whose_records_were_disposed_of_scrubs_the_index_files(
    services: Services, few_among_many: list[str]
) -> None:
    """Purged (their content gone from the store), but their words may still be in index
    segments, as deleted documents: the customer's erasure rewrites those segments too."""
    services.store.purge(few_among_many, utcnow(), "disposal")
    sync_index(services.store, services.index)  # out of search, still in the files
    assert files_holding(services.config.index_dir, MARKER[:-1])

    report = erase_records(services, customer_id="C-ERASE", actor="admin", at=NOW)
    assert report.ids == []  # nothing of theirs was left in the store to erase
    assert files_holding(services.config.index_dir, MARKER[:-1]) == []
    assert files_holding(services.config.index_dir, EMAIL) == []
    assert services.index.search(SearchQuery(q="refund")).total == 60


def test_an_erasure_while_the_archive_job_stages_index_segments_leaves_no_words_behind(
    services: Services, archived: Any, make_record: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive job writes new index segments without a lock: records erased meanwhile
    are in them. Attached, they are only marked deleted there, so the job rewrites them."""
    from indexer.whoosh.index import SearchIndex

    stage = SearchIndex.stage

    def stage_then_erase(self: SearchIndex, docs: Any, **kwargs: Any) -> Any:
        staged = stage(self, docs, **kwargs)
        erase_records(services, customer_id="C-LATE", actor="admin", at=NOW)
        return staged

    monkeypatch.setattr(SearchIndex, "stage", stage_then_erase)
    archived(
        *[make_record(id=f"L-{i}", customer_id="C-LATE", body=f"{MARKER.decode()} {i}")
          for i in range(3)],
        *[make_record(id=f"K-{i:03d}", body=f"refund {i}") for i in range(60)],
    )
    monkeypatch.undo()
    assert {services.store.info(f"L-{i}").state for i in range(3)} == {"erased"}
    assert files_holding(services.config.index_dir, MARKER[:-1]) == []
    assert services.index.search(SearchQuery(q="refund")).total == 60
    assert verify_all(services).problems == []


def test_an_erasure_while_the_index_is_rebuilt_leaves_no_words_in_the_new_index(
    services: Services, erasable: Any, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild reads the store without a lock and swaps its new index in at the end: an
    erasure in between (another process) rewrote the old index only, so the rebuild scrubs
    the new one of what was purged or erased since it began reading."""
    import indexer.jobs.indexing as indexing
    from indexer.jobs.indexing import rebuild_index

    read = indexing._with_processes

    def read_then_erase(store: Any, docs: Any) -> Any:
        yield from read(store, docs)  # every record read, the new index not swapped in yet
        result = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR",
                           "--config", str(config_path))
        assert result.returncode == 0, result.stderr

    monkeypatch.setattr(indexing, "_with_processes", read_then_erase)
    rebuild_index(services.store, services.index)
    assert services.store.info("E-000").state == "erased"
    assert files_holding(services.config.index_dir, MARKER[:-1]) == []
    assert files_holding(services.config.index_dir, RESTORED_MARKER[:-1]) == []
    assert services.index.search(SearchQuery(q="refund")).total == 60
    assert verify_all(services).problems == []


def test_erase_dry_run_changes_nothing(services: Services, erasable: Any) -> None:
    before = folder_digest(services.config.archive_dir / "segments")
    report = erase_records(services, customer_id="C-ERASE", actor="t", at=NOW, dry_run=True)
    assert (report.erased, report.dry_run, report.active_remaining) == (6, True, 1)
    assert sorted(report.ids) == sorted([*erasable["theirs"], "E-RST"])
    assert folder_digest(services.config.archive_dir / "segments") == before
    assert services.store.info("E-000").state == "archived"


def test_held_customer_is_refused_and_nothing_changes(services: Services, erasable: Any) -> None:
    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-ERASE", "litigation", utcnow())
    before = folder_digest(services.config.archive_dir / "segments")

    with pytest.raises(OnHold):
        erase_records(services, customer_id="C-ERASE", actor="t", at=NOW)

    assert folder_digest(services.config.archive_dir / "segments") == before
    assert services.store.info("E-000").state == "archived"
    assert services.index.search(SearchQuery(q=MARKER.decode())).total == 5
    assert not ledger_path(services.config.key_file).exists()


def test_a_hold_on_another_record_of_the_process_refuses_the_erasure(
    services: Services, archived: Any, make_record: Any
) -> None:
    case = make_record(id="P-CASE", customer_id="C-OTHER", body="case of a shared process")
    message = make_record(id="P-MSG", customer_id="C-ERASE2", parent_id="P-CASE",
                          body=f"message {MARKER.decode()}")
    archived(case, message)
    with services.sessions.begin() as session:
        add_hold(session, "record", "P-CASE", "litigation", utcnow())

    with pytest.raises(OnHold, match="P-CASE"):
        erase_records(services, customer_id="C-ERASE2", actor="t", at=NOW)

    assert services.store.info("P-MSG").state == "archived"
    assert services.index.search(SearchQuery(q=MARKER.decode())).total == 1



def test_erasing_a_customer_takes_the_records_of_their_processes_that_name_no_customer(
    services: Services, archived: Any, make_record: Any
) -> None:
    """A case's messages and notes often name no customer (the CRM keeps the customer on the
    case): they are the customer's of their nearest ancestor naming one. A record of the
    process naming another customer is that customer's, and stays."""
    case = make_record(id="P-CASE", customer_id="C-PROC", body="a case")
    message = make_record(id="P-MSG", customer_id=None, parent_id="P-CASE",
                          body=f"from {EMAIL.decode()}: {MARKER.decode()}")
    note = make_record(id="P-NOTE", customer_id=None, parent_id="P-MSG",
                       body=f"note on {MARKER.decode()}")
    theirs = make_record(id="P-OTHER", customer_id="C-ELSE", parent_id="P-CASE",
                         body="another customer's reply, quoffelbrandt")
    unrelated = make_record(id="U-1", customer_id=None, body="no customer, no process")
    recent = {"created_at": "2025-12-01T00:00:00Z", "updated_at": "2025-12-30T00:00:00Z"}
    live_case = make_record(id="L-CASE", customer_id="C-PROC", **recent)
    live_message = make_record(id="L-MSG", customer_id=None, parent_id="L-CASE", **recent)
    archived(case, message, note, theirs, unrelated, live_case, live_message)
    folders = [services.config.archive_dir, services.config.index_dir]

    dry = erase_records(services, customer_id="C-PROC", actor="t", at=NOW, dry_run=True)
    report = erase_records(services, customer_id="C-PROC", actor="t", at=NOW)

    assert sorted(dry.ids) == sorted(report.ids) == ["P-CASE", "P-MSG", "P-NOTE"]
    assert dry.active_remaining == report.active_remaining == 2  # the live case, its message
    assert {i: services.store.info(i).state for i in ("P-OTHER", "U-1")} == {
        "P-OTHER": "archived", "U-1": "archived"}
    assert [p for f in folders for p in files_holding(f, MARKER)] == []
    assert [p for f in folders for p in files_holding(f, EMAIL)] == []
    assert services.index.search(SearchQuery(q=MARKER.decode())).total == 0
    assert services.index.search(SearchQuery(q="quoffelbrandt")).total == 1
    assert verify_all(services).problems == []


def test_after_a_record_is_erased_alone_the_records_below_it_stay_its_customer_s(
    services: Services, archived: Any, make_record: Any
) -> None:
    """An erased record forgets its customer; the records below it that name none stay that
    customer's, and never become the customer's above it."""
    archived(make_record(id="W-CASE", customer_id="D", body="a case of D's"),
             make_record(id="W-TKT", customer_id="C", parent_id="W-CASE", body="C's ticket"),
             make_record(id="W-NOTE", customer_id=None, parent_id="W-TKT", body="a note"))
    erase_records(services, record_id="W-TKT", actor="t", at=NOW)

    def would_erase(customer: str) -> list[str]:
        return erase_records(services, customer_id=customer, actor="t", at=NOW,
                             dry_run=True).ids

    assert would_erase("C") == ["W-NOTE"]
    assert would_erase("D") == ["W-CASE"]


def test_records_below_an_erased_one_stay_its_customer_s_when_archived_again(
    services: Services, archived: Any, make_record: Any
) -> None:
    """Restored and archived again, the records below an erased record still name no
    customer themselves and no longer reach one above: they keep the customer they were
    handed, so that customer's erasure still takes them."""
    from indexer.jobs.restore import restore_process
    from indexer.jobs.runs import run_archive_job

    archived(make_record(id="Q-CASE", customer_id="C-Q", body="a case"),
             make_record(id="Q-MSG", customer_id=None, parent_id="Q-CASE",
                         body=f"write to {EMAIL.decode()}"),
             make_record(id="Q-NOTE", customer_id=None, parent_id="Q-MSG", body="a note"))
    erase_records(services, record_id="Q-CASE", actor="t", at=NOW)
    restore_process(services.sessions, services.store, services.index, "Q-NOTE", "t", NOW)
    run_archive_job(services, NOW + timedelta(days=800))  # past the restore grace: again
    assert {services.store.info(i).version for i in ("Q-MSG", "Q-NOTE")} == {2}

    report = erase_records(services, customer_id="C-Q", actor="t", at=NOW)
    assert report.ids == ["Q-MSG", "Q-NOTE"]
    assert files_holding(services.config.archive_dir, EMAIL) == []
    assert files_holding(services.config.index_dir, EMAIL) == []


def test_an_erasure_counts_the_records_a_restore_brought_back_while_it_began(
    services: Services, erasable: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore that ends after the erasure counted the active records (and before it
    erased): those records are the CRM's to erase too, and the count says so."""
    from archive_store import ArchiveStore

    erase = ArchiveStore.erase

    def restore_first(self: ArchiveStore, *args: Any, **kwargs: Any) -> Any:
        restore_record(services.sessions, services.store, services.index, "E-000", "t", NOW)
        return erase(self, *args, **kwargs)

    monkeypatch.setattr(ArchiveStore, "erase", restore_first)
    report = erase_records(services, customer_id="C-ERASE", actor="admin", at=NOW)
    assert report.erased == 6
    assert report.active_remaining == 2  # E-RST, and E-000 restored meanwhile


def test_an_erasure_refused_for_a_move_under_way_is_not_finished_later(
    services: Services, erasable: Any
) -> None:
    from archive_store import RestoreInProgress
    from indexer.jobs.erasure import _erase, _plan, finish_interrupted_erasures, load_ledger

    # A restore that begins once the erasure has planned (a mark found while planning is
    # settled first, waiting for a move under way to end): the store refuses the erasure.
    plan = _plan(services, "C-ERASE", None)
    services.store.begin_restore("E-000")
    with pytest.raises(RestoreInProgress):
        _erase(services, plan, "C-ERASE", None, "admin", NOW,
               ledger_path(services.config.key_file))
    services.store.abort_restore("E-000")

    assert finish_interrupted_erasures(services, NOW) == 0
    assert {services.store.info(i).state for i in erasable["theirs"]} == {"archived"}
    ledger = load_ledger(ledger_path(services.config.key_file))
    assert ledger[-1] == {"done": ledger[0]["id"], "refused": "restore_in_progress"}
    # A recovery applies the ledger: this erasure erased nothing, so it erases nothing there.
    assert apply_erasure_ledger(services, NOW) == 0
    assert {services.store.info(i).state for i in erasable["theirs"]} == {"archived"}


def test_an_interrupted_erasure_is_not_finished_over_a_hold_placed_since(
    services: Services, erasable: Any
) -> None:
    """A hold refuses an erasure with nothing erased; one that stopped half-way and was held
    since is not finished either (the finisher says so in the audit log and the ledger)."""
    from archivist.audit import AuditFilter, list_audit
    from indexer.jobs.erasure import finish_interrupted_erasures

    path = ledger_path(services.config.key_file)
    append_ledger(path, {  # what an erasure ledgers first, before the process died
        "id": "e1", "at": NOW.isoformat(), "seq": services.store.last_seq(),
        "head": services.store.entry_hash_at(services.store.last_seq()),
        "customer_sha256": None,
        "records": [[i, sha] for i, sha in services.store.hashes(erasable["theirs"][:2]).items()],
        "audit": [],
    })
    with services.sessions.begin() as session:
        add_hold(session, "record", erasable["theirs"][1], "litigation", utcnow())

    assert finish_interrupted_erasures(services, NOW) == 0
    assert {services.store.info(i).state for i in erasable["theirs"][:2]} == {"archived"}
    assert load_ledger(path)[-1] == {"done": "e1", "on_hold": True}
    with services.read_sessions.begin() as session:
        [entry] = list_audit(session, AuditFilter(action="erase")).entries
    assert entry.outcome == "on_hold"
    assert entry.details["held"] == erasable["theirs"][1]
    assert finish_interrupted_erasures(services, NOW) == 0  # done: not tried again
    # Nor by a recovery: the held records were never erased.
    assert apply_erasure_ledger(services, NOW) == 0
    assert {services.store.info(i).state for i in erasable["theirs"][:2]} == {"archived"}


def test_an_erasure_killed_after_the_store_is_finished_by_the_next_index_catch_up(
    services: Services, erasable: Any, config_path: Path
) -> None:
    """Killed between the store and the index, an erasure left the customer's records
    searchable (by their words, by `customer_id`) until the next archive run, a day away."""
    import signal

    killed = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR request 17",
                       "--config", str(config_path),
                       env={"ARCHIVIST_CRASH_AT": "erase.after_store:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    caught_up = archivist("index", "--config", str(config_path))  # what the worker runs
    assert caught_up.returncode == 0, caught_up.stderr

    with Services.open(services.config) as fresh:
        assert fresh.index.search(SearchQuery(q=MARKER.decode())).total == 0
        assert fresh.index.search(SearchQuery(customer_id="C-ERASE")).total == 0
    assert files_holding(services.config.index_dir, MARKER) == []
    ledger = load_ledger(ledger_path(services.config.key_file))
    assert ledger[-1] == {"done": ledger[0]["id"]}


def test_erase_api_and_the_record_view(client: Any, admin_headers: Any, erasable: Any) -> None:
    held = client.post("/api/v1/erase", headers=admin_headers,
                       json={"record_id": "E-001", "reason": "asked", "dry_run": True})
    assert held.status_code == 200
    assert held.json == {"erased": 1, "ids": ["E-001"], "active_remaining": 1, "dry_run": True}

    done = client.post("/api/v1/erase", headers=admin_headers,
                       json={"record_id": "E-001", "reason": "asked"})
    view = client.get("/api/v1/records/E-001", headers=admin_headers).json

    assert done.json["erased"] == 1 and done.json["dry_run"] is False
    assert view["record"] is None and view["archive"]["state"] == "erased"
    assert [h["event"] for h in view["history"]] == ["archived", "erased"]
    # named for what it was: erased, not disposed of
    assert view["archive"]["purged_at"] is None
    assert view["archive"]["erased_at"] == view["history"][-1]["at"]
    assert view["process"] == {"root": "E-001", "records": [
        {"id": "E-001", "parent_id": None, "kind": None, "subject": None, "state": "erased"}
    ]}
    bad = client.post("/api/v1/erase", headers=admin_headers, json={"reason": "no target"})
    assert bad.status_code == 400 and bad.json["error"]["code"]
    audit = client.get("/api/v1/audit?action=erase", headers=admin_headers).json
    details = [e["details"] for e in audit["entries"] if e["outcome"] == "ok"]
    assert any(d.get("erased") == 1 and len(d["sha256"]) == 1 for d in details)
    assert MARKER.decode() not in json.dumps(audit)


def test_erase_api_refuses_a_held_record_with_409(
    client: Any, admin_headers: Any, services: Services, erasable: Any
) -> None:
    with services.sessions.begin() as session:
        add_hold(session, "record", "E-002", "litigation", utcnow())
    response = client.post("/api/v1/erase", headers=admin_headers,
                           json={"customer_id": "C-ERASE", "reason": "asked"})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "on_hold"
    assert services.store.info("E-002").state == "archived"


def test_ledger_erases_again_what_a_recovered_copy_brings_back(
    services: Services, erasable: Any, tmp_path: Path
) -> None:
    # A copy of the archive and index taken before the erasure, as a backup would hold them.
    import shutil

    saved = tmp_path / "saved"
    shutil.copytree(services.config.archive_dir, saved / "archive")
    shutil.copytree(services.config.index_dir, saved / "index")
    erase_records(services, customer_id="C-ERASE", actor="t", at=NOW)
    ledger = ledger_path(services.config.key_file).read_text()
    assert MARKER.decode() not in ledger and "C-ERASE" not in ledger
    config = services.config
    services.close()
    shutil.rmtree(config.archive_dir)
    shutil.rmtree(config.index_dir)
    shutil.copytree(saved / "archive", config.archive_dir)
    shutil.copytree(saved / "index", config.index_dir)

    with Services.open(config) as recovered:
        assert recovered.store.info("E-000").state == "archived"  # the old copy is back
        assert apply_erasure_ledger(recovered, NOW) == 6
        assert recovered.index.search(SearchQuery(q=MARKER.decode())).total == 0
        assert verify_all(recovered).problems == []
    for folder in (config.archive_dir, config.index_dir):
        assert files_holding(folder, MARKER) == []
        assert files_holding(folder, EMAIL) == []


def audited_searches(client: Any, headers: dict[str, str]) -> None:
    """An agent's searches: by the marker, the e-mail address, the customer, and a common word."""
    for params in ({"q": MARKER.decode()}, {"q": f"from {EMAIL.decode()}"},
                   {"customer_id": "C-ERASE"}, {"q": "refund"}):
        assert client.get("/api/v1/search", headers=headers, query_string=params).status_code == 200
    assert client.get("/api/v1/audit", headers=headers).status_code == 200  # waits for them


def search_entries(services: Services) -> list[Any]:
    from archivist.active_db import AuditEntry

    with services.read_sessions.begin() as session:
        return [
            (e.seq, e.target, json.loads(e.details)) for e in session.query(AuditEntry)
            .filter(AuditEntry.action == "search").order_by(AuditEntry.seq)
        ]


def test_a_torn_ledger_line_is_ended_and_skipped_not_fatal(tmp_path: Path) -> None:
    """A crash (or a full disk) mid-append leaves part of a line: the next append starts a new
    line, and reading the ledger skips the torn one rather than stopping every later job."""
    path = tmp_path / "archive.key.erasures"
    append_ledger(path, {"id": "a", "records": [["R-1", "0" * 64]]})
    with path.open("ab") as f:
        f.write(b'{"id": "b", "records": [["R-2"')  # torn
    append_ledger(path, {"done": "a"})
    assert load_ledger(path) == [{"id": "a", "records": [["R-1", "0" * 64]]}, {"done": "a"}]


def test_audited_searches_that_named_the_customer_are_blanked(
    client: Any, admin_headers: Any, services: Services, erasable: Any, config_path: Path
) -> None:
    audited_searches(client, admin_headers)
    before = search_entries(services)
    assert [t for _, t, _ in before] == [MARKER.decode(), f"from {EMAIL.decode()}", "", "refund"]
    data = config_path.parent / "data"
    assert files_holding(data, MARKER) != []  # the audit log holds what was typed

    done = client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-ERASE", "reason": "GDPR request 18"})

    assert done.status_code == 200 and done.json["erased"] == 6
    after = search_entries(services)
    assert [(t, d) for _, t, d in after[:3]] == [("(erased)", {"erased": True})] * 3
    assert after[3][1] == "refund" and after[3][2]["q"] == "refund"  # names no one: kept
    assert files_holding(data, MARKER) == []
    audit = client.get("/api/v1/audit?action=erase", headers=admin_headers).json
    listing = [e["details"] for e in audit["entries"] if "audit_blanked" in e["details"]]
    assert [d["audit_blanked"] for d in listing] == [[seq for seq, _, _ in before[:3]]]
    assert sorted(listing[0]["audit_blanked_kept"]) == sorted(str(s) for s, _, _ in before[:3])
    assert any(e["details"].get("audit_entries_blanked") == 3 for e in audit["entries"])
    assert verify_all(services).problems == []
    ledger = ledger_path(services.config.key_file).read_text()
    assert MARKER.decode() not in ledger and EMAIL.decode() not in ledger



def test_prefix_and_partial_words_and_earlier_versions_are_blanked_too(
    client: Any, admin_headers: Any, services: Services, erasable: Any, archived: Any,
    make_record: Any,
) -> None:
    from archivist.active_db import ActiveRecord
    from indexer.jobs.runs import run_archive_job

    archived(make_record(id="E-OLD", customer_id="C-ERASE", body="Ask for plumbrickton again."))
    restore_record(services.sessions, services.store, services.index, "E-OLD", "admin", NOW)
    with services.sessions.begin() as session:
        session.get(ActiveRecord, "E-OLD").body = "Nothing to say."
    after_grace = utcnow() + timedelta(days=366)
    assert run_archive_job(services, after_grace).archived == 2  # E-OLD and E-RST, again
    sync_index(services.store, services.index)
    assert services.store.info("E-OLD").version == 2
    assert services.store.info("E-OLD").version == 2
    naming = ["zorblax*", "zorbl?xquintle", "erin.erasure", "plumbrickton"]
    kept = ["refu*", "zorblax"]  # others' words; and not a whole word of theirs
    for q in naming + kept:
        assert client.get("/api/v1/search", headers=admin_headers,
                          query_string={"q": q}).status_code == 200
    assert client.get("/api/v1/audit", headers=admin_headers).status_code == 200

    done = client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-ERASE", "reason": "asked"})

    assert done.status_code == 200 and done.json["erased"] == 7
    assert [t for _, t, _ in search_entries(services)] == ["(erased)"] * len(naming) + kept
    data = Path(services.engine.url.database or "").parent
    assert files_holding(data, b"plumbrickton") == []
    assert verify_all(services).problems == []


def test_a_blanked_audit_entry_no_erasure_lists_breaks_the_chain(
    client: Any, admin_headers: Any, services: Services, erasable: Any
) -> None:
    from archivist.audit import blank_entries

    audited_searches(client, admin_headers)
    seq, _, _ = search_entries(services)[3]
    with services.sessions.begin() as session:
        from archivist.active_db import AuditEntry

        entry_hash = session.get(AuditEntry, seq).entry_hash
        assert blank_entries(session, [(seq, entry_hash)]) == [seq]
        assert blank_entries(session, [(seq - 1, "0" * 64)]) == []  # not the listed entry
    assert [p.reason for p in verify_all(services).problems] == [
        f"audit log: entry {seq} was blanked, and no erasure lists it"
    ]


def test_what_a_blanked_entry_keeps_is_still_checked(
    client: Any, admin_headers: Any, services: Services, erasable: Any
) -> None:
    from archivist.active_db import AuditEntry

    audited_searches(client, admin_headers)
    seq, _, _ = search_entries(services)[0]
    assert client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-ERASE", "reason": "asked"}).status_code == 200
    assert search_entries(services)[0][1] == "(erased)"
    assert verify_all(services).problems == []
    with services.sessions.begin() as session:  # its actor, action and outcome are rewritten
        entry = session.get(AuditEntry, seq)
        entry.actor, entry.action, entry.outcome = "auditor", "read", "forbidden"
    assert [p.reason for p in verify_all(services).problems] == [
        f"audit log: entry {seq} was changed after it was blanked"
    ]


def test_restores_and_holds_that_named_the_customer_are_blanked(
    client: Any, admin_headers: Any, services: Services, erasable: Any, config_path: Path
) -> None:
    from archivist.active_db import AuditEntry

    hold = {"scope": "customer", "value": "C-ERASE",
            "reason": f"complaint by {EMAIL.decode()}"}
    assert client.post("/api/v1/holds", json=hold, headers=admin_headers).status_code == 201
    assert client.delete("/api/v1/holds/customer/C-ERASE",
                         headers=admin_headers).status_code in (200, 204)
    other_hold = {"scope": "customer", "value": "C001", "reason": "litigation 7"}
    assert client.post("/api/v1/holds", json=other_hold, headers=admin_headers).status_code == 201
    # a category names no one, even one whose name only their text holds ("Call 3")
    category_hold = {"scope": "category", "value": "call", "reason": "regulator 2024"}
    assert client.post("/api/v1/holds", json=category_hold,
                       headers=admin_headers).status_code == 201
    for search in ({"q": MARKER.decode()}, {"customer_id": "C-ERASE"}, {"q": "refund"}):
        body = {"search": search, "reason": "checking", "dry_run": True}
        assert client.post("/api/v1/restore", json=body,
                           headers=admin_headers).status_code == 200
    body = {"ids": ["O-001"], "reason": f"asked by {EMAIL.decode()}", "dry_run": True}
    assert client.post("/api/v1/restore", json=body, headers=admin_headers).status_code == 200

    def entries() -> list[tuple[str, str]]:
        with services.read_sessions.begin() as session:
            return [(e.action, e.target) for e in session.query(AuditEntry).filter(
                AuditEntry.action.in_(("restore", "hold_add", "hold_remove"))
            ).order_by(AuditEntry.seq)]

    assert client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-ERASE", "reason": "asked"}).status_code == 200

    assert entries() == [
        ("hold_add", "(erased)"), ("hold_remove", "(erased)"), ("hold_add", "customer:C001"),
        ("hold_add", "category:call"),
        ("restore", "(erased)"), ("restore", "(erased)"), ("restore", "search"),
        ("restore", "(erased)"),
    ]
    data = config_path.parent / "data"
    assert files_holding(data, MARKER) == []
    with services.read_sessions.begin() as session:  # (E-RST, active, still holds the address)
        assert not [e.seq for e in session.query(AuditEntry)
                    if EMAIL.decode() in e.target + e.details or "C-ERASE" in e.target]
    assert verify_all(services).problems == []


def test_command_line_restores_by_search_that_named_the_customer_are_blanked(
    services: Services, erasable: Any, config_path: Path
) -> None:
    """`archivist restore --search` audits the search as typed (a query string), not as the
    API's object: the erasure reads it too."""
    from archivist.active_db import AuditEntry

    for search in (f"q={MARKER.decode()}", "customer_id=C-ERASE", "q=refund"):
        run = archivist("restore", "--search", search, "--reason", "checking", "--dry-run",
                        "--config", str(config_path))
        assert run.returncode == 0, run.stderr

    erased = archivist("erase", "--customer", "C-ERASE", "--reason", "asked",
                       "--config", str(config_path))

    assert erased.returncode == 0, erased.stderr
    with services.read_sessions.begin() as session:
        restores = [json.loads(e.details).get("search") for e in session.query(AuditEntry)
                    .filter(AuditEntry.action == "restore").order_by(AuditEntry.seq)]
    assert restores == [None, None, "q=refund"]  # the first two blanked, the third kept
    assert files_holding(config_path.parent / "data", MARKER) == []


def test_a_recovered_copy_of_the_audit_log_is_blanked_again(
    app: Any, client: Any, admin_headers: Any, services: Services, erasable: Any, tmp_path: Path
) -> None:
    import shutil
    import sqlite3

    from server import close_app

    audited_searches(client, admin_headers)
    database = Path(services.engine.url.database or "")
    saved = tmp_path / "saved.db"
    source = sqlite3.connect(database)
    source.execute(f"VACUUM INTO '{saved}'")  # a consistent copy, as a backup takes it
    source.close()
    shutil.copytree(services.config.archive_dir, tmp_path / "saved-archive")
    assert client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-ERASE", "reason": "asked"}).status_code == 200
    config = services.config
    services.close()
    close_app(app)
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    shutil.copyfile(saved, database)
    shutil.rmtree(config.archive_dir)
    shutil.copytree(tmp_path / "saved-archive", config.archive_dir)
    assert files_holding(database.parent, MARKER) != []

    with Services.open(config) as recovered:
        assert apply_erasure_ledger(recovered, NOW) == 6
        entries = search_entries(recovered)
        assert [t for _, t, _ in entries] == ["(erased)", "(erased)", "(erased)", "refund"]
        assert verify_all(recovered).problems == []
    assert files_holding(database.parent, MARKER) == []


def test_chinese_names_and_words_of_records_naming_no_customer_are_blanked_too(
    client: Any, admin_headers: Any, services: Services, archived: Any, make_record: Any
) -> None:
    others = [make_record(id=f"O-{i}", customer_id="C-OTHER", body="客户要求退款。")
              for i in range(3)]
    case = make_record(id="CASE-1", customer_id="C-LI", body="李伟 来电。")
    # a message of their case: it names no customer, and counts as theirs through the case
    message = make_record(id="MSG-1", customer_id=None, parent_id="CASE-1",
                          body="Reply to flurbix.q@example.net: 我们会处理退款。")
    archived(*others, case, message)
    for q in ("李伟", "退款", "flurbix.q@example.net"):
        assert client.get("/api/v1/search", headers=admin_headers,
                          query_string={"q": q}).json["total"] >= 1

    assert client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-LI", "reason": "asked"}).json["erased"] == 2

    assert [t for _, t, _ in search_entries(services)] == ["(erased)", "退款", "(erased)"]
    assert verify_all(services).problems == []


def test_the_erased_text_is_read_in_pieces_that_cut_no_word() -> None:
    """A large customer's words are gathered a piece of their text at a time; no piece ends
    inside a line, so no word is cut in two."""
    from indexer.jobs.erasure_audit import _pieces

    text = "\n".join(f"word{i} 退款{i} erin.k{i}@example.org" for i in range(100_000))
    pieces = list(_pieces(text, size=2**16))
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(piece.endswith("\n") for piece in pieces[:-1])
    words = {w for piece in pieces for w in piece.split()}
    assert words == set(text.split())


def test_the_words_of_an_audited_query() -> None:
    from indexer.jobs.erasure_audit import query_words

    details = json.dumps({"q": "ignored: the target is read", "customer_id": "C7"})
    words = query_words('subject:Zorb* "Li.Wei@example.com" +86 138 a wei~2 z?r* lin^2', details)
    assert words == {
        "subject", "zorb*", "li.wei@example.com", "138", "c7", "wei", "lin"
    } | {"ignored", "the", "target", "read"}  # `z?r*` has two letters only



def test_erasing_a_year_shards_last_records_leaves_search_and_verify_whole(
    services: Services, archived: Any, make_record: Any, client: Any, agent_headers: Any
) -> None:
    """A shard whose every document is erased has no segment left; search, verify and later
    additions to that year go on as with any other shard."""
    archived(
        make_record(id="Y-2019", customer_id="C-LONE", body="solitary walrus",
                    created_at="2019-03-01T00:00:00Z", updated_at="2019-03-02T00:00:00Z"),
        make_record(id="Y-2021", customer_id="C-OTHER", body="solitary heron",
                    created_at="2021-03-01T00:00:00Z", updated_at="2021-03-02T00:00:00Z"),
    )
    assert erase_records(services, customer_id="C-LONE", actor="t", at=NOW).erased == 1

    def search(q: str) -> dict[str, Any]:
        response = client.get("/api/v1/search", query_string={"q": q}, headers=agent_headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    found = search("solitary")
    assert [h["id"] for h in found["hits"]] == ["Y-2021"]
    assert found["facets"]["year"] == {"2021": 1}
    assert search("walrus")["total"] == 0
    assert verify_all(services).problems == []
    archived(make_record(id="Y-2019b", customer_id="C-NEW", body="solitary walrus again",
                         created_at="2019-04-01T00:00:00Z", updated_at="2019-04-02T00:00:00Z"))
    assert [h["id"] for h in search("walrus")["hits"]] == ["Y-2019b"]
    assert search("solitary")["facets"]["year"] == {"2019": 1, "2021": 1}
    assert verify_all(services).problems == []


def cli_steps(tmp_path: Path, config_path: Path) -> tuple[Callable[..., str], Callable[..., None]]:
    """`cli(*args, config=...)` runs a command that must succeed and returns its output;
    `imported(name, *records)` writes the records to a file and imports it."""
    def cli(*args: str, config: Path = config_path) -> str:
        result = archivist(*args, "--config", str(config))
        assert result.returncode == 0, result.stderr
        return result.stdout

    def imported(name: str, *records: dict[str, Any]) -> None:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        cli("import", str(path))

    return cli, imported


def recovered_beside(
    tmp_path: Path, config_path: Path, cli: Callable[..., str], backup: str = "backup",
    into: str = "fresh",
) -> Path:
    """Recover `tmp_path/<backup>` into a fresh installation `tmp_path/<into>` (its key and
    erasure ledger copied from `config_path`'s) through the commands, check it verifies;
    returns its folder."""
    fresh = tmp_path / into
    fresh.mkdir()
    (fresh / "config.toml").write_text(config_path.read_text())
    for key_file in config_path.parent.glob("archive.key*"):  # the key and its ledger
        shutil.copy2(key_file, fresh / key_file.name)
    cli("init", config=fresh / "config.toml")
    cli("backup", "recover", str(tmp_path / backup), config=fresh / "config.toml")
    cli("verify", config=fresh / "config.toml")
    return fresh


def test_recovering_a_backup_taken_after_an_erasure_keeps_what_was_archived_since(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """The ledger erases again only what each erasure found: a backup taken after it holds
    records archived since (a new record of the erased customer, an erased id archived
    again), and recovering it must bring them back whole, with the customer's new key."""
    cli, imported = cli_steps(tmp_path, config_path)
    old = {"created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z"}
    cli("init")
    imported("first.jsonl",
             make_record(id="R1", customer_id="CA", body="first words of R1", **old),
             make_record(id="K1", customer_id="CK", body="first words of K1", **old))
    cli("archive", "--as-of", "2025-01-01")
    cli("restore", "R1", "--reason", "back to work")
    cli("erase", "--record", "R1", "--reason", "asked")  # its active copy is the CRM's
    cli("erase", "--customer", "CK", "--reason", "asked")
    imported("later.jsonl", make_record(
        id="K2", customer_id="CK", body="a new case of theirs", created_at="2021-01-01T00:00:00Z",
        updated_at="2021-01-02T00:00:00Z"))
    assert cli("archive", "--as-of", "2028-01-01").startswith("archived 2,")
    cli("backup", "create", str(tmp_path / "backup"))

    fresh = recovered_beside(tmp_path, config_path, cli)
    with Services.open(load_config(fresh / "config.toml")) as recovered:
        assert {i: e.state for i, e in recovered.store.entries(["R1", "K1", "K2"]).items()} == {
            "R1": "archived", "K1": "erased", "K2": "archived"}
        assert recovered.store.get("K2")["body"] == "a new case of theirs"
        assert recovered.store.get("R1")["body"] == "first words of R1"
        found = recovered.index.search(SearchQuery(q="words OR case"))
        assert sorted(h.id for h in found.hits) == ["K2", "R1"]


def test_records_disposed_of_before_their_erasure_end_erased_in_any_backup_that_holds_them(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """An erasure of records disposal purged before asks for whatever version a backup holds:
    recovering a backup from before their archiving, while archived, while restored, after
    their disposal or after the erasure leaves each verifying, with their text gone where it
    still held it and their events' reasons blanked. By record and by customer."""
    cli, imported = cli_steps(tmp_path, config_path)
    old = {"created_at": "2012-01-01T00:00:00Z", "updated_at": "2012-01-02T00:00:00Z"}
    cli("init")
    imported("records.jsonl",
             make_record(id="R2", customer_id="C2", body="kept for the audit",
                         created_at="2011-01-01T00:00:00Z", updated_at="2011-01-02T00:00:00Z"),
             make_record(id="R1", customer_id="C1", body="old case", **old),
             make_record(id="R1-M1", customer_id=None, parent_id="R1",
                         body=f"{MARKER.decode()} from {EMAIL.decode()}", **old),
             make_record(id="P1", customer_id="C9", body="their case", **old),
             make_record(id="P1-M1", customer_id=None, parent_id="P1",
                         body=f"{RESTORED_MARKER.decode()} of theirs", **old))
    cli("archive", "--as-of", "2012-06-01")  # R2 only
    cli("hold", "add", "--record", "R2", "--reason", "audit")  # no backup is empty
    cli("backup", "create", str(tmp_path / "absent"))
    assert cli("archive", "--as-of", "2013-06-01").startswith("archived 4,")
    cli("backup", "create", str(tmp_path / "archived"))
    cli("restore", "R1-M1", "P1", "--reason", f"reopened for {EMAIL.decode()}")
    cli("backup", "create", str(tmp_path / "restored"))
    cli("archive", "--as-of", "2040-01-01")  # past the restore's grace
    assert cli("dispose", "--as-of", "2040-01-01").startswith("purged 4")
    cli("backup", "create", str(tmp_path / "purged"))
    assert cli("erase", "--record", "R1-M1", "--reason", "asked").startswith("erased 0")
    assert cli("erase", "--customer", "C9", "--reason", "asked").startswith("erased 0")
    cli("backup", "create", str(tmp_path / "after"))

    ids = ["R1", "R1-M1", "P1", "P1-M1"]
    expected = {  # (R1's, then those erased); R1 itself was never asked for
        "absent": None,
        "archived": ("archived", "erased"),
        "restored": ("restored", "erased"),
        "purged": ("purged", "purged"),
        "after": ("purged", "purged"),
    }
    for backup, states in expected.items():
        fresh = recovered_beside(tmp_path, config_path, cli, backup, f"into_{backup}")
        with Services.open(load_config(fresh / "config.toml")) as recovered:
            store = recovered.store
            found = {i: e.state for i, e in store.entries(ids).items()}
            if states is None:
                assert found == {}, backup
                continue
            assert found == {"R1": states[0], **dict.fromkeys(ids[1:], states[1])}, backup
            assert store.versions(ids[1:]) == [], backup
            for record_id in ids[1:]:
                reasons = [e.reason for e in store.history(record_id) if e.reason is not None]
                assert reasons in ([], ["(erased)"]), (backup, record_id, reasons)
            for word in (MARKER, RESTORED_MARKER):
                assert recovered.index.search(SearchQuery(q=word.decode())).total == 0
            assert store.info("R2").state == "archived"
        for word in (MARKER, EMAIL, RESTORED_MARKER):
            assert files_holding(fresh / "data" / "index", word[:-1]) == [], (backup, word)


def test_a_backup_holding_an_erased_record_disposed_of_keeps_no_reason_naming_the_person(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """The erasure found the record archived again after a disposal; a backup from between
    holds it disposed of, with the reason of a restore before: recovering it blanks the
    reason, as the erasure did."""
    cli, imported = cli_steps(tmp_path, config_path)
    cli("init")
    imported("first.jsonl", make_record(id="K1", customer_id="CK", body="first words",
                                        updated_at="2012-01-02T00:00:00Z"))
    cli("archive", "--as-of", "2013-06-01")
    cli("restore", "K1", "--reason", f"reopened for {EMAIL.decode()}")
    cli("archive", "--as-of", "2040-01-01")  # past the restore's grace
    assert cli("dispose", "--as-of", "2040-01-01").startswith("purged 1")
    cli("backup", "create", str(tmp_path / "backup"))
    imported("again.jsonl", make_record(id="K1", customer_id="CK", body="second words",
                                        updated_at="2039-01-02T00:00:00Z"))
    assert cli("archive", "--as-of", "2041-01-01").startswith("archived 1,")
    assert cli("erase", "--record", "K1", "--reason", "asked").startswith("erased 1")

    fresh = recovered_beside(tmp_path, config_path, cli)
    with Services.open(load_config(fresh / "config.toml")) as recovered:
        assert [(e.event, e.reason) for e in recovered.store.history("K1")] == [
            ("archived", None), ("restored", "(erased)"), ("archived", None), ("purged", None)
        ]
    assert files_holding(fresh / "data" / "archive", EMAIL) == []


def test_after_a_recovery_rewinds_the_store_the_ledger_keeps_what_was_archived_since(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """A store recovered from a backup older than an erasure numbers its new entries again,
    below the erasure's: a record of the erased customer archived after that recovery is not
    one the erasure found, and a backup of it recovers it whole."""
    cli, imported = cli_steps(tmp_path, config_path)
    old = {"created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z"}
    cli("init")
    imported("first.jsonl", *(make_record(id=f"A{n}", customer_id="CA", **old) for n in range(5)))
    cli("archive", "--as-of", "2025-01-01")
    cli("backup", "create", str(tmp_path / "before"))
    imported("more.jsonl",
             *(make_record(id=f"K{n}", customer_id="CK", body=f"old words {n}", **old)
               for n in range(20)))
    cli("archive", "--as-of", "2025-01-01")
    cli("erase", "--customer", "CK", "--reason", "asked")  # its ledger line: seq 25 or so
    cli("backup", "recover", str(tmp_path / "before"), "--force")  # back to 5 entries
    imported("new.jsonl", make_record(id="NEW", customer_id="CK", body="their new case", **old))
    cli("archive", "--as-of", "2025-01-01")  # entry 6: below the erasure's last entry
    cli("backup", "create", str(tmp_path / "after"))
    cli("backup", "recover", str(tmp_path / "after"), "--force")

    cli("verify")
    with Services.open(load_config(config_path)) as recovered:
        assert recovered.store.info("NEW").state == "archived"
        assert recovered.store.get("NEW")["body"] == "their new case"
        assert recovered.index.search(SearchQuery(q="old words")).total == 0


def test_an_erasure_with_the_index_unavailable_erases_nothing(
    config_path: Path, tmp_path: Path, make_record: Any
) -> None:
    """Refused before the store is touched: erased records the index still held, under an
    audit entry with no counts, would be worse than a clear refusal."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_record(id="X1", customer_id="CX", body="x words")) + "\n")
    for args in (("init",), ("import", str(path)), ("archive", "--as-of", "2026-01-01")):
        assert archivist(*args, "--config", str(config_path)).returncode == 0
    (config_path.parent / "data" / "index" / "CURRENT").unlink()

    result = archivist("erase", "--customer", "CX", "--reason", "asked",
                       "--config", str(config_path))

    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    with Services.open(load_config(config_path), broken_index_ok=True) as services:
        assert services.store.info("X1").state == "archived"
        assert not ledger_path(services.config.key_file).exists()


def test_phone_numbers_in_any_form_and_inflected_words_are_blanked_too(
    client: Any, admin_headers: Any, services: Services, archived: Any, make_record: Any,
) -> None:
    """A search finds a phone number however it is typed, and a word by its stem: the
    audited query names the customer in each of those forms, so each is blanked."""
    archived(
        make_record(id="PH-1", customer_id="C-PH", body="Call +86 138 0013 0015 re quoffeling."),
        *(make_record(id=f"PH-O{i}", customer_id=f"C-O{i}", body="refund call +86 139 0000 0000")
          for i in range(3)),
    )
    naming = ["13800130015", "+8613800130015", "138-0013-0015", "013800130015", "quoffels"]
    kept = ["refunds", "13900000000"]  # others' words, others' number
    for q in naming + kept:
        response = client.get("/api/v1/search", headers=admin_headers, query_string={"q": q})
        assert response.status_code == 200 and response.json["total"] >= 1, q

    done = client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "C-PH", "reason": "asked"})

    assert done.status_code == 200 and done.json["erased"] == 1
    assert [t for _, t, _ in search_entries(services)] == ["(erased)"] * len(naming) + kept
    assert verify_all(services).problems == []


def test_the_readme_s_statement_deletes_the_customer_s_active_rows_of_the_embedded_default(
    services: Services, erasable: Any, config_path: Path
) -> None:
    """With the embedded default, `import` never deletes: the README's statement removes the
    rows the erasure counted as still active, and the erasure run again leaves no byte of
    them in the database folder."""
    import re
    import sqlite3

    from archivist.importer import import_lines

    recent = {"created_at": "2026-05-01T00:00:00Z", "updated_at": "2026-05-02T00:00:00Z"}
    lines = [json.dumps(r).encode() for r in (
        {**erasable["make"](id="A-CASE", customer_id="C-ERASE", body=f"open {EMAIL.decode()}"),
         **recent},
        {**erasable["make"](id="A-NOTE", customer_id=None, parent_id="A-CASE",
                            body="a note naming no customer"), **recent},
        {**erasable["make"](id="A-OTHER", customer_id="C-KEEP", body="someone else"), **recent},
    )]
    assert import_lines(lines, services.sessions, services.store.find_archived).rejected == 0
    first = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR",
                      "--config", str(config_path))
    assert first.returncode == 0, first.stderr
    assert "still active: 3 record(s)" in first.stdout  # E-RST, A-CASE and A-NOTE
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    statement = re.search(r"```sql\n(WITH RECURSIVE theirs.*?)```", readme, re.S)
    assert statement is not None
    database = config_path.parent / "data" / "active.db"
    with sqlite3.connect(database) as connection:
        connection.execute(statement.group(1).replace("C-1042", "C-ERASE"))
    connection.close()

    again = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR",
                      "--config", str(config_path))

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "erased 0"
    assert "still active: 0 record(s)" in again.stdout
    assert files_holding(config_path.parent / "data", EMAIL) == []
    with sqlite3.connect(database) as connection:
        left = {i for (i,) in connection.execute("SELECT id FROM active_records")}
    connection.close()
    assert left == {"A-OTHER"}
    assert archivist("verify", "--config", str(config_path)).returncode == 0


def backed_up_then_erased(
    tmp_path: Path, config_path: Path, make_record: Any, customer: str
) -> tuple[Callable[..., str], Path]:
    """An installation of three archived records of `customer` (with the marker word) and one
    of another, backed up into `tmp_path/backup`, then `customer` erased; `cli` and the backup."""
    cli, imported = cli_steps(tmp_path, config_path)
    old = {"created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z"}
    cli("init")
    imported("first.jsonl",
             *(make_record(id=f"K{n}", customer_id=customer, body=f"{MARKER.decode()} {n}", **old)
               for n in range(3)),
             make_record(id="A1", customer_id="CA", body="refund for A1", **old))
    cli("archive", "--as-of", "2025-01-01")
    backup = tmp_path / "backup"
    cli("backup", "create", str(backup))
    cli("erase", "--customer", customer, "--reason", "asked")
    return cli, backup


@pytest.mark.parametrize("point", ["recover.installed", "store.frames_written"])
def test_a_recovery_killed_before_the_ledger_is_applied_is_finished_and_nothing_else_opens_it(
    tmp_path: Path, config_path: Path, make_record: Any, point: str
) -> None:
    """Killed once the backup's store is in place but before the erasure ledger is applied
    again (or while it is), the installation holds erased text: every other command refuses
    it, naming the recovery to run again, and that run finishes it without --force."""
    import signal

    cli, backup = backed_up_then_erased(tmp_path, config_path, make_record, "CK")
    later = tmp_path / "later"
    cli("backup", "create", str(later))

    killed = archivist("backup", "recover", str(backup), "--force", "--config", str(config_path),
                       env={"ARCHIVIST_CRASH_AT": f"{point}:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    for command in (["index", "--rebuild"], ["verify"], ["archive"], ["stats"],
                    ["erase", "--customer", "CK", "--reason", "again", "--dry-run"]):
        refused = archivist(*command, "--config", str(config_path))
        assert refused.returncode == 1, (command, refused.stdout)
        assert "stopped half-way" in refused.stderr, refused.stderr
        assert f"archivist backup recover {backup}" in refused.stderr
    other = archivist("backup", "recover", str(later), "--config", str(config_path))
    assert other.returncode == 1  # another backup is a choice of its own: --force
    assert f"a recovery from the backup {backup} stopped half-way" in other.stderr
    again = archivist("backup", "recover", str(backup), "--config", str(config_path))
    assert again.returncode == 0, again.stderr
    cli("verify")
    data = config_path.parent / "data"
    assert files_holding(data / "archive", MARKER) == []
    assert files_holding(data / "index", MARKER[:-1]) == []
    with Services.open(load_config(config_path)) as recovered:
        assert {e.state for e in recovered.store.entries(["K0", "K1", "K2"]).values()} == {
            "erased"}
        assert recovered.index.search(SearchQuery(q=MARKER.decode())).total == 0
        assert [h.id for h in recovered.index.search(SearchQuery(q="refund")).hits] == ["A1"]


def test_a_copy_a_recovery_killed_while_staging_left_is_deleted_before_anything_opens(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """Killed while it copied the backup beside the installation (nothing replaced yet), a
    recovery leaves that copy, which may hold what was erased since: the next command to
    open the installation deletes it, and the installation is as it was."""
    import signal

    cli, backup = backed_up_then_erased(tmp_path, config_path, make_record, "C-ERASE-ME")
    archive = config_path.parent / "data" / "archive"
    assert files_holding(archive, b"C-ERASE-ME") == []

    killed = archivist("backup", "recover", str(backup), "--force", "--config", str(config_path),
                       env={"ARCHIVIST_CRASH_AT": "recover.stage_file:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert files_holding(archive, b"C-ERASE-ME")  # the backup's catalog, staged

    stats = json.loads(cli("stats"))

    assert (stats["archived"], stats["active"]) == (1, 0)
    assert files_holding(archive, b"C-ERASE-ME") == []
    assert not (archive / ".recovering").exists()
    cli("verify")


def test_a_recovery_killed_in_its_index_rebuild_is_on_record_and_a_rebuild_finishes_it(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """Once the ledgers are applied again the installation is whole: a recovery killed in its
    index rebuild has its audit entry already, and `index --rebuild` is all that is left."""
    import signal

    from archivist.audit import AuditFilter, list_audit

    cli, imported = cli_steps(tmp_path, config_path)
    old = {"created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z"}
    cli("init")
    imported("first.jsonl", *(make_record(id=f"A{n}", body=f"refund {n}", **old)
                              for n in range(5)))
    cli("archive", "--as-of", "2025-01-01")
    backup = tmp_path / "backup"
    cli("backup", "create", str(backup))

    killed = archivist("backup", "recover", str(backup), "--force", "--config", str(config_path),
                       env={"ARCHIVIST_CRASH_AT": "recover.before_index:1"})

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Services.open(load_config(config_path)) as services:
        with services.read_sessions.begin() as session:
            entries = list_audit(session, AuditFilter(action="recover")).entries
        assert [(e.outcome, e.details["archived"], e.details["force"]) for e in entries] == [
            ("ok", 5, True)]
    cli("index", "--rebuild")
    cli("verify")


def deleted_files_open_holding(needle: bytes) -> list[str]:
    """The files this process holds open that were deleted and still hold `needle` (what
    `ls -l /proc/<pid>/fd | grep deleted` and a `grep -a` on each would find)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
            if str(target).endswith(" (deleted)") and needle in fd.read_bytes():
                found.append(str(target))
        except OSError:  # closed meanwhile (the directory listing's own fd)
            continue
    return found


def test_a_searching_process_lets_go_of_index_files_an_erasure_elsewhere_deleted(
    services: Services, erasable: Any, config_path: Path
) -> None:
    """A server's searches and id look-ups (the restore above) opened the segments holding the
    customer's words; once another process erased them, the next searches close those files
    rather than keep them readable until this process writes to the index again."""
    index = services.index
    assert index.search(SearchQuery(q=MARKER.decode())).total == 5
    assert index.delete(["NOT-INDEXED"]) == 0  # an id look-up in every shard, as a restore's

    result = archivist("erase", "--customer", "C-ERASE", "--reason", "GDPR request 17",
                       "--config", str(config_path))
    assert result.returncode == 0, result.stderr
    assert files_holding(services.config.index_dir, EMAIL) == []

    index._retired_grace = 0.0  # (replaced search readers wait a while for searches on them)
    for _ in range(2):
        assert index.search(SearchQuery(q=MARKER.decode())).total == 0
    assert deleted_files_open_holding(EMAIL) == []
    assert deleted_files_open_holding(MARKER[:-1]) == []
    assert index.search(SearchQuery(q="refund")).total == 60


def late_reply_erased_again(cli: Callable[..., str], config_path: Path) -> None:
    """Erase customer CL-4 again, now that their late reply L1-late is archived: the dry run
    and the erasure find it, and no file of the archive or index holds its words after."""
    assert cli("erase", "--customer", "CL-4", "--reason", "gdpr",
               "--dry-run").splitlines()[0] == "would erase 1"
    second = cli("erase", "--customer", "CL-4", "--reason", "gdpr").splitlines()
    assert second[0] == "erased 1" and "still active: 0 record(s)" in second[1]
    config = load_config(config_path)
    for folder in (config.archive_dir, config.index_dir):
        assert files_holding(folder, b"lara@example.com") == []
    with Services.open(config) as services:
        assert services.index.search(SearchQuery(q="lara")).total == 0
        assert services.store.info("L1-late").state == "erased"
    cli("verify")


@pytest.mark.parametrize("ledgered_by", ["this version", "an earlier version"])
def test_a_late_message_of_an_erased_customers_case_is_theirs_when_archived_later(
    config_path: Path, make_record: Any, tmp_path: Path, ledgered_by: str
) -> None:
    """A reply to an erased customer's case, still active when they were erased, names no
    customer and its case no longer names one: it is theirs all the same, counted as still
    active, and erased by the next erasure once archived."""
    def run(*args: str) -> str:
        result = archivist(*args, "--config", str(config_path))
        assert result.returncode == 0, result.stderr
        return result.stdout

    def imported(*records: dict[str, Any]) -> None:
        path = tmp_path / f"{records[0]['id']}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        run("import", str(path))

    run("init")
    imported(make_record(id="L1", customer_id="CL-4", body="case"),
             make_record(id="L1-m", customer_id=None, parent_id="L1",
                         body="first message lara@example.com"))
    run("archive", "--as-of", "2026-01-01")
    imported(make_record(id="L1-late", customer_id=None, parent_id="L1",
                         body="late reply from lara@example.com",
                         created_at="2026-10-30T00:00:00Z", updated_at="2026-11-01T00:00:00Z"))

    dry = run("erase", "--customer", "CL-4", "--reason", "gdpr", "--dry-run").splitlines()
    first = run("erase", "--customer", "CL-4", "--reason", "gdpr").splitlines()
    assert (dry[0], first[0]) == ("would erase 2", "erased 2")
    assert "still active: 1 record(s)" in dry[1] and "still active: 1 record(s)" in first[1]
    if ledgered_by == "an earlier version":  # one line an erasure, no id, no end
        ledger = ledger_path(load_config(config_path).key_file)
        lines = [json.loads(line) for line in ledger.read_text().splitlines()]
        ledger.write_text("".join(
            json.dumps({key: line[key] for key in ("at", "customer_sha256", "records")}) + "\n"
            for line in lines if "records" in line
        ))

    run("archive", "--as-of", "2028-01-01")  # the CRM kept it: it ages and is archived
    late_reply_erased_again(run, config_path)


def test_a_late_message_under_a_case_disposed_of_before_the_erasure_is_theirs_too(
    config_path: Path, make_record: Any, tmp_path: Path
) -> None:
    """The case was disposed of, then a reply came in under it; erasing the customer counts
    the reply as still active, and the next erasure finds it once archived (through the
    ledger, which keeps the disposed case), with a restore reason of it naming them."""
    cli, imported = cli_steps(tmp_path, config_path)
    cli("init")
    imported("case.jsonl", make_record(id="L1", customer_id="CL-4", body="case",
                                       updated_at="2020-01-02T00:00:00Z"))
    cli("archive", "--as-of", "2021-01-01")
    assert cli("dispose", "--as-of", "2030-01-01").startswith("purged 1")
    imported("late.jsonl", make_record(id="L1-late", customer_id=None, parent_id="L1",
                                       body="late reply from lara@example.com",
                                       updated_at="2026-11-01T00:00:00Z"))

    first = cli("erase", "--customer", "CL-4", "--reason", "gdpr").splitlines()
    assert first[0] == "erased 0" and "still active: 1 record(s)" in first[1]

    cli("archive", "--as-of", "2028-01-01")
    cli("restore", "L1-late", "--reason", "reopened for lara@example.com")
    cli("archive", "--as-of", "2040-01-01")  # past the restore grace
    late_reply_erased_again(cli, config_path)


def test_a_restore_reason_of_a_late_message_disposed_of_since_leaves_with_its_customer(
    config_path: Path, make_record: Any, tmp_path: Path
) -> None:
    """As above, but the reply was restored with a reason naming the person, archived again
    and disposed of before the customer's next erasure: that erasure blanks the reason."""
    cli, imported = cli_steps(tmp_path, config_path)
    cli("init")
    imported("case.jsonl", make_record(id="L1", customer_id="CL-4", body="case",
                                       updated_at="2020-01-02T00:00:00Z"))
    cli("archive", "--as-of", "2021-01-01")
    cli("dispose", "--as-of", "2030-01-01")
    imported("late.jsonl", make_record(id="L1-late", customer_id=None, parent_id="L1",
                                       body="late reply", updated_at="2026-11-01T00:00:00Z"))
    cli("erase", "--customer", "CL-4", "--reason", "gdpr")
    cli("archive", "--as-of", "2028-01-01")
    cli("restore", "L1-late", "--reason", "reopened for lara@example.com")
    cli("archive", "--as-of", "2040-01-01")
    assert cli("dispose", "--as-of", "2060-01-01").startswith("purged 1")
    assert files_holding(load_config(config_path).archive_dir, b"lara@example.com") != []

    cli("erase", "--customer", "CL-4", "--reason", "gdpr")

    assert files_holding(load_config(config_path).archive_dir, b"lara@example.com") == []
    cli("verify")


def test_the_audited_restores_of_erased_records_are_blanked_whatever_their_reason_says(
    config_path: Path, make_record: Any, tmp_path: Path
) -> None:
    """A restore's reason may name the person in words their records never held, and a
    record disposed of since has no text left to compare with: the audit entries of restores
    that brought back only erased records are blanked; one that restored another customer's
    record too keeps its entry."""
    cli, imported = cli_steps(tmp_path, config_path)
    cli("init")
    imported("r.jsonl",
             make_record(id="T1", customer_id="CR-1", body="hello",
                         updated_at="2020-01-02T00:00:00Z"),
             make_record(id="T2", customer_id="CR-2", body="other",
                         updated_at="2020-01-02T00:00:00Z"))
    cli("archive", "--as-of", "2021-01-01")
    cli("restore", "T1", "--reason", "reopened for jane.doe@example.com")
    cli("restore", "T2", "--reason", "checked for zed.other@example.com")
    cli("archive", "--as-of", "2040-01-01")
    cli("dispose", "--as-of", "2060-01-01")
    data = config_path.parent / "data"
    assert files_holding(data, b"jane.doe@example.com") != []

    cli("erase", "--record", "T1", "--reason", "gdpr")

    assert files_holding(data, b"jane.doe@example.com") == []
    assert files_holding(data, b"zed.other@example.com") != []  # another's restore stays
    cli("verify")


def test_a_restore_s_reason_naming_the_customer_leaves_the_catalog_and_segments_with_them(
    tmp_path: Path, config_path: Path, make_record: Any, client: Any, admin_headers: Any
) -> None:
    """A restore's typed reason is kept in its event (catalog and segment frame, sealed with
    the shared key): erasing the customer blanks it, and so does recovering a backup taken
    before the erasure. The history still shows the event."""
    cli, imported = cli_steps(tmp_path, config_path)
    address = b"jane.doe@example.com"
    old = {"created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z"}
    cli("init")
    imported("t1.jsonl",
             make_record(id="T1", customer_id="CR-1", body=f"contact {address.decode()}", **old),
             make_record(id="A1", customer_id="CA", body="refund for A1", **old))
    cli("archive", "--as-of", "2026-01-01")
    cli("restore", "T1", "--reason", f"reopened for {address.decode()}")
    cli("restore", "A1", "--reason", "checked by the team")
    cli("archive", "--as-of", "2028-01-01")
    cli("backup", "create", str(tmp_path / "backup"))
    data = config_path.parent / "data"
    assert files_holding(data / "archive", b"jane.doe") != []  # the catalog holds the reason

    cli("erase", "--customer", "CR-1", "--reason", "gdpr")

    assert files_holding(data, b"jane.doe") == []
    cli("verify")
    view = client.get("/api/v1/records/T1", headers=admin_headers).json
    assert [(h["event"], h["reason"]) for h in view["history"]] == [
        ("archived", None), ("restored", "(erased)"), ("archived", None), ("erased", None)
    ]
    with Services.open(load_config(config_path)) as live:
        opened = []  # every frame, opened with the archive key (the event's is the shared key's)
        for path in sorted((data / "archive" / "segments").iterdir()):
            with path.open("rb") as f:
                opened.extend(live.store.open_frame(frame) for _, frame in iter_frames(f))
        assert opened and not [frame for frame in opened if b"jane.doe" in frame]
        assert b"checked by the team" in b"".join(opened)  # another customer's reason stays
        assert [e.reason for e in live.store.history("A1")][1] == "checked by the team"

    fresh = recovered_beside(tmp_path, config_path, cli)
    assert files_holding(fresh / "data", b"jane.doe") == []
    with Services.open(load_config(fresh / "config.toml")) as recovered:
        assert [(e.event, e.reason) for e in recovered.store.history("T1")] == [
            ("archived", None), ("restored", "(erased)"), ("archived", None), ("erased", None)
        ]


def test_queries_refused_for_their_wildcards_that_could_name_the_customer_are_blanked(
    client: Any, admin_headers: Any, services: Services, archived: Any, make_record: Any,
    config_path: Path,
) -> None:
    """A query refused as a query (a leading wildcard) was audited as typed, but what it would
    have found cannot be asked: it is blanked when a piece of it between its wildcards is
    part of their text, and kept when it is not."""
    from archivist.active_db import AuditEntry

    archived(
        make_record(id="T1", customer_id="CR-2",
                    body="contact quillimber jane.roe@example.com"),
        *[make_record(id=f"O-{i}", customer_id="C-OTHER", body=f"refund {i} approved")
          for i in range(5)],
    )
    run = archivist("restore", "--search", "q=*jane.roe@example.com", "--reason", "r",
                    "--dry-run", "--config", str(config_path))
    assert run.returncode != 0 and "wildcard" in run.stderr  # refused, and audited
    naming = ["*quillimber", "?uillimber", "*oe@example.co", "*xquillimber"]
    kept = ["*efund", "*zzqqx"]
    for q in naming + kept:
        response = client.get("/api/v1/search", headers=admin_headers, query_string={"q": q})
        assert response.status_code == 400, q

    assert client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "CR-2", "reason": "asked"}).status_code == 200

    assert [t for _, t, _ in search_entries(services)] == ["(erased)"] * len(naming) + kept
    with services.read_sessions.begin() as session:
        restores = [e.details for e in session.query(AuditEntry)
                    .filter(AuditEntry.action == "restore")]
    assert restores and not [d for d in restores if "jane.roe" in d]
    assert files_holding(config_path.parent / "data", b"jane.roe") == []
    assert files_holding(config_path.parent / "data", b"quillimber") == []
    assert verify_all(services).problems == []


def test_an_audited_search_whose_owner_filter_names_the_customer_is_blanked(
    client: Any, admin_headers: Any, services: Services, archived: Any, make_record: Any
) -> None:
    """The owner filter is typed text too (here the customer's address); a kind or a
    category is the CRM's own name for a kind of record, and names no one."""
    archived(
        make_record(id="T1", customer_id="CR-3", body="contact vera+news@example.com"),
        *[make_record(id=f"O-{i}", customer_id="C-OTHER", owner="carol",
                      body=f"refund {i} approved") for i in range(5)],
    )
    for params in ({"owner": "vera+news@example.com"}, {"owner": "carol"},
                   {"kind": "communication", "category": "support"}):
        response = client.get("/api/v1/search", headers=admin_headers, query_string=params)
        assert response.status_code == 200, params

    assert client.post("/api/v1/erase", headers=admin_headers,
                       json={"customer_id": "CR-3", "reason": "asked"}).status_code == 200

    details = [d for _, _, d in search_entries(services)]
    assert details[0] == {"erased": True}
    assert details[1]["owner"] == "carol" and details[2]["kind"] == ["communication"]
    assert verify_all(services).problems == []


def test_recovering_with_the_key_in_the_environment_and_no_ledger_warns_of_erasures_undone(
    tmp_path: Path, config_path: Path, make_record: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure ledger lives beside the key file: given the key in ARCHIVIST_ARCHIVE_KEY
    with no ledger there, a recovery cannot make again an erasure made after the backup. It
    goes on, and says so in one line; with the ledger copied there, it erases them again."""
    cli, backup = backed_up_then_erased(tmp_path, config_path, make_record, "CK")
    key = (config_path.parent / "archive.key").read_text().strip()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.toml").write_text(config_path.read_text())
    environment = {"ARCHIVIST_ARCHIVE_KEY": key}
    monkeypatch.setenv("ARCHIVIST_ARCHIVE_KEY", key)

    def states() -> set[str]:
        with Services.open(load_config(fresh / "config.toml")) as services:
            return {e.state for e in services.store.entries(["K0", "K1", "K2"]).values()}

    recovered = archivist("backup", "recover", str(backup),
                          "--config", str(fresh / "config.toml"), env=environment)

    assert recovered.returncode == 0, recovered.stderr
    warnings = [line for line in recovered.stderr.splitlines() if "erasure ledger" in line]
    assert warnings == [
        f"warning: no erasure ledger at {fresh / 'archive.key.erasures'}: erasures made after "
        "the backup was taken are made again only from it, so their records may be back; copy "
        "it there with the key and recover again with --force"
    ]
    assert states() == {"archived"}  # what it warns of: the erased records are back

    shutil.copy2(config_path.parent / "archive.key.erasures", fresh / "archive.key.erasures")
    again = archivist("backup", "recover", str(backup), "--force",
                      "--config", str(fresh / "config.toml"), env=environment)

    assert again.returncode == 0, again.stderr
    assert "erasure ledger" not in again.stderr
    assert states() == {"erased"}


def test_a_restore_s_reason_on_a_record_disposed_of_since_leaves_with_its_customer(
    tmp_path: Path, config_path: Path, make_record: Any
) -> None:
    """A record disposed of keeps its history, a restore's reason included: erasing its
    customer later blanks that reason too."""
    cli, imported = cli_steps(tmp_path, config_path)
    old = {"created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z"}
    cli("init")
    imported("t1.jsonl",
             make_record(id="T1", customer_id="CR-1", body="contact jane.doe@example.com", **old),
             make_record(id="A1", customer_id="CA", body="refund for A1", **old))
    cli("archive", "--as-of", "2026-01-01")
    cli("restore", "T1", "--reason", "reopened for jane.doe@example.com")
    cli("archive", "--as-of", "2028-01-01")
    assert cli("dispose", "--as-of", "2028-01-01").startswith("purged 2")
    data = config_path.parent / "data"
    assert files_holding(data / "archive", b"jane.doe") != []

    cli("erase", "--customer", "CR-1", "--reason", "gdpr")

    assert files_holding(data / "archive", b"jane.doe") == []
    cli("verify")
    with Services.open(load_config(config_path)) as services:
        assert [(e.event, e.reason) for e in services.store.history("T1")] == [
            ("archived", None), ("restored", "(erased)"), ("archived", None), ("purged", None)
        ]
