"""`archivist index --rebuild` frees the previous generation as soon as nobody reads it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

from archivist.importer import import_lines
from indexer.jobs.indexing import rebuild_index
from indexer.jobs.runs import run_archive_job
from indexer.search import SearchQuery
from indexer.whoosh.index import SearchIndex
from indexer.whoosh.snapshots import GenerationHolds

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
from indexer.whoosh.snapshots import GenerationHolds
SearchIndex.open(sys.argv[1]).search(SearchQuery(q="parcel"))
print("reading", flush=True)
sys.stdin.readline()
os._exit(0)
"""


def test_a_new_generation_deleted_as_it_was_taken_is_not_held(tmp_path):
    """A process deleting generations nobody holds may find a rebuild's before the rebuild
    holds it: the rebuild then sees it go, and makes another."""
    gen = tmp_path / "g000002"
    gen.mkdir()
    fd = os.open(gen / "HOLD", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the deleter holds it, in another process
    taken: list[bool] = []
    taker = threading.Thread(target=lambda: taken.append(GenerationHolds().take(gen, new=True)))
    taker.start()
    time.sleep(0.2)  # waiting for the deleter
    shutil.rmtree(gen)
    os.close(fd)
    taker.join(timeout=30)
    assert taken == [False]
