"""The archiving job and disposal: round trip, exact age boundaries, policies, legal holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from archive_store import RecordNotFound
from archive_store.segment import iter_frames
from archivist.active_db import find_active, utcnow
from archivist.holds import add_hold, remove_hold
from archivist.importer import import_lines
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.runs import run_archive_job, run_dispose_job

AS_OF = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def load(services, records):
    report = import_lines(
        [json.dumps(r, ensure_ascii=False).encode() for r in records],
        services.sessions,
        services.store.find_archived,
    )
    assert report.rejected == 0, report.errors
    return records


def decoded_entries(services):
    """Every entry payload in the store's segment files, decompressed."""
    for path in sorted((services.config.archive_dir / "segments").iterdir()):
        with path.open("rb") as f:
            for _, frame in iter_frames(f):
                yield services.store.open_frame(frame)


def active_ids(services, ids):
    with services.sessions.begin() as session:
        return set(find_active(session, ids))


def test_archived_record_reads_back_identical(services, make_record):
    records = load(
        services,
        [
            make_record(
                id="E1",
                body="Refund requested, invoice INV-2023-004512",
                attributes={"channel": "email", "tags": ["vip"], "score": 1.5},
            ),
            make_record(
                id="Z1",
                subject="退款申请",
                body="客户要求退款。\n第二行",
                created_at="2020-01-01T08:00:00+08:00",
                updated_at="2020-01-02T10:00:00.123+08:00",
            ),
        ],
    )
    report = run_archive_job(services, AS_OF)
    assert (report.archived, report.by_category) == (2, {"support": 2})
    assert active_ids(services, ["E1", "Z1"]) == set()
    assert services.store.get("E1") == records[0]
    assert services.store.get("Z1") == {
        **records[1],
        "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2020-01-02T02:00:00.123000Z",
    }
    assert services.store.info("E1").state == "archived"
    assert services.store.verify() == []


@pytest.mark.parametrize(
    ("category", "days"),
    [("support", 365), ("finance", 180), ("medical", 365), ("unlisted", 365)],
)
def test_archive_boundary_is_exact_per_category(services, make_record, category, days):
    boundary = AS_OF - timedelta(days=days)
    load(
        services,
        [
            make_record(id="at", category=category, updated_at=iso(boundary)),
            make_record(
                id="before", category=category, updated_at=iso(boundary - timedelta(seconds=1))
            ),
            make_record(
                id="after", category=category, updated_at=iso(boundary + timedelta(seconds=1))
            ),
        ],
    )
    assert run_archive_job(services, AS_OF, dry_run=True).by_category == {category: 2}
    assert run_archive_job(services, AS_OF).archived == 2
    assert active_ids(services, ["at", "before", "after"]) == {"after"}
    assert services.store.find_archived(["at", "before", "after"]) == {"at", "before"}


def test_holds_stop_archiving_and_disposal(services, make_record):
    old = iso(AS_OF - timedelta(days=4000))
    load(
        services,
        [
            make_record(id="held-record", updated_at=old),
            make_record(id="held-customer", customer_id="C-HOLD", updated_at=old),
            make_record(id="held-category", category="legal", updated_at=old),
            make_record(id="free", customer_id=None, updated_at=old),
        ],
    )
    with services.sessions.begin() as session:
        add_hold(session, "record", "held-record", "litigation 42", utcnow())
        add_hold(session, "customer", "C-HOLD", "audit", utcnow())
        add_hold(session, "category", "legal", "regulator request", utcnow())
    assert run_archive_job(services, AS_OF).archived == 1
    assert active_ids(services, ["held-record", "held-customer", "held-category", "free"]) == {
        "held-record",
        "held-customer",
        "held-category",
    }

    with services.sessions.begin() as session:
        remove_hold(session, "customer", "C-HOLD")
        remove_hold(session, "record", "held-record")
    assert run_archive_job(services, AS_OF).archived == 2
    with services.sessions.begin() as session:
        add_hold(session, "record", "free", "new claim", utcnow())
    # everything is past the 5-year default now; only the held one stays
    assert run_dispose_job(services, AS_OF).purged == 2
    assert services.store.info("free").state == "archived"
    assert services.store.verify() == []


def test_a_preview_counts_processes_a_hold_keeps_back(services, make_record):
    """`archive --dry-run` and the admin page say how many processes stay for a hold too, not
    only those with a record not aged yet."""
    old = iso(AS_OF - timedelta(days=4000))
    load(services, [
        make_record(id="H1", customer_id="C-HOLD", updated_at=old),
        make_record(id="H2", category="legal", customer_id=None, updated_at=old),
        make_record(id="F1", customer_id=None, updated_at=old),
    ])
    with services.sessions.begin() as session:
        add_hold(session, "customer", "C-HOLD", "litigation", utcnow())
        add_hold(session, "category", "legal", "regulator", utcnow())
    preview = run_archive_job(services, AS_OF, dry_run=True)
    assert (preview.archived, preview.held_back) == (1, 2)
    assert run_archive_job(services, AS_OF).archived == 1


