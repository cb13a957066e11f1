"""`parent_id` end to end: the record model, import (cycles), the active database, the archive,
the index (`parent_id:`, `process_id:`, `process=`), hits, the record view and the CSV export."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from functools import partial

import pytest

from archivist.active_db import find_active
from archivist.errors import InvalidRecord
from archivist.importer import import_lines
from archivist.records import parse_record
from indexer.jobs.runs import run_archive_job
from indexer.processes import find_archived_parents
from indexer.services import Services

AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def load(services, records):
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    return import_lines(
        lines,
        services.sessions,
        services.store.find_archived,
        find_archived_parents=partial(find_archived_parents, services.store),
    )


def test_parent_id_is_validated(make_record):
    assert parse_record(make_record(id="A", parent_id="B")).parent_id == "B"
    with pytest.raises(InvalidRecord, match="own id"):
        parse_record(make_record(id="A", parent_id="A"))
    with pytest.raises(InvalidRecord, match="parent_id"):
        parse_record(make_record(id="A", parent_id="bad id"))
    with pytest.raises(InvalidRecord, match="parent_id"):
        parse_record(make_record(id="A", parent_id=7))


def test_parent_id_round_trips_absent_null_and_set(services, make_record):
    without = make_record(id="P0")
    null = make_record(id="P1", parent_id=None)
    child = make_record(id="P2", parent_id="P0")
    assert load(services, [without, null, child]).rejected == 0
    with services.sessions.begin() as session:
        active = find_active(session, ["P0", "P1", "P2"])
    assert active["P0"].to_json() == without
    assert "parent_id" not in active["P0"].to_json()
    assert active["P1"].to_json() == null
    assert active["P2"].to_json() == child
    run_archive_job(services, AS_OF)
    assert services.store.get("P0") == without
    assert services.store.get("P1") == null
    assert services.store.get("P2") == child
    assert services.store.info("P2").parent_id == "P0"


def test_import_rejects_a_cycle_with_its_line_number(services, make_record):
    errors = []
    report = import_lines(
        [
            json.dumps(make_record(id="A", parent_id="B")).encode(),
            json.dumps(make_record(id="B", parent_id="C")).encode(),
            json.dumps(make_record(id="C", parent_id="A")).encode(),  # closes A -> B -> C -> A
            json.dumps(make_record(id="D", parent_id="D")).encode(),
            json.dumps(make_record(id="E", parent_id="A")).encode(),
        ],
        services.sessions,
        services.store.find_archived,
        on_error=errors.append,
    )
    assert report.imported == 3
    assert [e.line for e in errors] == [3, 4]  # in line order, though found apart
    by_line = {e.line: e.reason for e in errors}
    assert "cycle" in by_line[3] and "own id" in by_line[4]
    # a later file that re-parents an existing record into a cycle is refused too
    again = load(services, [make_record(id="A", parent_id="E")])
    assert again.rejected == 1 and "cycle" in again.errors[0].reason


def test_a_line_repeating_the_id_of_a_refused_line_is_imported(services, make_record):
    """The earlier line with the id was refused (it closed a cycle): the later one is the only
    line with that id, not a duplicate of a line that was never imported."""
    report = load(services, [
        make_record(id="Q1", parent_id="Q2"),
        make_record(id="Q2", parent_id="Q1"),  # closes Q1 -> Q2 -> Q1
        make_record(id="Q2", subject="the root"),
    ])
    assert [(e.line, "cycle" in e.reason) for e in report.errors] == [(2, True)]
    assert report.imported == 2
    with services.sessions.begin() as session:
        active = find_active(session, ["Q1", "Q2"])
    assert active["Q1"].parent_id == "Q2"
    assert active["Q2"].parent_id is None and active["Q2"].subject == "the root"
    # a repeat of an id whose first line stands is still a duplicate
    again = load(services, [make_record(id="Q3"), make_record(id="Q3", subject="twice")])
    assert [e.reason for e in again.errors] == ["duplicate id 'Q3' (first on line 1)"]


def test_import_rejects_a_cycle_through_the_archive(services, make_record):
    # X is archived with a parent that was unknown then; Y becomes that parent and points at X
    assert load(services, [make_record(id="X", parent_id="Y")]).rejected == 0
    run_archive_job(services, AS_OF)
    report = load(services, [make_record(id="Y", parent_id="X")])
    assert report.rejected == 1 and "cycle" in report.errors[0].reason


def test_an_older_database_gains_the_parent_column(config, make_record):
    with Services.open(config, create=True):
        pass
    path = config.active_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX ix_active_parent")
        conn.execute("ALTER TABLE active_records DROP COLUMN parent_id")
        conn.execute("ALTER TABLE active_records DROP COLUMN has_parent_id")
    with Services.open(config) as services:
        assert load(services, [make_record(id="K", parent_id="J")]).rejected == 0
        with services.sessions.begin() as session:
            assert find_active(session, ["K"])["K"].parent_id == "J"


@pytest.fixture
def tree(archived, make_record):
    """A process: a case with a ticket, two messages under it and a note; and a loner."""
    return archived(
        make_record(id="CASE-1", kind="process", subject="Refund case"),
        make_record(id="TKT-1", kind="ticket", parent_id="CASE-1", subject="Refund ticket"),
        make_record(id="MSG-1", parent_id="TKT-1", subject="退款 message"),
        make_record(id="MSG-2", parent_id="TKT-1", subject="Second message"),
        make_record(id="NOTE-1", kind="note", parent_id="CASE-1", subject="A note"),
        make_record(id="LONER", subject="On its own"),
    )


def hit_ids(client, headers, query):
    response = client.get(f"/api/v1/search?{query}&per_page=100", headers=headers)
    assert response.status_code == 200, response.json
    return {h["id"]: h for h in response.json["hits"]}


def test_search_by_process_and_parent(client, agent_headers, tree):
    everything = hit_ids(client, agent_headers, "")
    assert everything["MSG-1"]["parent_id"] == "TKT-1"
    assert everything["MSG-1"]["process_id"] == "CASE-1"
    assert everything["CASE-1"]["parent_id"] is None
    assert everything["LONER"]["process_id"] == "LONER"
    process = {"CASE-1", "TKT-1", "MSG-1", "MSG-2", "NOTE-1"}
    assert set(hit_ids(client, agent_headers, "process=CASE-1")) == process
    assert set(hit_ids(client, agent_headers, "q=process_id:CASE-1")) == process
    assert set(hit_ids(client, agent_headers, "q=parent_id:TKT-1")) == {"MSG-1", "MSG-2"}
    assert set(hit_ids(client, agent_headers, "q=second&process=CASE-1")) == {"MSG-2"}
    assert hit_ids(client, agent_headers, "process=NOPE") == {}


def test_export_filters_by_process_with_the_contract_columns(client, auditor_headers, tree):
    response = client.get("/api/v1/export.csv?process=CASE-1", headers=auditor_headers)
    lines = response.data.decode().splitlines()
    assert lines[0] == (
        "id,kind,category,customer_id,owner,subject,status,created_at,updated_at,archived_at"
    )
    assert sorted(line.split(",")[0] for line in lines[1:]) == [
        "CASE-1", "MSG-1", "MSG-2", "NOTE-1", "TKT-1"
    ]


def test_record_view_lists_the_process(client, agent_headers, tree, services, make_record):
    young = make_record(
        id="MSG-3", parent_id="TKT-1", updated_at="2025-12-30T00:00:00Z", subject="Still open"
    )
    assert load(services, [young]).rejected == 0
    body = client.get("/api/v1/records/MSG-2", headers=agent_headers).json
    assert body["process"]["root"] == "CASE-1"
    records = {r["id"]: r for r in body["process"]["records"]}
    assert set(records) == {"CASE-1", "TKT-1", "MSG-1", "MSG-2", "MSG-3", "NOTE-1"}
    assert records["MSG-1"] == {
        "id": "MSG-1", "parent_id": "TKT-1", "kind": "communication",
        "subject": "退款 message", "state": "archived",
    }
    assert records["MSG-3"]["state"] == "active"
    assert body["process"]["records"][0]["id"] == "CASE-1"  # parents first
    loner = client.get("/api/v1/records/LONER", headers=agent_headers).json["process"]
    assert loner == {"root": "LONER", "records": [
        {"id": "LONER", "parent_id": None, "kind": "communication", "subject": "On its own",
         "state": "archived"}
    ]}


def test_records_archived_before_their_parent_join_its_process_in_search(
    services, archived, make_record
):
    from indexer.search import SearchQuery

    # The messages come first, their case and ticket only later (an import in pieces).
    archived(
        make_record(id="LATE-MSG-1", parent_id="LATE-TKT", subject="first"),
        make_record(id="LATE-MSG-2", parent_id="LATE-MSG-1", subject="reply"),
    )
    assert services.index.search(SearchQuery(process="LATE-CASE")).total == 0
    archived(make_record(id="LATE-TKT", kind="ticket", parent_id="LATE-CASE"))
    archived(make_record(id="LATE-CASE", kind="process"))

    page = services.index.search(SearchQuery(process="LATE-CASE", per_page=100))
    assert {hit.id for hit in page.hits} == {"LATE-CASE", "LATE-TKT", "LATE-MSG-1", "LATE-MSG-2"}
    assert {hit.process_id for hit in page.hits} == {"LATE-CASE"}
    assert services.index.search(SearchQuery(process="LATE-MSG-1")).total == 0
    assert services.index.search(SearchQuery()).total == 4  # re-indexed, not indexed twice


def test_records_under_a_parent_only_in_the_active_database_are_searched_by_its_process(
    client, agent_headers, auditor_headers, admin_headers, services, archived, make_record
):
    # Two threads archived first; their case arrives later and is young, so it stays active.
    archived(
        make_record(id="EARLY-MSG-1", parent_id="NEW-CASE", subject="first thread"),
        make_record(id="EARLY-MSG-2", parent_id="EARLY-MSG-1", subject="its reply"),
        make_record(id="EARLY-MSG-3", parent_id="NEW-CASE", subject="second thread"),
        make_record(id="ELSEWHERE", subject="another process"),
    )
    young = make_record(id="NEW-CASE", kind="process", updated_at="2025-12-30T00:00:00Z")
    assert load(services, [young]).rejected == 0
    run_archive_job(services, AS_OF)
    with services.sessions.begin() as session:
        assert set(find_active(session, ["NEW-CASE"])) == {"NEW-CASE"}
    record = client.get("/api/v1/records/EARLY-MSG-2", headers=agent_headers).json
    assert record["process"]["root"] == "NEW-CASE"

    threads = {"EARLY-MSG-1", "EARLY-MSG-2", "EARLY-MSG-3"}
    found = hit_ids(client, agent_headers, "process=NEW-CASE")
    assert set(found) == threads
    assert {hit["process_id"] for hit in found.values()} == {"NEW-CASE"}
    assert set(hit_ids(client, agent_headers, "q=reply&process=NEW-CASE")) == {"EARLY-MSG-2"}
    everything = hit_ids(client, agent_headers, "")
    assert {i: everything[i]["process_id"] for i in threads} == dict.fromkeys(threads, "NEW-CASE")
    assert everything["ELSEWHERE"]["process_id"] == "ELSEWHERE"
    # a thread's first message is not the root of a process
    assert hit_ids(client, agent_headers, "process=EARLY-MSG-1") == {}

    export = client.get("/api/v1/export.csv?process=NEW-CASE", headers=auditor_headers)
    assert sorted(line.split(",")[0] for line in export.data.decode().splitlines()[1:]) == sorted(
        threads
    )
    response = client.post(
        "/api/v1/restore", headers=admin_headers,
        json={"search": {"process": "NEW-CASE"}, "reason": "case reopened"},
    )
    assert response.status_code == 200, response.json
    assert sorted(response.json["ids"]) == sorted(threads)
    with services.sessions.begin() as session:
        assert set(find_active(session, [*threads, "NEW-CASE"])) == {*threads, "NEW-CASE"}
    assert hit_ids(client, agent_headers, "process=NEW-CASE") == {}


def test_a_process_archived_around_an_active_record_is_searched_whole(
    client, agent_headers, services, archived, make_record
):
    # The case and the thread were archived apart; the ticket joining them came later.
    archived(
        make_record(id="TOP", kind="process", subject="the case"),
        make_record(id="LOW-1", parent_id="MID", subject="first message"),
        make_record(id="LOW-2", parent_id="LOW-1", subject="its reply"),
    )
    young = make_record(id="MID", kind="ticket", parent_id="TOP", updated_at="2025-12-30T00:00:00Z")
    assert load(services, [young]).rejected == 0
    found = hit_ids(client, agent_headers, "process=TOP")
    assert set(found) == {"TOP", "LOW-1", "LOW-2"}
    assert {hit["process_id"] for hit in found.values()} == {"TOP"}


def test_erasing_a_root_leaves_each_branch_a_process_of_its_own_in_search(
    client, agent_headers, admin_headers, services, archived, make_record
):
    archived(
        make_record(id="ROOT", kind="process", subject="the case"),
        make_record(id="LEFT-1", parent_id="ROOT", subject="left"),
        make_record(id="LEFT-2", parent_id="LEFT-1", subject="left reply"),
        make_record(id="RIGHT-1", parent_id="ROOT", subject="right"),
    )
    response = client.post(
        "/api/v1/erase", headers=admin_headers, json={"record_id": "ROOT", "reason": "asked"}
    )
    assert response.status_code == 200, response.json
    everything = hit_ids(client, agent_headers, "")
    assert {i: h["process_id"] for i, h in everything.items()} == {
        "LEFT-1": "LEFT-1", "LEFT-2": "LEFT-1", "RIGHT-1": "RIGHT-1"
    }
    assert set(hit_ids(client, agent_headers, "process=LEFT-1")) == {"LEFT-1", "LEFT-2"}
    assert set(hit_ids(client, agent_headers, "process=RIGHT-1")) == {"RIGHT-1"}
    assert hit_ids(client, agent_headers, "process=ROOT") == {}
    page = client.get("/api/v1/records/LEFT-2", headers=agent_headers).json
    assert page["process"]["root"] == "LEFT-1"
