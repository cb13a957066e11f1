"""Deeply nested attributes and failing index workers end a job with an error, never a hang."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from archive_store import ArchiveItem
from archivist.errors import InvalidRecord
from archivist.records import MAX_ATTRIBUTE_DEPTH, parse_record
from indexer.search import SearchQuery
from tests.conftest import write_jsonl
from tests.test_cli import archivist

HANG = 120  # seconds after which a job counts as hung


def nested(depth: int) -> dict[str, Any]:
    """An attributes object with ``depth`` objects inside one another (itself included)."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def test_import_refuses_attributes_nested_too_deeply_naming_the_line(
    config_path: Path, tmp_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    config = str(config_path)
    assert archivist("init", "--config", config).returncode == 0
    write_jsonl(
        tmp_path / "in.jsonl",
        [
            make_record(id="ok", attributes=nested(MAX_ATTRIBUTE_DEPTH)),
            make_record(id="deep", attributes=nested(600)),
            make_record(id="deep-list", attributes={"a": [[[[]]]] * 1, "b": nested(70)}),
        ],
    )
    result = archivist("import", str(tmp_path / "in.jsonl"), "--config", config)
    assert result.stdout.strip() == "imported 1, rejected 2"
    reason = f"attributes are nested more than {MAX_ATTRIBUTE_DEPTH} levels deep"
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["line 2", "line 3"]
    assert all(reason in line for line in lines)


def test_nesting_depth_counts_arrays_and_objects(make_record: Callable[..., Any]) -> None:
    inside_lists: Any = {"leaf": 1}
    for _ in range(MAX_ATTRIBUTE_DEPTH - 2):
        inside_lists = [inside_lists]
    parse_record(make_record(attributes={"k": inside_lists}))  # exactly the limit
    with pytest.raises(InvalidRecord, match="nested more than"):
        parse_record(make_record(attributes={"k": [inside_lists]}))


def _archive_directly(services: Any, records: list[dict[str, Any]]) -> None:
    """Put records into the archive as an earlier version did, before import limited depth."""
    flat = [parse_record({k: v for k, v in r.items() if k != "attributes"}) for r in records]
    items = [
        ArchiveItem(r["id"], r, f.category, f.customer_id, f.updated)
        for r, f in zip(records, flat, strict=True)
    ]
    services.store.archive_batch(items, flat[0].updated, "test")


def test_rebuild_of_an_archive_holding_deep_attributes_finishes(
    services: Any, config_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    deep = make_record(id="DEEP-1", body="refund", attributes=nested(600))
    _archive_directly(services, [deep, make_record(id="FLAT-1", body="refund")])
    config = str(config_path)
    assert archivist("index", "--config", config).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-m", "archivist", "index", "--rebuild", "--config", config],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert proc.returncode == 0, proc.stderr
    assert archivist("verify", "--config", config).returncode == 0
    hits = {h.id for h in services.index.search(SearchQuery(q="refund")).hits}
    assert hits == {"DEEP-1", "FLAT-1"}
    # and the record is given back verbatim, attributes included
    assert services.store.get("DEEP-1")["attributes"] == nested(600)


BUILD = """
import sys, threading
from datetime import UTC, datetime
from pathlib import Path
from indexer.errors import IndexerError
from indexer.whoosh.index import SearchIndex

def record(i, **over):
    r = {"id": f"R{i}", "kind": "note", "category": "support", "customer_id": None,
         "owner": None, "subject": "s", "body": "refund", "status": "closed",
         "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z"}
    r.update(over)
    return r

deep = {"leaf": True}
for _ in range(600):
    deep = {"x": deep}
at = datetime(2026, 1, 1, tzinfo=UTC)
docs = [(record(i), at) for i in range(3000)]
docs[1234] = (record(1234, {bad}), at)
index = SearchIndex.open(Path(sys.argv[1]))
try:
    index.{call}
except IndexerError as e:
    print("failed:", e)
    sys.exit(3)
print("built")
"""


@pytest.mark.parametrize(
    ("bad", "outcome"),
    [
        # attributes are not indexed, so they are not sent to the workers: the build succeeds
        ("attributes=deep", "built"),
        # the feeder thread cannot pickle a batch
        ("status=threading.Lock()", "failed: index workers failed: record 'R1234' cannot be"),
        # a worker process fails on a record
        ("kind=12345", "failed: index workers failed: AttributeError"),
    ],
    ids=["deep-attributes", "feeder", "worker"],
)
@pytest.mark.parametrize(
    "call", ["rebuild(docs)", "stage(docs, processes=True)"], ids=["rebuild", "stage"]
)
def test_a_failing_feeder_or_worker_ends_the_build_with_an_error(
    tmp_path: Path, bad: str, outcome: str, call: str
) -> None:
    code = textwrap.dedent(BUILD).replace("{bad}", bad).replace("{call}", call)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "index")],
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert proc.stdout.startswith(outcome), (proc.stdout, proc.stderr)
    assert proc.returncode == (0 if outcome == "built" else 3)
    assert "Traceback" not in proc.stderr  # no thread died with an unhandled exception
