"""Damage answered honestly: a damaged archive segment or index is a 503 naming it, never a 500
or a green /healthz, and the server still starts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from indexer.search import SearchQuery
from server import close_app, create_app
from server.serving import worker_app
from tests.test_search_engine import rename_schema_module

# Whoosh leaves a file open when it fails to read a garbled one (its error path, not ours).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def corpus(archived: Callable[..., Any], make_record: Callable[..., dict[str, Any]]) -> None:
    archived(*(make_record(id=f"D-{n}", body=f"refund number {n}") for n in range(5)))


def _segment_files(services: Any) -> list[Path]:
    return sorted((services.config.archive_dir / "segments").glob("*.seg"))


def _garble(path: Path) -> None:
    """Overwrite everything but the first and last bytes: every frame in it is damaged."""
    data = bytearray(path.read_bytes())
    for i in range(1, len(data) - 1):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _index_file(services: Any, pattern: str) -> Path:
    found = sorted(services.config.index_dir.rglob(pattern))
    assert found, pattern
    return found[0]


def _damage(services: Any, what: str) -> None:
    index_dir = services.config.index_dir
    if what == "delete CURRENT":
        (index_dir / "CURRENT").unlink()
    elif what == "garble CURRENT":
        (index_dir / "CURRENT").write_bytes(b"\xff\xfe not a generation")
    elif what == "delete META":
        _index_file(services, "META").unlink()
    elif what == "garble META":
        _index_file(services, "META").write_bytes(b"{not json")
    elif what == "delete .toc":
        _index_file(services, "*.toc").unlink()
        hour_ago = time.time() - 3600  # lost long after it was written
        for path in index_dir.rglob("*.seg"):
            os.utime(path, (hour_ago, hour_ago))
    elif what == "garble .toc":
        _index_file(services, "*.toc").write_bytes(b"\x80\x04garbage")
    elif what == ".toc naming a missing module":
        for toc in index_dir.rglob("*.toc"):
            toc.write_bytes(
                rename_schema_module(toc.read_bytes(), b"indexer.whoosh.analysis", b"gone.away")
            )
    elif what == "delete .seg":
        _index_file(services, "*.seg").unlink()
    elif what == "truncate .seg":
        path = _index_file(services, "*.seg")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        raise AssertionError(what)


INDEX_DAMAGE = [
    "delete CURRENT",
    "garble CURRENT",
    "delete META",
    "garble META",
    "delete .toc",
    "garble .toc",
    ".toc naming a missing module",
    "delete .seg",
    "truncate .seg",
]


def test_damaged_segment_is_503_naming_it_on_read_and_restore(
    services: Any,
    client: Any,
    admin_headers: dict[str, str],
    corpus: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _garble(_segment_files(services)[0])
    for method, path in (("GET", "/api/v1/records/D-1"), ("POST", "/api/v1/records/D-1/restore")):
        response = client.open(path, method=method, headers=admin_headers)
        assert response.status_code == 503, path
        error = response.get_json()["error"]
        assert error["code"] == "segment_corrupt"
        assert "D-1" in error["message"]
    assert any("D-1" in r.getMessage() and r.levelno >= logging.ERROR for r in caplog.records)
    # Nothing moved: the record is still archived, not half restored.
    assert client.get("/api/v1/stats", headers=admin_headers).get_json()["active"] == 0


def test_deleted_segment_is_503_on_read_and_on_healthz(
    services: Any, client: Any, admin_headers: dict[str, str], corpus: None
) -> None:
    assert client.get("/healthz").status_code == 200
    for path in _segment_files(services):
        path.unlink()
    response = client.get("/api/v1/records/D-1", headers=admin_headers)
    assert response.status_code == 503
    assert "segment file is missing" in response.get_json()["error"]["message"]
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["reason"].startswith("archive store cannot be read")
    assert "segment 1 is missing" in health.get_json()["reason"]


@pytest.mark.parametrize("damage", ["garble", "delete"])
def test_search_and_export_over_a_damaged_segment_fail_rather_than_show_blank_text(
    services: Any, client: Any, auditor_headers: dict[str, str], corpus: None, damage: str
) -> None:
    """Hits and export rows read their text from the store: a damaged or missing segment is a
    503 naming the record, and an export breaks off audited as such, never blank text that
    passes for the record's own (with a checksum to match)."""
    import json

    from archivist.active_db import AuditEntry

    for path in _segment_files(services):
        _garble(path) if damage == "garble" else path.unlink()
    response = client.get("/api/v1/search?q=refund", headers=auditor_headers)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "segment_corrupt"
    assert "D-" in response.get_json()["error"]["message"]

    # (the rows of the first chunk are read before the answer starts: a 503 too; later
    # ones break the download off, as a revocation does)
    response = client.get("/api/v1/export.csv?q=refund", headers=auditor_headers)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "segment_corrupt"
    with services.read_sessions.begin() as session:
        entry = session.query(AuditEntry).filter(AuditEntry.action == "export").one()
    assert entry.outcome == "segment_corrupt"
    # nothing was sent: no row count, size or hash that would pass for an empty file's
    assert not {"rows", "bytes", "sha256"} & set(json.loads(entry.details))


