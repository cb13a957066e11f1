"""`archivist index --rebuild` frees the previous generation as soon as nobody reads it."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_a_generation_goes_when_its_last_reader_closes(services, make_record):
    archive(services, make_record)
    index_dir = services.index.directory
    reader = SearchIndex.open(index_dir)
    reader.search(SearchQuery(q="parcel"))
    rebuild_index(services.store, services.index)
    assert generations(index_dir) == ["g000001", "g000002"]
    reader.close()  # ended without searching again
    assert generations(index_dir) == ["g000002"]


def test_a_generation_left_by_a_reader_that_died_goes_at_the_next_open(services, make_record):
    archive(services, make_record)
    index_dir = services.index.directory
    with subprocess.Popen(
        [sys.executable, "-c", _READ_THEN_DIE, str(index_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as reader:
        assert reader.stdout is not None
        assert reader.stdout.readline() == "reading\n"
        rebuild_index(services.store, services.index)
        reader.communicate("die\n", timeout=30)
    assert reader.returncode == 0  # exited without closing anything
    assert generations(index_dir) == ["g000001", "g000002"]
    SearchIndex.open(index_dir).close()
    assert generations(index_dir) == ["g000002"]


_READ_THEN_DIE = """
import os, sys
from indexer.search import SearchQuery
from indexer.whoosh.index import SearchIndex
SearchIndex.open(sys.argv[1]).search(SearchQuery(q="parcel"))
print("reading", flush=True)
sys.stdin.readline()
os._exit(0)
"""
