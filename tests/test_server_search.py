"""GET /api/v1/search over HTTP: results, escaping, and every bad parameter as a 400."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from server import close_app, create_app


@pytest.fixture
def corpus(archived: Callable[..., Any], make_record: Callable[..., dict[str, Any]]) -> None:
    archived(
        make_record(id="EN-1", body="The customer requested a refund for order 17."),
        make_record(id="EN-2", body="Refunds were refunded twice.", category="billing"),
        make_record(id="ZH-1", body="客户要求退款，订单号 INV-2023-004512。", kind="ticket"),
        make_record(
            id="ID-1",
            body="Contact li.wei@example.com or +86 138 0013 8000",
            created_at="2023-05-05T10:00:00Z",
            updated_at="2023-05-06T10:00:00Z",
        ),
    )


def _ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return {h["id"] for h in response.get_json()["hits"]}


@pytest.mark.parametrize(
    "q,expected",
    [
        ("refund", {"EN-1", "EN-2"}),
        ("退款", {"ZH-1"}),
        ("INV-2023-004512", {"ZH-1"}),
        ("li.wei@example.com", {"ID-1"}),
        ('"+86 138 0013 8000"', {"ID-1"}),
    ],
)
def test_search_finds_english_chinese_and_identifiers(
    client: Any, agent_headers: dict[str, str], corpus: None, q: str, expected: set[str]
) -> None:
    response = client.get("/api/v1/search", query_string={"q": q}, headers=agent_headers)
    assert _ids(response) == expected


def test_search_response_has_the_contract_shape(
    client: Any, agent_headers: dict[str, str], corpus: None
) -> None:
    body = client.get("/api/v1/search?q=refund", headers=agent_headers).get_json()
    assert set(body) == {"total", "page", "per_page", "took_ms", "hits", "facets"}
    assert body["total"] == 2 and body["page"] == 1 and body["per_page"] == 20
    assert set(body["hits"][0]) == {
        "id",
        "kind",
        "category",
        "customer_id",
        "owner",
        "subject",
        "status",
        "created_at",
        "updated_at",
        "archived_at",
        "parent_id",
        "process_id",
        "score",
        "snippet",
    }
    assert body["facets"]["category"] == {"billing": 1, "support": 1}
    assert set(body["facets"]) == {"category", "kind", "year"}


def test_search_filters_combine(client: Any, agent_headers: dict[str, str], corpus: None) -> None:
    url = "/api/v1/search?category=support&category=billing&kind=ticket"
    assert _ids(client.get(url, headers=agent_headers)) == {"ZH-1"}
    url = "/api/v1/search?from=2023-05-05&to=2023-05-05"  # a date-only `to` covers its day
    assert _ids(client.get(url, headers=agent_headers)) == {"ID-1"}
    url = "/api/v1/search?sort=oldest&per_page=2&page=2"
    body = client.get(url, headers=agent_headers).get_json()
    assert body["total"] == 4 and len(body["hits"]) == 2


@pytest.mark.parametrize(
    "body",
    [
        '<script>alert("x")</script> refund',
        "refund <img src=x onerror=alert(1)>",
    ],
)
def test_snippets_are_escaped(
    client: Any,
    agent_headers: dict[str, str],
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
    body: str,
) -> None:
    archived(make_record(id="XSS-1", body=body))
    hit = client.get("/api/v1/search?q=refund", headers=agent_headers).get_json()["hits"][0]
    snippet = hit["snippet"]
    assert "<script" not in snippet and "<img" not in snippet
    assert "&lt;" in snippet
    assert snippet.replace("<mark>", "").replace("</mark>", "").count("<") == 0
    assert "<mark>refund</mark>" in snippet


@pytest.mark.parametrize(
    ("q", "marked"),
    [("zebraquokka", "zebraquokka"), ("refunds", "refunded"), ("退款", "退款"), ("INV-7", "INV-7")],
)
def test_a_match_far_into_a_long_body_is_marked_in_its_snippet(
    client: Any,
    agent_headers: dict[str, str],
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
    q: str,
    marked: str,
) -> None:
    # 840,000 characters before the match, after an accent typed as its own character
    filler = "Cafe\u0301 visit, " + "with the usual words " * 40_000
    archived(make_record(id="LONG-1", body=filler + "we refunded 退款 INV-7 zebraquokka. The end"))
    hit = client.get(f"/api/v1/search?q={q}", headers=agent_headers).get_json()["hits"][0]
    assert hit["id"] == "LONG-1"
    assert f"<mark>{marked}</mark>" in hit["snippet"]
    assert hit["snippet"].startswith("…")


BAD_PARAMETERS = [
    "sort=sideways",
    "per_page=1000",
    "per_page=0",
    "page=0",
    "page=-3",
    "page=abc",
    "from=2024-13-01",
    "to=yesterday",
    "from=2024-02-30",
    "from=2024-05-01&to=2024-04-01",
    "date_field=deleted_at",
    "q=(unbalanced",
    'q="open quote',
    "q=*leading",
    "category=",
    "unknown_parameter=1",
    "q=" + "a" * 20_000,
]


@pytest.mark.parametrize("params", BAD_PARAMETERS, ids=lambda p: p[:40])
@pytest.mark.parametrize("path", ["/api/v1/search", "/api/v1/export.csv"])
def test_bad_parameters_are_400_bad_query(
    client: Any, auditor_headers: dict[str, str], corpus: None, params: str, path: str
) -> None:
    response = client.get(f"{path}?{params}", headers=auditor_headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "bad_query"
    assert error["message"]


@pytest.mark.parametrize("raw", ["q=%ff%fe", "q=caf%e9", "category=%c3%28"])
def test_non_utf8_parameters_are_400(client: Any, agent_headers: dict[str, str], raw: str) -> None:
    response = client.get(f"/api/v1/search?{raw}", headers=agent_headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"


def test_searches_are_audited_with_query_filters_and_total(
    client: Any, auditor_headers: dict[str, str], corpus: None
) -> None:
    client.get("/api/v1/search?q=refund&category=support", headers=auditor_headers)
    entries = client.get("/api/v1/audit?action=search", headers=auditor_headers).get_json()
    entry = entries["entries"][0]
    assert entry["actor"] == "test-auditor" and entry["outcome"] == "ok"
    assert entry["details"]["q"] == "refund"
    assert entry["details"]["category"] == ["support"]
    assert entry["details"]["total"] == 1


def test_max_query_length_is_the_longest_q_taken(
    services: Any, agent_headers: dict[str, str], corpus: None
) -> None:
    """`server.max_query_length` above the default lets longer queries through, up to itself."""
    server = dataclasses.replace(services.config.server, max_query_length=2000)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        client = app.test_client()
        q = "refund OR " + "x" * 1490  # 1,500 characters, more than the default 1,000
        response = client.get("/api/v1/search", query_string={"q": q}, headers=agent_headers)
        assert _ids(response) == {"EN-1", "EN-2"}
        response = client.get("/api/v1/search", query_string={"q": "a" * 2001},
                              headers=agent_headers)
        assert response.status_code == 400
        assert "2000" in response.get_json()["error"]["message"]
    finally:
        close_app(app)
