"""`archivist index --rebuild` frees the previous generation as soon as nobody reads it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from archivist.importer import import_lines
from indexer.jobs.indexing import rebuild_index
from indexer.jobs.runs import run_archive_job
from indexer.search import SearchQuery
from indexer.whoosh.index import SearchIndex

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def generations(index_dir):
    return sorted(p.name for p in index_dir.iterdir() if p.name.startswith("g"))


def archive(services, make_record, count=60):
    lines = [json.dumps(make_record(id=f"G{i}", body="parcel lost")).encode()
             for i in range(count)]
    import_lines(lines, services.sessions, services.store.find_archived)
    assert run_archive_job(services, AS_OF).indexed == count


def test_rebuild_deletes_the_previous_generation_nobody_reads(services, make_record):
    archive(services, make_record)
    index_dir = services.index.directory
    assert generations(index_dir) == ["g000001"]
    assert rebuild_index(services.store, services.index) == 60
    assert generations(index_dir) == ["g000002"]
    assert rebuild_index(services.store, services.index) == 60
    assert generations(index_dir) == ["g000003"]
    assert services.index.search(SearchQuery(q="parcel")).total == 60


def test_a_reader_keeps_the_previous_generation_until_it_lets_go(services, make_record):
    archive(services, make_record)
    index_dir = services.index.directory
    reader = SearchIndex.open(index_dir)  # another process's searcher, say (its own flocks)
    try:
        assert reader.search(SearchQuery(q="parcel")).total == 60  # now reading g000001
        rebuild_index(services.store, services.index)
        assert generations(index_dir) == ["g000001", "g000002"]  # still read
        assert reader.search(SearchQuery(q="parcel")).total == 60  # moves on, lets go
        assert generations(index_dir) == ["g000002"]
    finally:
        reader.close()


def test_a_generation_left_by_a_closed_reader_goes_at_the_next_open(services, make_record):
    archive(services, make_record)
    index_dir = services.index.directory
    reader = SearchIndex.open(index_dir)
    reader.search(SearchQuery(q="parcel"))
    rebuild_index(services.store, services.index)
    reader.close()  # ended without searching again (a process that exited)
    assert generations(index_dir) == ["g000001", "g000002"]
    SearchIndex.open(index_dir).close()
    assert generations(index_dir) == ["g000002"]