@pytest.mark.parametrize("what", INDEX_DAMAGE)
def test_healthz_sees_index_damage_done_while_serving(
    services: Any, client: Any, admin_headers: dict[str, str], corpus: None, what: str
) -> None:
    assert client.get("/api/v1/search?q=refund", headers=admin_headers).get_json()["total"] == 5
    assert client.get("/healthz").status_code == 200
    _damage(services, what)
    health = client.get("/healthz")
    assert health.status_code == 503, what
    assert health.get_json()["reason"].startswith("index cannot be read")


@pytest.mark.parametrize("what", INDEX_DAMAGE)
def test_server_starts_on_a_damaged_index_and_says_so(
    services: Any, admin_headers: dict[str, str], corpus: None, what: str
) -> None:
    _damage(services, what)
    app = worker_app(services.config)  # no exception: it boots as a server process does
    try:
        client = app.test_client()
        health = client.get("/healthz")
        assert health.status_code == 503, what
        assert health.get_json()["reason"].startswith("index cannot be read")
        search = client.get("/api/v1/search?q=refund", headers=admin_headers)
        # Never a 500, never a silent "0 results" from an index that lost its files.
        assert search.status_code in (200, 503), what
        if search.status_code == 200:
            assert search.get_json()["total"] == 5, what
        else:
            assert search.get_json()["error"]["code"] == "index_unavailable"
    finally:
        close_app(app)


def test_a_rebuild_mends_an_index_that_lost_its_current_file(
    services: Any, admin_headers: dict[str, str], corpus: None
) -> None:
    from indexer.jobs.indexing import rebuild_index
    from indexer.services import Services

    _damage(services, "delete CURRENT")
    with Services.open(services.config) as fresh:
        rebuild_index(fresh.store, fresh.index)
    app = create_app(services.config)
    try:
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        search = client.get("/api/v1/search?q=refund", headers=admin_headers)
        assert search.get_json()["total"] == 5
    finally:
        close_app(app)


@pytest.mark.parametrize("what", INDEX_DAMAGE)
def test_a_restore_over_a_damaged_index_restores_and_says_so(
    services: Any, admin_headers: dict[str, str], corpus: None, what: str
) -> None:
    from indexer.jobs.indexing import rebuild_index
    from indexer.services import Services

    _damage(services, what)
    app = create_app(services.config)
    try:
        response = app.test_client().post(
            "/api/v1/records/D-1/restore", json={"reason": "reopened"}, headers=admin_headers
        )
    finally:
        close_app(app)
    assert response.status_code == 200, (what, response.get_json())
    assert response.get_json()["restored"] == ["D-1"]
    assert services.store.info("D-1").state == "restored"
    with Services.open(services.config) as fresh:  # once the index is mended, D-1 is not in it
        rebuild_index(fresh.store, fresh.index)
        hits = fresh.index.search(SearchQuery(q="refund", per_page=100)).hits
        assert sorted(h.id for h in hits) == ["D-0", "D-2", "D-3", "D-4"]
