"""Records written on both cores beside the live index, then attached under the index lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from archivist.active_db import utcnow
from archivist.demo_data import generate_records
from indexer.jobs import indexing
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.indexing import BULK_MIN, check_index_agreement, rebuild_index, sync_index
from indexer.jobs.restore import restore_record
from indexer.search import SearchQuery
from indexer.whoosh.index import SearchIndex
from tests.test_indexing import load
from tests.test_search import CORPUS

AS_OF = datetime(2030, 1, 1, tzinfo=UTC)

QUERIES = [
    SearchQuery(q="refund", per_page=100),
    SearchQuery(q="退款", per_page=100, sort="newest"),
    SearchQuery(q='"damaged device"', per_page=100),
    SearchQuery(categories=("finance",), per_page=100, sort="oldest"),
    SearchQuery(q="invoice", date_from=datetime(2021, 1, 1, tzinfo=UTC), per_page=50, page=2),
]


def _archive_unindexed(services: Any, count: int) -> None:
    load(services, list(generate_records(count, seed=11)))
    archive_due_records(
        services.sessions, services.store, services.config.retention, AS_OF, utcnow()
    )
    assert services.store.counts()["indexed"] == 0


def _results(index: SearchIndex) -> list[tuple[int, list[str], list[float], Any]]:
    out = []
    for q in QUERIES:
        page = index.search(q)
        out.append(
            (page.total, [h.id for h in page.hits], [h.score for h in page.hits], page.facets)
        )
    return out


@pytest.mark.parametrize("processes", [True, False], ids=["worker processes", "in process"])
def test_staged_catch_up_gives_what_a_rebuild_gives(
    services: Any, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    _archive_unindexed(services, 1200)
    monkeypatch.setattr(indexing, "BULK_PROCESSES", 1000 if processes else 5000)
    written = []
    stage = services.index.stage
    monkeypatch.setattr(
        services.index, "stage", lambda docs, **o: written.append(o) or stage(docs, **o)
    )
    assert sync_index(services.store, services.index, bulk_min=100) == 1200
    assert written == [{"processes": processes}]
    assert services.store.counts()["indexed"] == 1200
    ids = list(services.index.iter_ids())
    assert len(ids) == len(set(ids)) == 1200
    assert check_index_agreement(services.store, services.index) == ([], 0)
    staged = _results(services.index)
    assert all(total > 0 for total, *_ in staged)
    staging = services.index.directory / "g000001" / "_staged"
    assert not staging.exists() or not any(staging.iterdir())
    assert rebuild_index(services.store, services.index) == 1200
    assert _results(services.index) == staged


def test_a_record_restored_while_staged_stays_out_of_search(services: Any, monkeypatch) -> None:
    _archive_unindexed(services, 300)
    index = services.index
    stage = index.stage
    victim = next(e.record_id for e in services.store.iter_unindexed(1))

    def stage_then_restore(docs: Any, **options: Any) -> Any:
        staged = stage(docs, **options)
        # an admin restores one of the records after it was read, before it is attached
        restore_record(services.sessions, services.store, index, victim, "admin", utcnow())
        return staged

    monkeypatch.setattr(index, "stage", stage_then_restore)
    # the restore took its record out of search itself; the other 299 are attached
    assert sync_index(services.store, index, bulk_min=100) == 299
    assert victim not in set(index.iter_ids())
    assert index.doc_count() == 299
    assert check_index_agreement(services.store, index) == ([], 0)
    assert services.store.info(victim).state == "restored"


def test_attaching_replaces_indexed_copies_and_leaves_out_unkept(tmp_path: Path) -> None:
    records = CORPUS[:400]
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(records)
    changed = [({**r, "body": "quetzalcoatl " + r["body"]}, at) for r, at in records[:200]]
    new = [({**r, "id": "N" + r["id"]}, at) for r, at in records[:50]]
    abandoned = tmp_path / "ix" / "g000001" / "_staged" / "999999999-x"
    abandoned.mkdir(parents=True)
    staged = ix.stage(changed + new)
    assert staged is not None
    assert not abandoned.exists()  # left by a process that is gone
    assert ix.search(SearchQuery(q="quetzalcoatl")).total == 0  # staged is not searchable
    dropped = {r["id"] for r, _ in new[:10]}
    keep = {r["id"] for r, _ in changed + new} - dropped
    assert ix.attach(staged, keep, first_versions=[r["id"] for r, _ in new]) == len(keep)
    assert not staged.root.exists()
    assert ix.doc_count() == 400 + 40
    ids = list(ix.iter_ids())
    assert len(ids) == len(set(ids))
    assert set(ids) == {r["id"] for r, _ in records} | (keep - {r["id"] for r, _ in records})
    assert ix.search(SearchQuery(q="quetzalcoatl", per_page=100)).total == 200  # no old copy
    kept_new = sorted(keep - {r["id"] for r, _ in records})
    assert ix.search(SearchQuery(q=f"id:{kept_new[0]}")).total == 1
    assert ix.search(SearchQuery(q=f"id:{sorted(dropped)[0]}")).total == 0


def test_a_rebuild_between_stage_and_attach_attaches_nothing(tmp_path: Path) -> None:
    records = CORPUS[:100]
    ix = SearchIndex.open(tmp_path / "ix")
    staged = ix.stage(records)
    assert staged is not None
    ix.rebuild(CORPUS[100:200])
    assert ix.attach(staged, {r["id"] for r, _ in records}) is None
    assert not staged.root.exists()
    assert set(ix.iter_ids()) == {r["id"] for r, _ in CORPUS[100:200]}
    assert not (staged.gen / "_staged").exists() or os.listdir(staged.gen / "_staged") == []


@pytest.mark.parametrize("point", ["index.staged", "index.before_mark"])
def test_a_crash_in_a_staged_catch_up_is_repaired(config_path: Path, services: Any, point: str):
    count = BULK_MIN + 100
    _archive_unindexed(services, count)
    command = [sys.executable, "-m", "archivist", "index", "--config", str(config_path)]
    env = {**os.environ, "ARCHIVIST_CRASH_AT": f"{point}:1"}
    crashed = subprocess.run(command, env=env, capture_output=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL
    assert services.store.counts()["indexed"] == 0
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    assert services.store.counts()["indexed"] == count
    ids = list(services.index.iter_ids())
    assert len(ids) == len(set(ids)) == count  # nothing indexed twice
    assert check_index_agreement(services.store, services.index) == ([], 0)
    staging = services.index.directory / "g000001" / "_staged"
    assert not staging.exists() or not any(staging.iterdir())


def test_small_catch_ups_share_one_background_thread(services: Any) -> None:
    """Staging a few records runs on the index's one background thread: repeated catch-ups
    open no new store connections (a thread each would leak one per catch-up)."""
    counts = []
    for n in range(4):
        load(services, list(generate_records(30, seed=11, start=1000 * n)))
        archive_due_records(
            services.sessions, services.store, services.config.retention, AS_OF, utcnow()
        )
        assert sync_index(services.store, services.index) == 30
        counts.append(len(services.store._connections))
    assert counts[1] == counts[2] == counts[3] <= 2  # this thread's and the background one
    assert services.store.counts()["indexed"] == services.store.counts()["archived"] == 120


def test_a_staged_catch_up_attaches_one_shard_per_hold_of_the_index_lock(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore waits for one shard's attach at most, not for the whole batch's."""
    _archive_unindexed(services, 400)
    holds: list[list[str]] = []
    attach = services.index.attach
    indexing = services.store.indexing

    @contextmanager
    def counted() -> Any:
        with indexing():
            holds.append([])
            yield

    def noted_attach(staged: Any, keep: Any, **options: Any) -> Any:
        holds[-1].extend(options["shards"])
        return attach(staged, keep, **options)

    monkeypatch.setattr(services.store, "indexing", counted)
    monkeypatch.setattr(services.index, "attach", noted_attach)
    assert sync_index(services.store, services.index, bulk_min=100) == 400
    attached = [shards for shards in holds if shards]
    assert len(attached) > 1  # the generated records span several years
    assert all(len(shards) == 1 for shards in attached)
    assert sorted(s for shards in attached for s in shards) == sorted(
        {s for shards in attached for s in shards}
    )
    assert check_index_agreement(services.store, services.index) == ([], 0)
