"""Processes as the unit of archive, hold and disposal, checked against a plain model of the
contract's rules over several shapes of process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from archivist.active_db import find_active, utcnow
from archivist.holds import add_hold
from archivist.importer import import_lines
from archivist.retention import RetentionPolicy, RetentionRules
from indexer.jobs.runs import run_archive_job, run_dispose_job
from indexer.processes import find_archived_parents

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
RULES = RetentionRules(  # as in tests/conftest.py
    RetentionPolicy(365, 5),
    {"finance": RetentionPolicy(180, 7), "medical": RetentionPolicy(365, 10)},
)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def aged_edge(category: str, shift: int = 0) -> str:
    """`updated_at` exactly at the archive edge of a category, moved `shift` seconds."""
    days = RULES.policy_for(category).archive_after_days
    return iso(AS_OF - timedelta(days=days) + timedelta(seconds=shift))


OLD = iso(AS_OF - timedelta(days=4000))


# --- the model --------------------------------------------------------------------------------


def model_processes(records: list[dict]) -> list[set[str]]:
    """Processes by the contract's words: follow parent_id up to the root, take its descendants."""
    by_id = {r["id"]: r for r in records}

    def root(record_id: str) -> str:
        while (parent := by_id[record_id].get("parent_id")) in by_id:
            record_id = parent
        return record_id

    groups: dict[str, set[str]] = {}
    for record_id in by_id:
        groups.setdefault(root(record_id), set()).add(record_id)
    return list(groups.values())


def model_archive(records: list[dict], held: set[str], as_of: datetime) -> set[str]:
    """The ids one archive run moves."""
    by_id = {r["id"]: r for r in records}
    moved: set[str] = set()
    for process in model_processes(records):
        aged = all(
            datetime.fromisoformat(by_id[i]["updated_at"])
            <= as_of - timedelta(days=RULES.policy_for(by_id[i]["category"]).archive_after_days)
            for i in process
        )
        if aged and not process & held:
            moved |= process
    return moved


def model_dispose(records: list[dict], archived: set[str], held: set[str], as_of: datetime):
    by_id = {r["id"]: r for r in records}
    purged: set[str] = set()
    for process in model_processes(records):
        members = process & archived
        if not members or process & held:
            continue
        if all(
            datetime.fromisoformat(by_id[i]["updated_at"])
            <= as_of.replace(year=as_of.year - RULES.policy_for(by_id[i]["category"]).keep_years)
            for i in members
        ):
            purged |= members
    return purged


# --- shapes -----------------------------------------------------------------------------------


def rec(make_record, record_id, parent=None, updated=OLD, category="support", **extra):
    record = make_record(id=record_id, updated_at=updated, category=category, **extra)
    if parent is not None:
        record["parent_id"] = parent
    return record


def shapes(make_record) -> dict[str, tuple[list[dict], set[str]]]:
    """name -> (records, ids held by a record hold)."""
    r = partial(rec, make_record)
    young = iso(AS_OF - timedelta(days=10))
    return {
        "one record": ([r("S1")], set()),
        "deep chain": (
            [r("D0")] + [r(f"D{i}", parent=f"D{i - 1}") for i in range(1, 40)],
            set(),
        ),
        "deep chain, young leaf": (
            [r("L0")] + [r(f"L{i}", parent=f"L{i - 1}") for i in range(1, 30)]
            + [r("L30", parent="L29", updated=young)],
            set(),
        ),
        "wide fan": ([r("F")] + [r(f"F-{i}", parent="F") for i in range(150)], set()),
        "child aged while parent not": (
            [r("P", updated=young), r("P-1", parent="P"), r("P-2", parent="P")],
            set(),
        ),
        "held child": ([r("H"), r("H-1", parent="H"), r("H-2", parent="H-1")], {"H-2"}),
        "categories at their exact edges": (
            [
                r("E", category="support", updated=aged_edge("support")),
                r("E-1", parent="E", category="finance", updated=aged_edge("finance")),
                r("E-2", parent="E", category="medical", updated=aged_edge("medical")),
                r("X", category="support", updated=aged_edge("support")),
                r("X-1", parent="X", category="finance", updated=aged_edge("finance", 1)),
            ],
            set(),
        ),
        "orphan parent unknown": ([r("O-1", parent="NOT-IMPORTED"), r("O-2", parent="O-1")],
                                  set()),
    }


def load(services, records):
    report = import_lines(
        [json.dumps(r).encode() for r in records],
        services.sessions,
        services.store.find_archived,
        find_archived_parents=partial(find_archived_parents, services.store),
    )
    assert report.rejected == 0, report.errors


def active_ids(services, ids):
    with services.sessions.begin() as session:
        return set(find_active(session, ids))