def test_a_category_hold_holds_the_category_whatever_its_case(services, make_record):
    """Search finds `Billing` for `category=billing`; a hold placed on what was searched must
    keep both spellings from archiving and from disposal."""
    old = iso(AS_OF - timedelta(days=4000))
    load(services, [
        make_record(id="upper", category="Billing", updated_at=old),
        make_record(id="lower", category="billing", updated_at=old),
        make_record(id="other", category="support", updated_at=old),
    ])
    with services.sessions.begin() as session:
        add_hold(session, "category", "billing", "regulator request", utcnow())
    assert run_archive_job(services, AS_OF, dry_run=True).by_category == {"support": 1}
    assert run_archive_job(services, AS_OF).archived == 1
    assert active_ids(services, ["upper", "lower", "other"]) == {"upper", "lower"}

    with services.sessions.begin() as session:
        remove_hold(session, "category", "billing")
    assert run_archive_job(services, AS_OF).archived == 2
    with services.sessions.begin() as session:
        add_hold(session, "category", "BILLING", "a new claim", utcnow())
    assert run_dispose_job(services, AS_OF).purged == 1  # past the default 5 years
    assert {services.store.info(i).state for i in ("upper", "lower")} == {"archived"}


def test_disposal_boundary_is_exact_and_purges_for_good(services, make_record):
    boundary = AS_OF.replace(year=AS_OF.year - 7)  # finance keeps 7 years
    load(
        services,
        [
            make_record(id="due", category="finance", updated_at=iso(boundary), body="secret body"),
            make_record(
                id="kept", category="finance", updated_at=iso(boundary + timedelta(seconds=1))
            ),
        ],
    )
    run_archive_job(services, AS_OF)
    assert run_dispose_job(services, AS_OF, dry_run=True).by_category == {"finance": 1}
    assert run_dispose_job(services, AS_OF).purged == 1
    with pytest.raises(RecordNotFound, match="purged"):
        services.store.get("due")
    assert services.store.get("kept")["id"] == "kept"
    assert [e.event for e in services.store.history("due")] == ["archived", "purged"]
    assert not any(b"secret body" in payload for payload in decoded_entries(services))
    assert any(b"kept" in payload for payload in decoded_entries(services))
    assert services.store.verify() == []


def test_rerun_archives_nothing_twice(services, make_record):
    load(services, [make_record(id=f"N{i}", updated_at="2020-01-01T00:00:00Z") for i in range(450)])
    assert run_archive_job(services, AS_OF).archived == 450
    assert run_archive_job(services, AS_OF).archived == 0
    assert services.store.counts()["archived"] == 450


def test_a_record_changed_while_moving_stays_active_even_with_its_time_kept(
    services, make_record, monkeypatch
):
    """An import may change a record and keep its `updated_at`: if it lands while the record's
    batch is moving, the change must not be deleted with the copy archived before it."""
    from archive_store import ArchiveStore

    old = "2020-01-01T00:00:00Z"
    load(services, [make_record(id=f"M{i}", updated_at=old, body="ORIGINAL") for i in range(3)])
    edited = make_record(id="M1", updated_at=old, body="EDITED", category="medical")
    original = ArchiveStore.archive_batch

    def the_crm_edits_then_archive(self, items, at, actor):
        load(services, [edited])  # after the batch was read, before the store's write
        return original(self, items, at, actor)

    monkeypatch.setattr(ArchiveStore, "archive_batch", the_crm_edits_then_archive)
    assert run_archive_job(services, AS_OF).archived == 2

    with services.sessions.begin() as session:
        kept = find_active(session, ["M0", "M1", "M2"])
    assert set(kept) == {"M1"} and kept["M1"].body == "EDITED"
    assert kept["M1"].category == "medical"
    assert services.store.info("M1").state == "restored"  # its archived copy is not current
    assert services.store.info("M1").restored_at is None  # never left: no restore grace
    monkeypatch.setattr(ArchiveStore, "archive_batch", original)
    assert run_archive_job(services, AS_OF).archived == 1  # settled by the next run
    assert services.store.get("M1")["body"] == "EDITED"
    assert [e.event for e in services.store.history("M1")] == ["archived", "restored", "archived"]
    assert services.store.verify() == []


def test_two_archive_runs_at_once_never_leave_a_record_in_neither_place(
    services, make_record, monkeypatch
):
    """The worker's run and an `archivist archive` may start together: the second must not
    take rows the first has just moved for rows the CRM changed, and mark them restored."""
    import threading

    from archive_store import ArchiveStore

    old = "2020-01-01T00:00:00Z"
    load(services, [make_record(id=f"T{i}", updated_at=old) for i in range(6)])
    original = ArchiveStore.moving
    second: list[threading.Thread] = []

    def another_run_meanwhile(self):
        if not second:  # the first run's first batch, planned but not moving yet
            second.append(threading.Thread(target=run_archive_job, args=(services, AS_OF)))
            second[0].start()
            second[0].join(timeout=5)  # it finishes, or waits for this batch to end
        return original(self)

    monkeypatch.setattr(ArchiveStore, "moving", another_run_meanwhile)
    run_archive_job(services, AS_OF)
    second[0].join()

    ids = [f"T{i}" for i in range(6)]
    assert active_ids(services, ids) == set()
    assert {i: services.store.info(i).state for i in ids} == dict.fromkeys(ids, "archived")
    assert services.store.verify() == []


