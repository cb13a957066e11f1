"""Every endpoint x every role, no token and a bad token: the exact status of the contract."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from sqlalchemy import text

from archivist.active_db import utcnow
from archivist.tokens import revoke_token
from server import close_app, create_app

# (method, path, JSON body, the lowest role allowed, the status that role gets)
ENDPOINTS = [
    ("GET", "/api/v1/search?q=refund", None, "agent", 200),
    ("GET", "/api/v1/records/NEVER-1", None, "agent", 404),
    ("POST", "/api/v1/records/NEVER-1/restore", None, "admin", 404),
    ("GET", "/api/v1/export.csv", None, "auditor", 200),
    ("GET", "/api/v1/export.csv.sha256", None, "auditor", 200),
    ("GET", "/api/v1/audit", None, "auditor", 200),
    ("GET", "/api/v1/stats", None, "agent", 200),
    ("GET", "/api/v1/holds", None, "admin", 200),
    (
        "POST",
        "/api/v1/holds",
        {"scope": "customer", "value": "C9", "reason": "case 1"},
        "admin",
        201,
    ),
    ("DELETE", "/api/v1/holds/customer/C404", None, "admin", 409),
    ("GET", "/api/v1/openapi.json", None, "agent", 200),
]
ROLES = ["agent", "auditor", "admin"]


@pytest.fixture
def headers(
    agent_headers: dict[str, str],
    auditor_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> dict[str, dict[str, str]]:
    return {
        "agent": agent_headers,
        "auditor": auditor_headers,
        "admin": admin_headers,
        "none": {},
        "bad": {"Authorization": "Bearer not-a-real-token"},
    }


def _call(client: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize("method,path,body,lowest,ok", ENDPOINTS)
@pytest.mark.parametrize("who", ["none", "bad", *ROLES])
def test_endpoint_role_matrix_gives_exact_status(
    client: Any,
    headers: dict[str, dict[str, str]],
    method: str,
    path: str,
    body: Any,
    lowest: str,
    ok: int,
    who: str,
) -> None:
    response = _call(client, method, path, body, headers[who])
    if who in ("none", "bad"):
        expected = 401
    elif ROLES.index(who) < ROLES.index(lowest):
        expected = 403
    else:
        expected = ok
    assert response.status_code == expected, response.get_data(as_text=True)
    if expected >= 400:
        error = response.get_json()["error"]
        assert set(error) == {"code", "message"}
        if expected == 401:
            assert error["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        if expected == 403:
            assert error["code"] == "forbidden"


def test_healthz_needs_no_token(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "bearer \u00e9t\u00e9", "Token abc"],
)
def test_malformed_authorization_is_401(client: Any, header: str) -> None:
    response = client.get("/api/v1/stats", headers={"Authorization": header})
    assert response.status_code == 401


def test_revoked_token_is_refused(services: Any, admin_headers: dict[str, str]) -> None:
    server = dataclasses.replace(services.config.server, token_cache_seconds=0)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        client = app.test_client()
        assert client.get("/api/v1/stats", headers=admin_headers).status_code == 200
        with services.sessions.begin() as session:
            revoke_token(session, "test-admin", utcnow(), ledger(services))
        assert client.get("/api/v1/stats", headers=admin_headers).status_code == 401
    finally:
        close_app(app)


def test_refusals_are_logged(
    client: Any, agent_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    client.get("/api/v1/audit")
    client.get("/api/v1/audit", headers=agent_headers)
    messages = [r.getMessage() for r in caplog.records]
    assert any(" 401 GET /api/v1/audit" in m for m in messages)
    assert any(" 403 GET /api/v1/audit by token 'test-agent'" in m for m in messages)


def test_rate_limit_answers_429_per_token(
    services: Any, agent_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    server = dataclasses.replace(services.config.server, rate_limit_per_minute=3)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        client = app.test_client()
        statuses = [
            client.get("/api/v1/stats", headers=agent_headers).status_code for _ in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        limited = client.get("/api/v1/stats", headers=agent_headers)
        assert limited.get_json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # another token has its own budget
        assert client.get("/api/v1/stats", headers=admin_headers).status_code == 200
    finally:
        close_app(app)


def test_reads_do_not_wait_for_a_writers_lock(
    services: Any, client: Any, agent_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    """While another connection holds SQLite's write lock (an archive batch's transaction),
    token look-ups, searches and stats still answer: they read in read-only transactions."""
    answers: dict[str, int] = {}

    def requests() -> None:
        answers["search"] = client.get("/api/v1/search?q=kettle", headers=agent_headers).status_code
        answers["stats"] = client.get("/api/v1/stats", headers=admin_headers).status_code

    with services.sessions.begin() as session:  # BEGIN IMMEDIATE: holds the write lock
        session.execute(text("DELETE FROM active_records WHERE id = 'no such id'"))
        reader = threading.Thread(target=requests)
        reader.start()
        reader.join(15)
        assert not reader.is_alive(), "a read waited for the write lock"
    assert answers == {"search": 200, "stats": 200}


def ledger(services: Any) -> Any:
    """The installation's revocation ledger, beside its key file."""
    from archivist.tokens import revocation_ledger_path

    return revocation_ledger_path(services.config.key_file)


def _audit_rows(client: Any, headers: dict[str, str], action: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/audit?action={action}&per_page=100", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["entries"]


def test_a_request_the_token_s_role_does_not_allow_is_audited(
    client: Any, agent_headers: dict[str, str], auditor_headers: dict[str, str]
) -> None:
    assert client.get("/api/v1/export.csv", headers=agent_headers).status_code == 403
    response = client.post("/api/v1/records/R-1/restore", headers=auditor_headers)
    assert response.status_code == 403

    denied = _audit_rows(client, auditor_headers, "denied")
    assert [(e["actor"], e["target"], e["outcome"]) for e in reversed(denied)] == [
        ("test-agent", "GET /api/v1/export.csv", "forbidden"),
        ("test-auditor", "POST /api/v1/records/R-1/restore", "forbidden"),
    ]
    assert denied[0]["details"] == {"needs": "admin", "role": "auditor"}


@pytest.mark.parametrize(("path", "action", "q"), [
    ("/api/v1/search?q=refund&from=2023-02-30", "search", "refund"),
    ("/api/v1/search?q=refund&per_page=0", "search", "refund"),
    ("/api/v1/export.csv?q=refund&from=2023-02-30", "export", "refund"),
    ("/api/v1/export.csv.sha256?q=refund&sort=bad", "export", "refund"),
    # refused by the query's parser, once the search or export had begun
    ("/api/v1/search?q=refund+foo:bar", "search", "refund foo:bar"),
    ("/api/v1/search?q=refund+NOT+NOT+x", "search", "refund NOT NOT x"),
    ("/api/v1/export.csv?q=refund+foo:bar", "export", "refund foo:bar"),
    ("/api/v1/export.csv.sha256?q=refund+--x", "export", "refund --x"),
])
def test_a_search_or_export_refused_for_its_parameters_is_audited(
    client: Any, auditor_headers: dict[str, str], path: str, action: str, q: str
) -> None:
    response = client.get(path, headers=auditor_headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_query"

    [entry] = _audit_rows(client, auditor_headers, action)
    assert (entry["actor"], entry["target"], entry["outcome"]) == (
        "test-auditor", q, "bad_query",
    )
    assert entry["details"]["error"] == response.get_json()["error"]["message"]