@pytest.mark.parametrize(
    "shape",
    [
        "one record",
        "deep chain",
        "deep chain, young leaf",
        "wide fan",
        "child aged while parent not",
        "held child",
        "categories at their exact edges",
        "orphan parent unknown",
    ],
)
def test_archive_and_dispose_follow_the_model(services, make_record, shape):
    records, held = shapes(make_record)[shape]
    ids = {r["id"] for r in records}
    load(services, records)
    with services.sessions.begin() as session:
        for record_id in held:
            add_hold(session, "record", record_id, "litigation", utcnow())
    expected = model_archive(records, held, AS_OF)
    dry = run_archive_job(services, AS_OF, dry_run=True)
    assert dry.archived == len(expected)
    assert dry.held_back == len(model_processes(records)) - len(
        [p for p in model_processes(records) if p <= expected]
    )
    report = run_archive_job(services, AS_OF)
    assert report.archived == len(expected)
    assert services.store.find_archived(ids) == expected
    assert active_ids(services, ids) == ids - expected
    for process in model_processes(records):  # never split
        assert process <= expected or not process & expected

    dispose_at = AS_OF.replace(year=AS_OF.year + 12)
    purge = model_dispose(records, expected, held, dispose_at)
    assert run_dispose_job(services, dispose_at, dry_run=True).purged == len(purge)
    assert run_dispose_job(services, dispose_at).purged == len(purge)
    assert {i for i in expected if services.store.info(i).state == "purged"} == purge
    assert services.store.verify() == []


def test_a_process_larger_than_a_batch_moves_whole(services, make_record):
    # conftest's batch_size is 200: a fan of 450 and some loners around it
    records = [rec(make_record, "BIG")] + [
        rec(make_record, f"BIG-{i:03d}", parent="BIG") for i in range(450)
    ] + [rec(make_record, f"LONE-{i}") for i in range(300)]
    load(services, records)
    report = run_archive_job(services, AS_OF)
    assert report.archived == 751
    assert services.store.find_archived(["BIG", "BIG-449"]) == {"BIG", "BIG-449"}


def test_a_hold_on_the_customer_of_one_record_holds_the_process(services, make_record):
    records = [
        rec(make_record, "C-ROOT", customer_id="C1"),
        rec(make_record, "C-KID", parent="C-ROOT", customer_id="C-HOLD"),
    ]
    load(services, records)
    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-HOLD", "audit", utcnow())
    assert run_archive_job(services, AS_OF).archived == 0
    assert active_ids(services, ["C-ROOT", "C-KID"]) == {"C-ROOT", "C-KID"}


def test_a_hold_on_an_archived_record_keeps_its_process_from_disposal(services, make_record):
    load(services, [rec(make_record, "K"), rec(make_record, "K-1", parent="K")])
    run_archive_job(services, AS_OF)
    with services.sessions.begin() as session:
        add_hold(session, "record", "K-1", "litigation", utcnow())
    assert run_dispose_job(services, AS_OF.replace(year=2040)).purged == 0
    assert services.store.find_archived(["K", "K-1"]) == {"K", "K-1"}


def test_a_child_added_to_an_archived_process_joins_it(services, make_record):
    load(services, [rec(make_record, "A")])
    run_archive_job(services, AS_OF)
    young = iso(AS_OF - timedelta(days=10))
    load(services, [rec(make_record, "A-1", parent="A", updated=young)])
    # the young child is of A's process: it moves once it is aged, and joins A in the archive
    assert run_archive_job(services, AS_OF).archived == 0
    later = AS_OF + timedelta(days=400)
    assert run_archive_job(services, later).archived == 1
    assert services.store.find_archived(["A", "A-1"]) == {"A", "A-1"}


def test_reconcile_keeps_a_process_whole_when_the_crm_changed_one_record(
    services, make_record
):
    """A crash after the store write, before the delete; the CRM then updates one record of
    the process: reconcile keeps the whole process active, not just the changed record."""
    from archivist.active_db import upsert_records
    from archivist.records import parse_record
    from indexer.jobs.archiver import _item
    from indexer.jobs.reconcile import reconcile_pending

    records = [rec(make_record, "W"), rec(make_record, "W-1", parent="W"),
               rec(make_record, "W-2", parent="W")]
    load(services, records)
    services.store.archive_batch(
        [_item(parse_record(r)) for r in records], utcnow(), "archiver"
    )  # ... and the archiver dies here
    changed = {**records[2], "updated_at": iso(AS_OF), "body": "the customer wrote again"}
    with services.sessions.begin() as session:
        upsert_records(session, [parse_record(changed)])
    reconcile_pending(services.sessions, services.store, utcnow())
    assert active_ids(services, ["W", "W-1", "W-2"]) == {"W", "W-1", "W-2"}
    assert services.store.find_archived(["W", "W-1", "W-2"]) == set()
    assert list(services.store.iter_pending()) == []
    assert services.store.verify() == []