def test_restored_record_that_ages_again_is_archived_as_a_new_version(services, make_record):
    from indexer.jobs.restore import restore_record

    record = load(services, [make_record(id="RA", updated_at="2020-01-01T00:00:00Z")])[0]
    run_archive_job(services, AS_OF)
    restore_record(services.sessions, services.store, None, "RA", "admin", utcnow())
    assert active_ids(services, ["RA"]) == {"RA"}
    # a restore counts as an update for ageing: the record is aged again a year after it
    after_grace = utcnow() + timedelta(days=366)
    assert run_archive_job(services, after_grace).archived == 1
    assert active_ids(services, ["RA"]) == set()
    assert services.store.get("RA") == record
    assert services.store.info("RA").version == 2
    assert [e.event for e in services.store.history("RA")] == ["archived", "restored", "archived"]
    assert services.store.verify() == []


def test_a_batch_leaves_a_record_being_restored_in_the_active_database(services, make_record):
    """A restore runs beside the archive job: if the job finds the record after the restore
    put it back but before the restore finished, the job moves the others and leaves it."""
    from archivist.active_db import insert_record
    from archivist.records import record_from_json

    load(services, [make_record(id="RB", updated_at="2020-01-03T00:00:00Z")])
    run_archive_job(services, AS_OF)
    load(services, [
        make_record(id=f"RC{i}", updated_at=f"2020-01-0{i}T00:00:00Z") for i in (1, 2, 4)
    ])
    batches: list[list[str]] = []

    def index_batch(batch):
        if not batches:  # after the job's first batch, a restore of RB begins and inserts it
            services.store.begin_restore("RB")
            with services.sessions.begin() as session:
                insert_record(session, record_from_json(services.store.get("RB")))
        batches.append([record.id for record, _ in batch])
        return len(batch)

    report = archive_due_records(
        services.sessions, services.store, services.config.retention, AS_OF, utcnow(),
        batch_size=2, index_batch=index_batch, index_every=1,
    )

    assert batches == [["RC1", "RC2"], ["RC4"]]  # the second batch read RB too, and left it
    assert report.archived == 3
    assert active_ids(services, ["RB", "RC1", "RC2", "RC4"]) == {"RB"}
    assert services.store.info("RB").pending == "insert_active"
    services.store.complete_restore("RB", utcnow(), "admin")
    assert [e.event for e in services.store.history("RB")] == ["archived", "restored"]
    assert services.store.verify() == []


def test_a_run_hands_its_batches_to_the_indexer_together(services, make_record):
    def run(first: int, index_every: int) -> list[list[str]]:
        """Archive three records in each of three policy groups (finance and medical have
        their own), in batches of at most 2; return what the indexer was handed, call by call."""
        numbers = (first, first + 1, first + 2)
        load(services, [
            make_record(id=f"{category[0].upper()}{i}", category=category,
                        updated_at=f"2010-01-0{i}T00:00:00Z")
            for category in ("finance", "medical", "support") for i in numbers
        ])
        handed: list[list[str]] = []

        def index_batch(batch):
            handed.append(sorted(record.id for record, _ in batch))
            return len(batch)

        report = archive_due_records(
            services.sessions, services.store, services.config.retention, AS_OF, utcnow(),
            batch_size=2, index_batch=index_batch, index_every=index_every,
        )
        assert report.archived == report.indexed == 9
        return handed

    # all six batches at once
    assert run(1, 20_000) == [["F1", "F2", "F3", "M1", "M2", "M3", "S1", "S2", "S3"]]
    # whenever at least 3 are waiting (here after each group's two batches)
    assert run(4, 3) == [["F4", "F5", "F6"], ["M4", "M5", "M6"], ["S4", "S5", "S6"]]


def test_stats_count_a_record_whose_move_is_unfinished_as_active_only(services, make_record):
    """Stored and marked pending, its active row not deleted yet (a batch under way, or one
    a crash cut off): the record is in the active database still, and counted there only."""
    from archive_store import ArchiveItem
    from archivist.importer import import_lines
    from archivist.records import parse_record
    from indexer.stats import collect_stats

    lines = [json.dumps(make_record(id=f"M-{n}")).encode() for n in range(3)]
    import_lines(lines, services.sessions, services.store.find_archived)
    record = parse_record(make_record(id="M-0"))
    services.store.archive_batch([ArchiveItem(
        record.id, record.to_json(), record.category, record.customer_id, record.updated,
    )], record.updated, "archiver")
    assert [e.pending for e in services.store.iter_pending()] == ["delete_active"]

    stats = collect_stats(services)

    assert (stats["active"], stats["archived"]) == (3, 0)
