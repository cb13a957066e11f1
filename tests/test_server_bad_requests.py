"""Odd but possible requests are a 400 with the contract's JSON error (or the UI's error page)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

EDGES = ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00")


def _error(response: Any) -> dict[str, str]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    return body["error"]


def _sign_in(client: Any, headers: dict[str, str]) -> None:
    page = client.get("/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    token = headers["Authorization"].removeprefix("Bearer ")
    response = client.post("/sign-in", data={"token": token, "csrf_token": csrf.group(1)})
    assert response.status_code == 303


@pytest.mark.parametrize("moment", EDGES)
@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/v1/search", "bad_query"),
        ("/api/v1/export.csv", "bad_query"),
        ("/api/v1/export.csv.sha256", "bad_query"),
        ("/api/v1/audit", "bad_request"),
    ],
)
def test_api_bounds_at_the_edges_of_the_calendar_are_400(
    client: Any, admin_headers: dict[str, str], path: str, code: str, name: str, moment: str
) -> None:
    response = client.get(f"{path}?{name}={quote(moment)}", headers=admin_headers)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == code
    assert "outside the years 1-9999" in error["message"] and name in error["message"]


@pytest.mark.parametrize("moment", [*EDGES, "0001-01-01"])
@pytest.mark.parametrize("page", ["/search?from=", "/audit?to=", "/admin?as_of="])
def test_ui_moments_at_the_edges_of_the_calendar_are_400_pages(
    client: Any, admin_headers: dict[str, str], page: str, moment: str
) -> None:
    _sign_in(client, admin_headers)
    response = client.get(page + quote(moment))
    if not page.startswith("/admin") and moment == "0001-01-01":
        assert response.status_code == 200  # a plain date in year 1 is a fine bound
        return
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "on our side" not in text
    assert "before year 1" in text or "outside the years 1-9999" in text


@pytest.mark.parametrize("moment", EDGES)
@pytest.mark.parametrize("command", ["archive", "dispose"])
def test_cli_as_of_at_the_edges_of_the_calendar_is_a_one_line_error(
    config_path: Path, command: str, moment: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archivist", command, "--as-of", moment,
         "--config", str(config_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"error: Invalid value for '--as-of': outside the years 1-9999 in UTC: '{moment}'"
    ]


# ISO in shape, on no calendar: said so, not "not an ISO date" (which sends one to the format)
OFF_CALENDAR = "not a date on the calendar: '2023-02-30' (February 2023 has 28 days)"


@pytest.mark.parametrize("name", ["from", "to"])
@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/v1/search", "bad_query"),
        ("/api/v1/export.csv", "bad_query"),
        ("/api/v1/audit", "bad_request"),
    ],
)
def test_api_a_date_not_on_the_calendar_is_400_saying_so(
    client: Any, admin_headers: dict[str, str], path: str, code: str, name: str
) -> None:
    response = client.get(f"{path}?{name}=2023-02-30", headers=admin_headers)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == code
    assert name in error["message"] and OFF_CALENDAR in error["message"], error


@pytest.mark.parametrize(
    "page", ["/search?from=", "/search?to=", "/audit?from=", "/audit?to=", "/admin?as_of="]
)
def test_ui_a_date_not_on_the_calendar_is_a_400_page_saying_so(
    client: Any, admin_headers: dict[str, str], page: str
) -> None:
    _sign_in(client, admin_headers)
    response = client.get(page + "2023-02-30")
    assert response.status_code == 400
    assert OFF_CALENDAR.replace("'", "&#39;") in response.get_data(as_text=True)


@pytest.mark.parametrize("command", ["archive", "dispose"])
def test_cli_as_of_not_on_the_calendar_is_a_one_line_error(
    config_path: Path, command: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archivist", command, "--as-of", "2023-02-30", "--dry-run",
         "--config", str(config_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: Invalid value for '--as-of': {OFF_CALENDAR}"]


def test_cli_as_of_whose_retention_reaches_before_year_one_is_a_one_line_error(
    config_path: Path,
) -> None:
    subprocess.run([sys.executable, "-m", "archivist", "init", "--config", str(config_path)],
                   check=True, capture_output=True, timeout=120)
    result = subprocess.run(
        [sys.executable, "-m", "archivist", "archive", "--as-of", "0001-01-01",
         "--config", str(config_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "is before year 1" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"scope": "record", "value": "\\ud800", "reason": "x"}', "lone surrogate"),
        (b'{"scope": "record", "value": "R-1", "reason": "lone \\udfff"}', "lone surrogate"),
        (b'{"scope": "record", "value": "R-1", "reason": "x", "\\ud83d": 1}', "lone surrogate"),
        # which customer is meant? refused rather than read as the last value
        (b'{"scope": "customer", "value": "C-1", "value": "C-2", "reason": "x"}',
         "the key 'value' appears twice in one object"),
        (b'{"scope": "customer", "value": "C-1", "reason": "x", "reason": "y"}',
         "the key 'reason' appears twice in one object"),
    ],
)
def test_json_body_with_a_lone_surrogate_or_a_key_named_twice_is_400(
    client: Any, admin_headers: dict[str, str], body: bytes, says: str
) -> None:
    response = client.post(
        "/api/v1/holds", data=body, headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert says in _error(response)["message"]
    assert client.get("/api/v1/holds", headers=admin_headers).get_json()["holds"] == []


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_json_body_nested_100000_deep_is_400(
    client: Any, admin_headers: dict[str, str], opening: bytes
) -> None:
    closing = b"]" if opening == b"[" else b"}"
    body = opening * 100_000 + (b"1" if opening != b"[" else b"") + closing * 100_000
    response = client.post(
        "/api/v1/holds", data=body, headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "nested deeper than" in _error(response)["message"]


def test_json_body_a_little_nested_is_still_read(
    client: Any, admin_headers: dict[str, str]
) -> None:
    body = {"scope": "customer", "value": "C-7", "reason": "litigation", "note": [[[["x"]]]]}
    response = client.post("/api/v1/holds", json=body, headers=admin_headers)
    assert response.status_code == 400  # an unknown field, named by the schema
    assert "note" in _error(response)["message"]
    del body["note"]
    assert client.post("/api/v1/holds", json=body, headers=admin_headers).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/records/%FF"),
        ("POST", "/api/v1/records/%FF/restore"),
        ("GET", "/api/v1/records/%ED%A0%80"),  # a surrogate, encoded
        ("DELETE", "/api/v1/holds/record/%C3"),
        ("GET", "/api/v1/%FF"),
    ],
)
def test_api_path_that_is_not_utf8_is_400(
    client: Any, admin_headers: dict[str, str], method: str, path: str
) -> None:
    response = client.open(path, method=method, headers=admin_headers)
    assert response.status_code == 400
    assert _error(response) == {"code": "bad_request", "message": "the path is not valid UTF-8"}


def test_ui_path_that_is_not_utf8_is_a_400_page(
    client: Any, agent_headers: dict[str, str]
) -> None:
    _sign_in(client, agent_headers)
    response = client.get("/records/%FF")
    assert response.status_code == 400
    assert "not valid UTF-8" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/search?q=refund%FF", "/audit?actor=%C3%28"])
def test_ui_query_string_that_is_not_utf8_is_a_400_page(
    client: Any, admin_headers: dict[str, str], path: str
) -> None:
    _sign_in(client, admin_headers)
    response = client.get(path)
    assert response.status_code == 400
    assert "query string is not valid UTF-8" in response.get_data(as_text=True)


def test_ui_form_that_is_not_utf8_is_a_400_page_and_changes_nothing(
    client: Any, admin_headers: dict[str, str], services: Any
) -> None:
    """A form field's bytes that are not UTF-8 were kept as the `%FF` text sent: a hold was
    placed on customer `C%FF1`. Refused as a query string's are."""
    from archivist.holds import list_holds

    _sign_in(client, admin_headers)
    page = client.get("/admin/holds").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    body = f"csrf_token={csrf.group(1)}&scope=customer&value=C%FF1&reason=r%FE".encode()
    response = client.post("/admin/holds", data=body,
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert "the form is not valid UTF-8" in response.get_data(as_text=True)
    with services.sessions.begin() as session:
        assert list_holds(session) == []


def test_ui_a_page_address_no_route_answers_is_a_page_the_api_s_stay_json(
    client: Any, admin_headers: dict[str, str]
) -> None:
    _sign_in(client, admin_headers)
    missing = client.get("/nonexistent")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "There is no such page." in missing.get_data(as_text=True)
    reopened = client.get("/restore")  # a form's address, opened again from the address bar
    assert reopened.status_code == 405 and reopened.mimetype == "text/html"
    assert "POST" in reopened.headers["Allow"]
    assert "cannot be opened on its own" in reopened.get_data(as_text=True)
    api = client.get("/api/v1/nonexistent", headers=admin_headers)
    assert api.status_code == 404 and _error(api)["code"] == "not_found"
    api = client.get("/api/v1/erase", headers=admin_headers)
    assert api.status_code == 405 and _error(api)["code"] == "method_not_allowed"


@pytest.mark.parametrize("q", ["kind:note", "\"unclosed", "(a"])
@pytest.mark.parametrize(
    "path", ["/api/v1/search", "/api/v1/export.csv", "/api/v1/export.csv.sha256"]
)
def test_api_bad_query_is_400_on_search_and_both_exports(
    client: Any, auditor_headers: dict[str, str], path: str, q: str
) -> None:
    response = client.get(f"{path}?q={quote(q)}", headers=auditor_headers)
    assert response.status_code == 400
    assert _error(response)["code"] == "bad_query"
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("q", ["kind:note", "\"unclosed", "(a"])
@pytest.mark.parametrize("path", ["/search", "/search/export.csv"])
def test_ui_bad_query_is_a_400_page_on_search_and_export(
    client: Any, auditor_headers: dict[str, str], path: str, q: str
) -> None:
    _sign_in(client, auditor_headers)
    response = client.get(f"{path}?q={quote(q)}")
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/html")
    assert "on our side" not in response.get_data(as_text=True)


@pytest.mark.parametrize("q", ["NOT NOT a", "a NOT NOT b"])
def test_doubled_not_is_400_on_every_http_path(
    client: Any, auditor_headers: dict[str, str], q: str
) -> None:
    for path in ("/api/v1/search", "/api/v1/export.csv", "/api/v1/export.csv.sha256"):
        response = client.get(f"{path}?q={quote(q)}", headers=auditor_headers)
        assert response.status_code == 400, path
        assert _error(response)["code"] == "bad_query"
    _sign_in(client, auditor_headers)
    for path in ("/search", "/search/export.csv"):
        assert client.get(f"{path}?q={quote(q)}").status_code == 400, path


@pytest.mark.parametrize("path", ["/api/v1/search", "/api/v1/export.csv", "/api/v1/audit",
                                  "/api/v1/disposals"])
def test_a_parameter_given_twice_is_400_not_its_first_value(
    client: Any, admin_headers: dict[str, str], path: str
) -> None:
    """`q=refund&q=invoice` taken as `q=refund` would act on part of what was asked (a bulk
    restore by that search too)."""
    name = "q" if "audit" not in path and "disposals" not in path else "from"
    response = client.get(f"{path}?{name}=2020-01-01&{name}=2021-01-01", headers=admin_headers)
    assert response.status_code == 400
    assert "given more than once" in _error(response)["message"]
    response = client.post("/api/v1/restore", headers=admin_headers, json={
        "search": {"q": "refund"}, "reason": "r", "dry_run": True})
    assert response.status_code == 200


def test_a_time_offset_whose_plus_was_not_escaped_gets_a_hint(client, agent_headers):
    """`from=2020-02-29T00:00:00+08:00` typed into a URL: its `+` arrives as a space."""
    response = client.get("/api/v1/search?from=2020-02-29T00:00:00+08:00",
                          headers=agent_headers)
    assert response.status_code == 400
    assert "write a '+' in a URL as %2B" in response.get_json()["error"]["message"]
    escaped = client.get("/api/v1/search?from=2020-02-29T00:00:00%2B08:00",
                         headers=agent_headers)
    assert escaped.status_code == 200


@pytest.mark.parametrize("path", ["x%2F", "x%2F%2F", "..%2Fx", "%2Fx"])
def test_an_id_with_an_encoded_slash_is_a_json_404_not_a_redirect_to_another_record(
    client: Any, admin_headers: dict[str, str], archived: Any, make_record: Any, path: str
) -> None:
    archived(make_record(id="x"))
    response = client.post(f"/api/v1/records/{path}/restore", json={"reason": "r"},
                           headers=admin_headers)
    assert response.status_code == 404, response.headers.get("Location")
    assert _error(response)["code"] == "not_found"
    record = client.get("/api/v1/records/x", headers=admin_headers).get_json()
    assert record["archive"]["state"] == "archived"  # not restored by a followed redirect


@pytest.mark.parametrize("value", ["%D9%A3", "%EF%BC%92", "1_0", "+2", "%202", "--1", "-%D9%A3"])
def test_a_page_number_in_other_digits_is_400(
    client: Any, agent_headers: dict[str, str], value: str
) -> None:
    for name in ("page", "per_page"):
        response = client.get(f"/api/v1/search?{name}={value}", headers=agent_headers)
        zero = client.get(f"/api/v1/search?{name}=0", headers=agent_headers)
        assert response.status_code == 400, (name, value)
        assert _error(response)["code"] == _error(zero)["code"], (name, value)  # as out of range
        assert name in _error(response)["message"], (name, value)
        assert "must be a whole number in digits 0-9" in _error(response)["message"]
    ok = client.get("/api/v1/search?page=2&per_page=3", headers=agent_headers)
    assert ok.status_code == 200 and ok.get_json()["per_page"] == 3


def test_a_negative_page_number_is_400_naming_the_bounds(
    client: Any, agent_headers: dict[str, str]
) -> None:
    for name, bounds in (("page", "greater than or equal to 1"),
                         ("per_page", "greater than or equal to 1 and less than or equal to")):
        response = client.get(f"/api/v1/search?{name}=-1", headers=agent_headers)
        assert response.status_code == 400, name
        assert name in _error(response)["message"] and bounds in _error(response)["message"]


def test_a_from_after_to_says_so_in_one_phrase(
    client: Any, agent_headers: dict[str, str]
) -> None:
    response = client.get("/api/v1/search?from=2024-02-01&to=2024-01-01", headers=agent_headers)
    assert response.status_code == 400
    assert _error(response) == {"code": "bad_query",
                                "message": "from: later than 'to': nothing can match"}
