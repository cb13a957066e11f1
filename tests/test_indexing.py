"""Store and index in step: exactly-once indexing, restore/dispose leave search, rebuild, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

from archivist.active_db import find_active, utcnow
from archivist.config import load_config
from archivist.importer import import_lines
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.indexing import check_index_agreement, rebuild_index, sync_index
from indexer.jobs.restore import restore_record
from indexer.jobs.runs import run_archive_job, run_dispose_job
from indexer.search import SearchQuery
from indexer.services import Services

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def load(services, records):
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    report = import_lines(lines, services.sessions, services.store.find_archived)
    assert report.rejected == 0, report.errors


def found(services, q="", **filters):
    page = services.index.search(SearchQuery(q=q, per_page=100, **filters))
    return sorted(hit.id for hit in page.hits)


def test_archive_job_indexes_each_batch(services, make_record):
    load(services, [make_record(id=f"A{i}", body=f"refund number {i}") for i in range(450)])
    report = run_archive_job(services, AS_OF)
    assert (report.archived, report.indexed) == (450, 450)
    assert services.index.doc_count() == 450
    assert services.store.counts()["indexed"] == 450
    assert found(services, "id:A7") == ["A7"]
    assert services.index.search(SearchQuery(q="refunded")).total == 450


def test_crash_between_store_write_and_index_commit_is_repaired(config_path, services, make_record):
    load(services, [make_record(id=f"K{i}", body="escalated shipment") for i in range(300)])
    env = {**os.environ, "ARCHIVIST_CRASH_AT": "index.before_mark:1"}
    command = [
        sys.executable,
        "-m",
        "archivist",
        "archive",
        "--as-of",
        "2026-06-01",
        "--config",
        str(config_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    with Services.open(load_config(config_path)) as fresh:
        # both batches archived (the run indexes them together), their index unmarked
        assert fresh.store.counts()["archived"] == 300
        assert fresh.store.counts()["indexed"] == 0
        subprocess.run(
            [*command[:3], "index", "--config", str(config_path)], check=True, timeout=120
        )
        subprocess.run(command, check=True, timeout=120)
        assert fresh.store.counts()["indexed"] == 300
        ids = list(fresh.index.iter_ids())
        assert len(ids) == len(set(ids)) == 300  # nothing indexed twice
        assert fresh.index.search(SearchQuery(q="escalate")).total == 300
        assert check_index_agreement(fresh.store, fresh.index) == ([], 0)


def test_restore_and_dispose_remove_from_search(services, make_record):
    load(
        services,
        [
            make_record(id="R1", body="warranty claim", updated_at="2020-01-01T00:00:00Z"),
            make_record(id="R2", body="warranty claim", updated_at="2020-01-01T00:00:00Z"),
            make_record(id="R3", body="warranty claim", updated_at="2025-01-01T00:00:00Z"),
        ],
    )
    run_archive_job(services, AS_OF)
    assert found(services, "warranty") == ["R1", "R2", "R3"]

    restore_record(services.sessions, services.store, services.index, "R3", "admin", utcnow())
    assert found(services, "warranty") == ["R1", "R2"]
    with services.sessions.begin() as session:
        assert "R3" in find_active(session, ["R3"])

    assert run_dispose_job(services, datetime(2025, 1, 2, tzinfo=UTC)).purged == 2
    assert found(services, "warranty") == []
    assert check_index_agreement(services.store, services.index) == ([], 0)


def test_rebuild_gives_the_same_results_as_incremental_indexing(services, make_record):
    from archivist.demo_data import generate_records

    load(services, list(generate_records(1500, seed=5)))
    run_archive_job(services, datetime(2030, 1, 1, tzinfo=UTC))
    queries = [
        SearchQuery(q="refund", per_page=100),
        SearchQuery(q="退款", per_page=100, sort="newest"),
        SearchQuery(q='"damaged device"', per_page=100),
        SearchQuery(categories=("finance",), per_page=100, sort="oldest"),
        SearchQuery(
            q="invoice",
            date_from=datetime(2021, 1, 1, tzinfo=UTC),
            date_to=datetime(2022, 12, 31, tzinfo=UTC),
            per_page=50,
            page=2,
        ),
    ]
    before = [services.index.search(q) for q in queries]
    assert rebuild_index(services.store, services.index) == 1500
    after = [services.index.search(q) for q in queries]
    for b, a in zip(before, after, strict=True):
        assert (a.total, [h.id for h in a.hits], a.facets) == (
            b.total,
            [h.id for h in b.hits],
            b.facets,
        )
        assert b.total > 0
    assert check_index_agreement(services.store, services.index) == ([], 0)


def test_changes_during_a_rebuild_reach_the_new_index(services, make_record):
    load(
        services,
        [
            make_record(id=f"B{i}", body="loyalty discount", updated_at="2020-01-01T00:00:00Z")
            for i in range(50)
        ],
    )
    run_archive_job(services, AS_OF)
    store, index = services.store, services.index
    start = store.last_seq()
    # a restore lands after the rebuild read the store and before its swap
    records = [(r, e.archived_at) for e, r in store.iter_records("archived")]
    restore_record(services.sessions, store, index, "B7", "admin", utcnow())
    index.rebuild(records)
    with store.indexing():
        store.mark_rebuilt(start)
    sync_index(store, index)
    assert "B7" not in found(services, "loyalty")
    assert len(found(services, "loyalty")) == 49


def test_verify_names_a_record_missing_from_the_index(services, make_record):
    load(services, [make_record(id=f"V{i}") for i in range(5)])
    archive_due_records(
        services.sessions,
        services.store,
        services.config.retention,
        AS_OF,
        utcnow(),
        index_batch=lambda batch: sync_index(services.store, services.index),
    )
    services.index.delete(["V3"])  # the index lost a record behind the catalog's back
    problems, waiting = check_index_agreement(services.store, services.index)
    assert [(p.record_id, p.reason) for p in problems] == [
        ("V3", "archived but missing from the index")
    ]
    assert waiting == 0


def test_iter_hits_streams_every_match_in_page_order(services):
    from dataclasses import replace

    from archivist.demo_data import generate_records

    load(services, list(generate_records(1200, seed=9)))
    run_archive_job(services, datetime(2030, 1, 1, tzinfo=UTC))
    for query in [
        SearchQuery(q="refund", per_page=100),
        SearchQuery(sort="oldest", per_page=100),
        SearchQuery(q="发票", categories=("billing", "finance"), sort="newest", per_page=100),
        SearchQuery(date_from=datetime(2022, 1, 1, tzinfo=UTC), date_field="updated_at",
                    per_page=100),
    ]:
        first = services.index.search(query)
        paged = [hit.id for hit in first.hits]
        for number in range(2, (first.total + 99) // 100 + 1):
            paged += [hit.id for hit in services.index.search(replace(query, page=number)).hits]
        streamed = list(services.index.iter_hits(query, chunk=64))
        assert [hit.id for hit in streamed] == paged
        assert len(paged) == first.total > 0
        assert all(hit.snippet == "" and hit.created_at for hit in streamed)


def test_iter_hits_skips_a_record_restored_mid_stream(services, make_record):
    load(services, [make_record(id=f"S{i:03d}", body="quarterly statement",
                                updated_at="2020-01-01T00:00:00Z") for i in range(30)])
    run_archive_job(services, AS_OF)
    stream = services.index.iter_hits(SearchQuery(q="statement", sort="oldest"), chunk=10)
    seen = [next(stream).id for _ in range(10)]
    restore_record(services.sessions, services.store, services.index, "S029", "admin", utcnow())
    seen += [hit.id for hit in stream]
    assert len(seen) == 29 and "S029" not in seen


def test_prepare_deletes_opens_the_id_lookups_a_restore_needs(config, make_record, monkeypatch):
    """A server prepares deletes at start: its first restore then opens no segment reader."""
    from whoosh import reading

    with Services.open(config, create=True) as services:
        load(services, [
            make_record(id=f"P{i}", created_at=f"20{18 + i % 3}-05-01T00:00:00Z")
            for i in range(30)
        ])
        run_archive_job(services, AS_OF)
    opened: list[object] = []
    real_init = reading.SegmentReader.__init__

    def counting_init(self, *args, **kwargs):
        opened.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(reading.SegmentReader, "__init__", counting_init)
    for prepare in (False, True):
        with Services.open(config) as services:
            if prepare:
                services.index.prepare_deletes()
            opened.clear()
            restore_record(
                services.sessions, services.store, services.index, f"P{int(prepare)}", "admin",
                utcnow(),
            )
            assert bool(opened) is not prepare  # (without it, the restore opens readers)
            assert found(services, f"id:P{int(prepare)}") == []


def test_a_restore_s_late_removal_leaves_a_record_archived_again_in_search(
    services, make_record
):
    """A restore commits, then (before it takes its records out of search) an archive run
    moves the record out again and its catch-up indexes it: the restore's removal, coming
    last, must not take the archived record out of search."""
    from indexer.jobs.indexing import drop_restored

    load(services, [make_record(id="L1", body="warranty claim", updated_at="2020-01-01T00:00:00Z")])
    run_archive_job(services, AS_OF)
    as_archived = services.store.get("L1")
    restore_record(services.sessions, services.store, services.index, "L1", "admin", utcnow())
    later = datetime(2040, 1, 1, tzinfo=UTC)  # past the restore grace
    assert run_archive_job(services, later).indexed == 1
    assert found(services, "warranty") == ["L1"]

    drop_restored(services.store, services.index, [as_archived])  # the restore's, late

    assert found(services, "warranty") == ["L1"]
    assert services.store.info("L1").state == "archived"
    assert check_index_agreement(services.store, services.index) == ([], 0)
