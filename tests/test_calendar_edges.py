"""Records dated at the edges of the calendar (years 1 to 9999) archive, search and restore."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from archivist.active_db import find_active
from indexer.search import SearchQuery
from indexer.search.dates import to_micros
from indexer.whoosh.index import SearchIndex, shard_bounds
from tests.conftest import write_jsonl
from tests.test_cli import archivist

EDGE_YEARS = {
    "E-0001": "0001-01-01T00:00:00Z",
    "E-1899": "1899-06-01T12:00:00Z",
    "E-2301": "2301-06-01T12:00:00Z",
    "E-9999": "9999-12-31T23:59:59.999999Z",
}
LAST_MICROSECOND = datetime.max.replace(tzinfo=UTC)
TICK = timedelta(microseconds=1)


def _edge_records(make_record: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        make_record(id=rid, created_at=created, body="refund of an odd date")
        for rid, created in EDGE_YEARS.items()
    ]


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("0001", datetime(1, 1, 1, tzinfo=UTC), datetime(1, 12, 31, 23, 59, 59, 999999, UTC)),
        ("2023-12", datetime(2023, 12, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC) - TICK),
        ("9999", datetime(9999, 1, 1, tzinfo=UTC), LAST_MICROSECOND),
        ("9999-12", datetime(9999, 12, 1, tzinfo=UTC), LAST_MICROSECOND),
    ],
)
def test_shard_bounds_cover_every_year_a_record_can_carry(
    name: str, first: datetime, last: datetime
) -> None:
    assert shard_bounds(name) == (to_micros(first), to_micros(last))


@pytest.mark.parametrize("period", ["year", "month"])
def test_search_finds_and_counts_records_of_the_calendar_edges(
    tmp_path: Path, make_record: Callable[..., dict[str, Any]], period: str
) -> None:
    index = SearchIndex.open(tmp_path, shard_period=period)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    index.add([(record, at) for record in _edge_records(make_record)])

    page = index.search(SearchQuery(q="refund", per_page=10))
    assert {hit.id for hit in page.hits} == set(EDGE_YEARS)
    assert dict(page.facets["year"]) == {"0001": 1, "1899": 1, "2301": 1, "9999": 1}
    newest = index.search(SearchQuery(sort="newest", per_page=10))
    assert [hit.id for hit in newest.hits] == sorted(EDGE_YEARS, reverse=True)
    last_year = SearchQuery(date_from=datetime(9999, 1, 1, tzinfo=UTC), date_to=LAST_MICROSECOND)
    assert [hit.id for hit in index.search(last_year).hits] == ["E-9999"]
    first_year = SearchQuery(date_to=datetime(1, 12, 31, tzinfo=UTC))
    assert [hit.id for hit in index.search(first_year).hits] == ["E-0001"]
    index.close()


def test_api_searches_reports_health_and_restores_edge_dates(
    client: Any,
    admin_headers: dict[str, str],
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(*_edge_records(make_record))

    body = client.get("/api/v1/search?q=refund", headers=admin_headers).get_json()
    assert {hit["id"] for hit in body["hits"]} == set(EDGE_YEARS)
    assert body["facets"]["year"] == {"0001": 1, "1899": 1, "2301": 1, "9999": 1}
    url = "/api/v1/search?from=9999-12-31T00:00:00Z&to=9999-12-31"
    assert [h["id"] for h in client.get(url, headers=admin_headers).get_json()["hits"]] == [
        "E-9999"
    ]
    assert client.get("/healthz").status_code == 200

    response = client.post(
        "/api/v1/records/E-9999/restore", headers=admin_headers, json={"reason": "check"}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    with services.sessions() as session:
        restored = find_active(session, ["E-9999"])
    assert restored["E-9999"].created_at == EDGE_YEARS["E-9999"]
    body = client.get("/api/v1/search?q=refund", headers=admin_headers).get_json()
    assert body["total"] == 3 and "9999" not in body["facets"]["year"]


def test_cli_archives_verifies_and_rebuilds_edge_dates(
    config_path: Path, tmp_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    config = str(config_path)
    assert archivist("init", "--config", config).returncode == 0
    write_jsonl(tmp_path / "in.jsonl", _edge_records(make_record))
    assert archivist("import", str(tmp_path / "in.jsonl"), "--config", config).returncode == 0
    result = archivist("archive", "--as-of", "2026-01-01", "--config", config)
    assert result.stdout.strip() == "archived 4, indexed 4", result.stderr
    for command in (["verify"], ["index", "--rebuild"], ["verify"]):
        result = archivist(*command, "--config", config)
        assert result.returncode == 0, result.stderr
    stats = json.loads(archivist("stats", "--config", config).stdout)
    assert stats["archived"] == 4 and stats["indexed"] == 4
