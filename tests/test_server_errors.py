"""Errors are always the contract's JSON body; 5xx leaks nothing; /healthz says what is wrong."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from typing import Any

import pytest

from server import close_app, create_app


def _error(response: Any) -> dict[str, str]:
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return body["error"]


def test_unknown_path_is_json_404(client: Any, agent_headers: dict[str, str]) -> None:
    response = client.get("/api/v1/nothing-here", headers=agent_headers)
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


def test_wrong_method_is_json_405(client: Any, admin_headers: dict[str, str]) -> None:
    response = client.put("/api/v1/search", headers=admin_headers)
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_an_api_path_no_route_takes_is_401_without_a_token(
    client: Any, agent_headers: dict[str, str]
) -> None:
    """The token is checked before the method and the path: a client without one learns
    nothing of the API's endpoints, and is told what it lacks."""
    for method, path in (("PUT", "/api/v1/search"), ("GET", "/api/v1/erase"),
                         ("DELETE", "/api/v1/holds"), ("GET", "/api/v1/nothing-here"),
                         ("GET", "/api/v1")):
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            response = client.open(path, method=method, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert _error(response)["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Allow" not in response.headers
    # with a token (of any role: the method is wrong whoever asks), the 405 and its Allow
    for method, path, allowed in (("PUT", "/api/v1/search", {"GET", "HEAD", "OPTIONS"}),
                                  ("GET", "/api/v1/erase", {"OPTIONS", "POST"})):
        response = client.open(path, method=method, headers=agent_headers)
        assert response.status_code == 405
        assert set(response.headers["Allow"].split(", ")) == allowed
    assert client.get("/api/v1/nothing-here", headers=agent_headers).status_code == 404
    assert client.get("/nothing-here").status_code == 404  # a page: no token asked


def test_every_answer_but_the_ui_s_static_files_is_kept_out_of_caches(
    client: Any, agent_headers: dict[str, str], archived: Any, make_record: Any
) -> None:
    """Records, searches and even errors echo archived customer data: no cache may keep
    them (a shared proxy, a browser's disk cache)."""
    archived(make_record(id="N-1", body="private words"))
    answers = [
        client.get("/api/v1/records/N-1", headers=agent_headers),
        client.get("/api/v1/search?q=private", headers=agent_headers),
        client.get("/api/v1/records/N-2", headers=agent_headers),
        client.put("/api/v1/search", headers=agent_headers),
        client.get("/records/N-1/restore"),  # a UI path that only takes POST: a 405
    ]
    for response in answers:
        assert response.headers["Cache-Control"] == "no-store", response.request.path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert [r.status_code for r in answers] == [200, 200, 404, 405, 405]
    stylesheet = client.get("/assets/ui.css")
    stylesheet.close()
    assert stylesheet.status_code == 200
    assert "no-store" not in stylesheet.headers.get("Cache-Control", "")


def test_too_large_body_is_json_413(services: Any, admin_headers: dict[str, str]) -> None:
    server = dataclasses.replace(services.config.server, max_request_bytes=1024)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        response = app.test_client().post(
            "/api/v1/holds",
            data=b'{"reason": "' + b"x" * 4096 + b'"}',
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert _error(response)["code"] == "payload_too_large"
        assert _error(response)["message"] == (
            "the request body is over 1,024 bytes (server.max_request_bytes)"
        )
    finally:
        close_app(app)


def test_unexpected_error_is_json_500_with_request_id_and_no_details(
    app: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("secret database password in here")

    response = client.get("/boom")
    assert response.status_code == 500
    error = _error(response)
    request_id = response.headers["X-Request-Id"]
    assert error == {
        "code": "internal_error",
        "message": f"internal error (request id {request_id})",
    }
    assert "secret" not in response.get_data(as_text=True)
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_bad_hold_body_is_400(client: Any, admin_headers: dict[str, str]) -> None:
    for body in ({"scope": "planet", "value": "x", "reason": "r"}, {"scope": "record"}, [1]):
        response = client.post("/api/v1/holds", json=body, headers=admin_headers)
        assert response.status_code == 400
        assert _error(response)["code"] == "bad_request"
    response = client.post("/api/v1/holds", data=b"{not json", headers=admin_headers)
    assert response.status_code == 400
    # a pasted newline would make a hold that matches nothing and a form cannot lift
    for value, why in (("C00042\n", "control characters"), ("C\x00", "NUL character")):
        body = {"scope": "customer", "value": value, "reason": "r"}
        response = client.post("/api/v1/holds", json=body, headers=admin_headers)
        assert response.status_code == 400
        assert why in response.get_data(as_text=True)
    for scope, value, reason in (("customer", " C00042", "begin or end with a space"),
                                 ("category", "billing ", "begin or end with a space"),
                                 ("record", "REC/1", "must name a record id")):
        body = {"scope": scope, "value": value, "reason": "r"}
        response = client.post("/api/v1/holds", json=body, headers=admin_headers)
        assert response.status_code == 400
        assert reason in response.get_data(as_text=True)
    assert client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"] == []


def test_a_hold_placed_before_its_value_was_checked_can_still_be_lifted(
    client: Any, admin_headers: dict[str, str], services: Any
) -> None:
    from archivist.active_db import LegalHold, utcnow

    with services.sessions.begin() as session:  # as an earlier version could place them
        session.add(LegalHold(scope="customer", value=" C1", reason="r", created_at=utcnow()))
        session.add(LegalHold(scope="record", value="R/1", reason="r", created_at=utcnow()))
    for path in ("/api/v1/holds/customer/%20C1", "/api/v1/holds/record/R%2F1"):
        response = client.delete(path, headers=admin_headers)
        assert response.status_code == 204, response.get_data(as_text=True)
    assert client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"] == []


def test_holds_are_placed_listed_lifted_and_audited(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hold = {"scope": "customer", "value": "C042", "reason": "litigation 2026-17"}
    assert client.post("/api/v1/holds", json=hold, headers=admin_headers).status_code == 201
    again = client.post("/api/v1/holds", json=hold, headers=admin_headers)
    assert again.status_code == 409 and _error(again)["code"] == "bad_hold"
    listed = client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"]
    assert [(h["scope"], h["value"], h["reason"]) for h in listed] == [
        ("customer", "C042", "litigation 2026-17")
    ]
    assert client.delete("/api/v1/holds/customer/C042", headers=admin_headers).status_code == 204
    assert client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"] == []
    audit = client.get("/api/v1/audit", headers=admin_headers).get_json()["entries"]
    assert [(e["action"], e["target"], e["outcome"]) for e in audit] == [
        ("hold_remove", "customer:C042", "ok"),
        ("hold_add", "customer:C042", "bad_hold"),
        ("hold_add", "customer:C042", "ok"),
    ]


def test_a_category_hold_is_one_hold_whatever_the_case_it_is_placed_or_lifted_in(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hold = {"scope": "category", "value": "BILLING", "reason": "audit 7"}
    assert client.post("/api/v1/holds", json=hold, headers=admin_headers).status_code == 201
    again = client.post("/api/v1/holds", json={**hold, "value": "billing"}, headers=admin_headers)
    assert again.status_code == 409 and _error(again)["code"] == "bad_hold"
    assert "(as 'BILLING')" in _error(again)["message"]
    listed = client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"]
    assert [h["value"] for h in listed] == ["BILLING"]
    lifted = client.delete("/api/v1/holds/category/Billing", headers=admin_headers)
    assert lifted.status_code == 204, lifted.get_data(as_text=True)
    assert client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"] == []
    # a customer or record hold stays exact: ids are not words
    hold = {"scope": "customer", "value": "C042", "reason": "r"}
    assert client.post("/api/v1/holds", json=hold, headers=admin_headers).status_code == 201
    assert client.delete("/api/v1/holds/customer/c042", headers=admin_headers).status_code == 409


def test_a_parameter_sent_to_an_endpoint_that_takes_none_is_refused_and_nothing_done(
    client: Any, admin_headers: dict[str, str], services: Any,
    archived: Any, make_record: Any,
) -> None:
    archived(make_record(id="U-1"))
    hold = {"scope": "customer", "value": "C9", "reason": "r"}
    for method, path, body in [
        ("GET", "/api/v1/stats?x=1", None),
        ("GET", "/api/v1/holds?scope=customer", None),
        ("GET", "/api/v1/records/U-1?page=2", None),
        ("GET", "/api/v1/openapi.json?v=3", None),
        ("POST", "/api/v1/holds?x=1", hold),
        ("POST", "/api/v1/records/U-1/restore?dry_run=1", {"reason": "r"}),
        ("POST", "/api/v1/restore?x=1", {"ids": ["U-1"], "reason": "r"}),
        ("POST", "/api/v1/erase?dry_run=true", {"record_id": "U-1", "reason": "r"}),
    ]:
        response = client.open(path, method=method, json=body, headers=admin_headers)
        assert response.status_code == 400, path
        assert "takes none" in _error(response)["message"], path
    assert client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"] == []
    assert services.store.info("U-1").state == "archived"


def test_a_record_hold_on_an_id_too_long_says_how_long_one_may_be(
    client: Any, admin_headers: dict[str, str]
) -> None:
    hold = {"scope": "record", "value": "x" * 129, "reason": "r"}
    response = client.post("/api/v1/holds", json=hold, headers=admin_headers)
    assert response.status_code == 400 and "1-128 characters" in _error(response)["message"]


def test_healthz_is_503_when_the_index_is_missing(services: Any, client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    shutil.rmtree(services.config.index_dir)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("index cannot be read")


def test_healthz_is_503_when_the_database_cannot_be_read(services: Any, client: Any) -> None:
    db = services.config.active_url.removeprefix("sqlite:///")
    services.engine.dispose()
    client.application.extensions["archivist"].engine.dispose()
    with open(db, "r+b") as f:
        f.write(b"garbage!" * 64)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["reason"].startswith("database cannot be read")


def test_healthz_is_503_when_the_archive_catalog_cannot_be_read(services: Any, client: Any) -> None:
    assert client.get("/healthz").status_code == 200
    catalog = sqlite3.connect(
        client.application.extensions["archivist"].store.directory / "catalog.db"
    )
    catalog.execute("ALTER TABLE records RENAME TO records_elsewhere")
    catalog.close()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["reason"].startswith("archive store cannot be read")


def test_audit_parameters_are_checked(client: Any, auditor_headers: dict[str, str]) -> None:
    for params in (
        "action=dance",
        "per_page=101",
        "page=0",
        "from=nope",
        "from=2024-02-01&to=2024-01-01",
    ):
        response = client.get(f"/api/v1/audit?{params}", headers=auditor_headers)
        assert response.status_code == 400, params
        assert _error(response)["code"] == "bad_request"


def test_openapi_document_lists_every_endpoint(client: Any, agent_headers: dict[str, str]) -> None:
    doc = client.get("/api/v1/openapi.json", headers=agent_headers).get_json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/healthz",
        "/api/v1/search",
        "/api/v1/records/{record_id}",
        "/api/v1/records/{record_id}/restore",
        "/api/v1/erase",
        "/api/v1/restore",
        "/api/v1/export.csv",
        "/api/v1/export.csv.sha256",
        "/api/v1/audit",
        "/api/v1/disposals",
        "/api/v1/disposals.csv",
        "/api/v1/stats",
        "/api/v1/holds",
        "/api/v1/holds/{scope}/{value}",
        "/api/v1/openapi.json",
    }
    names = {p["name"] for p in doc["paths"]["/api/v1/search"]["get"]["parameters"]}
    assert {
        "q",
        "category",
        "kind",
        "from",
        "to",
        "date_field",
        "sort",
        "page",
        "per_page",
    } <= names
