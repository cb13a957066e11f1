"""GET /api/v1/export.csv: every match streamed as CSV, its file name and its checksum."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

COLUMNS = [
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
]


@pytest.fixture
def many(archived: Callable[..., Any], make_record: Callable[..., dict[str, Any]]) -> list[Any]:
    return archived(
        *[
            make_record(
                id=f"EX-{n:04d}",
                subject=f'Invoice "{n}", overdue' if n % 7 == 0 else f"Subject {n}",
                body="refund" if n % 2 else "other text",
                customer_id=None if n % 5 == 0 else f"C{n % 3}",
                created_at=f"2021-{n % 12 + 1:02d}-01T00:00:00Z",
                updated_at=f"2021-{n % 12 + 1:02d}-02T00:00:00Z",
            )
            for n in range(250)
        ]
    )


def _rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_export_streams_every_match_not_a_page(
    client: Any, auditor_headers: dict[str, str], many: list[Any]
) -> None:
    response = client.get("/api/v1/export.csv?q=refund", headers=auditor_headers)
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    header = response.get_data(as_text=True).splitlines()[0]
    assert header.split(",") == COLUMNS
    rows = _rows(response)
    assert sorted(r["id"] for r in rows) == [f"EX-{n:04d}" for n in range(1, 250, 2)]
    by_id = {r["id"]: r for r in rows}
    assert by_id["EX-0007"]["subject"] == 'Invoice "7", overdue'
    assert by_id["EX-0005"]["customer_id"] == ""


def test_export_applies_the_search_filters(
    client: Any, auditor_headers: dict[str, str], many: list[Any]
) -> None:
    url = "/api/v1/export.csv?from=2021-03-01&to=2021-03-31&customer_id=C1"
    rows = _rows(client.get(url, headers=auditor_headers))
    expected = [f"EX-{n:04d}" for n in range(250) if n % 12 == 2 and n % 5 and n % 3 == 1]
    assert sorted(r["id"] for r in rows) == expected


@pytest.mark.parametrize(
    "params,filename",
    [
        ("", "archivist-export_all_all.csv"),
        ("from=2021-01-01&to=2021-06-30", "archivist-export_2021-01-01_2021-06-30.csv"),
        ("from=2021-01-01T10:30:00Z", "archivist-export_2021-01-01T103000Z_all.csv"),
        (
            "to=2021-06-30&date_field=archived_at",
            "archivist-export_archived_at_all_2021-06-30.csv",
        ),
    ],
)
def test_export_file_name_carries_the_time_range(
    client: Any, auditor_headers: dict[str, str], params: str, filename: str
) -> None:
    response = client.get(f"/api/v1/export.csv?{params}", headers=auditor_headers)
    assert response.headers["Content-Disposition"] == f'attachment; filename="{filename}"'


def test_export_checksum_matches_the_bytes_and_the_audit_log(
    client: Any, auditor_headers: dict[str, str], many: list[Any]
) -> None:
    body = client.get("/api/v1/export.csv?q=refund", headers=auditor_headers).get_data()
    checksum = client.get("/api/v1/export.csv.sha256?q=refund", headers=auditor_headers)
    assert checksum.status_code == 200
    assert checksum.get_json() == {
        "sha256": hashlib.sha256(body).hexdigest(),
        "rows": 125,
        "bytes": len(body),
        "filename": "archivist-export_all_all.csv",
    }
    audit = client.get("/api/v1/audit?action=export", headers=auditor_headers).get_json()
    sent = [e for e in audit["entries"] if not e["details"].get("checksum_only")][0]
    assert sent["outcome"] == "ok"
    assert sent["details"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert sent["details"]["rows"] == 125


def test_the_audit_log_holds_what_an_export_s_checksum_depends_on(
    client: Any, auditor_headers: dict[str, str], many: list[Any]
) -> None:
    """Row order follows `sort`: the entry must hold it to check the checksum again; a search's
    URL (with its page) can be exported as it is."""
    body = client.get("/api/v1/export.csv?q=refund&sort=oldest&page=2&per_page=5",
                      headers=auditor_headers).get_data()
    audit = client.get("/api/v1/audit?action=export", headers=auditor_headers).get_json()
    details = audit["entries"][0]["details"]
    assert details["sort"] == "oldest" and details["rows"] == 125
    params = {k: v for k, v in details.items() if k in ("q", "sort", "date_field")}
    again = client.get("/api/v1/export.csv.sha256", query_string=params,
                       headers=auditor_headers).get_json()
    assert again["sha256"] == details["sha256"] == hashlib.sha256(body).hexdigest()


def test_abandoned_export_is_audited_as_aborted(
    client: Any, auditor_headers: dict[str, str], many: list[Any]
) -> None:
    response = client.get("/api/v1/export.csv", headers=auditor_headers)
    next(response.response)  # the first chunk only, then the client goes away
    response.close()
    audit = client.get("/api/v1/audit?action=export", headers=auditor_headers).get_json()
    assert audit["entries"][0]["outcome"] == "aborted"


def test_an_export_under_way_stops_when_its_token_is_revoked(
    services: Any, archived: Callable[..., Any], make_record: Callable[..., dict[str, Any]],
    admin_headers: dict[str, str],
) -> None:
    """A revoked token stops working for requests under way too: a long export ends at its
    next check, and the audit log says why."""
    import dataclasses

    from archivist.active_db import utcnow
    from archivist.tokens import revocation_ledger_path, revoke_token
    from server import create_app
    from server.actions import ExportRevoked
    from tests.conftest import close_app

    archived(*[make_record(id=f"BIG-{n:04d}", subject=f"{n} " + "long subject " * 80)
               for n in range(400)])  # about 400 KiB of CSV: several chunks
    server = dataclasses.replace(services.config.server, token_cache_seconds=0)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        client = app.test_client()
        response = client.get("/api/v1/export.csv", headers=admin_headers, buffered=False)
        chunks = iter(response.response)
        received = next(chunks)
        with services.sessions.begin() as session:
            revoke_token(session, "test-admin", utcnow(),
                         revocation_ledger_path(services.config.key_file))
        with pytest.raises(ExportRevoked):  # the server breaks the connection off
            for chunk in chunks:
                received += chunk
        response.close()
        rows = list(csv.DictReader(io.StringIO(received.decode("utf-8"))))
        assert 0 < len(rows) < 400
        with services.read_sessions.begin() as session:
            from archivist.active_db import AuditEntry

            entry = session.query(AuditEntry).filter(AuditEntry.action == "export").one()
        details = json.loads(entry.details)
        assert entry.outcome == "revoked"
        # the entry holds what was sent: rows, bytes and hash agree with what arrived
        assert (details["rows"], details["bytes"]) == (len(rows), len(received))
        assert details["sha256"] == hashlib.sha256(received).hexdigest()
    finally:
        close_app(app)


def test_head_of_an_export_answers_its_headers_without_running_it(
    client: Any, auditor_headers: dict[str, str], many: list[Any], services: Any
) -> None:
    from archivist.audit import AuditFilter, list_audit

    url = "/api/v1/export.csv?q=refund&from=2021-03-01"
    response = client.head(url, headers=auditor_headers)
    response.close()  # as a server does once it has answered
    assert response.status_code == 200
    assert response.get_data() == b""
    sent = client.get(url, headers=auditor_headers)
    assert len(_rows(sent)) == 104
    for name in ("Content-Type", "Content-Disposition", "Cache-Control"):
        assert response.headers[name] == sent.headers[name]
    assert "Content-Length" not in response.headers  # unknown before the export runs
    # the same refusals as a GET's
    assert client.head("/api/v1/export.csv?sort=nope", headers=auditor_headers).status_code == 400
    assert client.head("/api/v1/export.csv?q=refund").status_code == 401
    with services.read_sessions.begin() as session:  # the GET's export only: a HEAD sent none
        entries = list_audit(session, AuditFilter(action="export")).entries
    assert [(e.outcome, e.details["rows"]) for e in entries
            if e.outcome != "bad_query"] == [("ok", 104)]


@pytest.mark.parametrize("q", ["(", "refund AND", '"unclosed', "x)"])
def test_head_of_an_export_refuses_a_query_the_get_refuses_and_audits_it(
    client: Any, auditor_headers: dict[str, str], many: list[Any], services: Any, q: str
) -> None:
    from archivist.audit import AuditFilter, list_audit

    for method in (client.get, client.head):
        response = method("/api/v1/export.csv", query_string={"q": q}, headers=auditor_headers)
        response.close()
        assert response.status_code == 400, (method, q)
    assert client.get("/api/v1/audit", headers=auditor_headers).status_code == 200  # waits
    with services.read_sessions.begin() as session:
        entries = list_audit(session, AuditFilter(action="export")).entries
    assert [e.outcome for e in entries] == ["bad_query", "bad_query"]
    for entry in entries:  # refused before a byte: nothing that passes for an empty file sent
        assert not {"rows", "bytes", "sha256"} & set(entry.details), entry.details
