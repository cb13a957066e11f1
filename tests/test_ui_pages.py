"""The web UI's pages through Flask's test client: sign-in, CSRF, roles, escaping, headers."""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from archivist.active_db import upsert_records
from archivist.audit import AuditFilter, list_audit
from archivist.config import load_config
from archivist.records import parse_record
from server import close_app, create_app
from server.ui.session import load_secret_key, secret_key_path


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _csrf(client: Any, path: str = "/sign-in") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def _bulk_restore(client: Any, **form: Any) -> Any:
    """Ask for a bulk restore, then confirm the count its confirmation page shows."""
    page = client.post("/restore", data=form)
    assert page.status_code == 200, page.status_code
    confirm = re.search(r'name="plan" value="([0-9a-f]{64})"', page.get_data(as_text=True))
    assert confirm, page.get_data(as_text=True)[:2000]
    return client.post("/restore", data={**form, "plan": confirm.group(1), "confirmed": "1"})


def _elements_by_id(page: str) -> dict[str, dict[str, str]]:
    """The attributes of every element of a page that has an id, by its id."""
    found: dict[str, dict[str, str]] = {}

    class Reader(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            named = {k: v or "" for k, v in attrs}
            if "id" in named:
                found[named["id"]] = {"tag": tag, **named}

    Reader().feed(page)
    return found


def _tied_to_error(page: str, error_id: str) -> set[str]:
    """The ids of the fields a page marks invalid; each must be described by the message
    `error_id`, which the page must have, and no valid field may be."""
    elements = _elements_by_id(page)
    assert error_id in elements, page[:2000]
    invalid = {i for i, e in elements.items() if e.get("aria-invalid") == "true"}
    described = {i for i, e in elements.items()
                 if error_id in e.get("aria-describedby", "").split()}
    assert described == invalid, (invalid, described)
    return invalid


def _sign_in(client: Any, headers: dict[str, str]) -> None:
    response = client.post(
        "/sign-in", data={"token": _secret(headers), "csrf_token": _csrf(client)}
    )
    assert response.status_code == 303


@pytest.fixture
def corpus(archived: Callable[..., Any], make_record: Callable[..., dict[str, Any]]) -> None:
    archived(
        make_record(id="A-1", body="refund for the broken kettle\nsecond line"),
        make_record(id="A-2", body="客户要求退款", category="billing"),
        make_record(id="A-3", subject="<b>x</b>", body='<script>x()</script><img onerror="y">'),
    )


def test_ui_pages_redirect_to_sign_in_when_signed_out(client: Any) -> None:
    response = client.get("/search?q=refund")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in?next=/search?q%3Drefund")
    assert client.post("/records/A-1/restore").status_code == 403  # no CSRF token even


def test_ui_sign_in_keeps_the_token_in_a_safe_cookie(client: Any, agent_headers: Any) -> None:
    csrf = _csrf(client)
    response = client.post(
        "/sign-in",
        data={"token": _secret(agent_headers), "csrf_token": csrf, "next": "//evil.example/x"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/search"  # never off-site
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/search").get_data(as_text=True)
    assert "test-agent" in page and "agent" in page
    assert _csrf(client, "/search") != csrf  # a fresh session on sign-in


def test_ui_bad_token_is_refused(client: Any) -> None:
    response = client.post("/sign-in", data={"token": "nope", "csrf_token": _csrf(client)})
    assert response.status_code == 401
    assert "unknown or revoked" in response.get_data(as_text=True)


def test_ui_form_errors_are_tied_to_the_fields_at_fault(
    client: Any, admin_headers: Any
) -> None:
    """Each refused form marks its field invalid and has it described by the message (the
    sign-in box was marked but not described; the others were not marked at all)."""
    refused = client.post("/sign-in", data={"token": "nope", "csrf_token": _csrf(client)})
    page = refused.get_data(as_text=True)
    assert _tied_to_error(page, "sign-in-error") == {"token"}
    assert "unknown or revoked" in page
    assert "aria-invalid" not in client.get("/sign-in").get_data(as_text=True)

    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/admin/holds")
    hold = {"csrf_token": csrf, "scope": "customer", "value": "C9", "reason": "case 7"}
    client.post("/admin/holds", data=hold)
    for form, at_fault, said in (
        (hold, "h-value", "already on hold"),  # refused by the rules of holds
        ({**hold, "scope": "record", "value": "REC 1"}, "h-value", "must name a record id"),
        ({**hold, "value": "C10", "reason": "  "}, "h-reason", "needs a reason"),
    ):
        page = client.post("/admin/holds", data=form).get_data(as_text=True)
        assert _tied_to_error(page, "hold-error") == {at_fault}, said
        assert said in page
    assert "aria-invalid" not in client.get("/admin/holds").get_data(as_text=True)

    for query, at_fault in (("from=2023-13-01", "a-from"), ("to=bogus", "a-to"),
                            ("action=nope", "a-action")):
        page = client.get(f"/audit?{query}").get_data(as_text=True)
        assert _tied_to_error(page, "audit-error") == {at_fault}, query
    assert "aria-invalid" not in client.get("/audit").get_data(as_text=True)

    page = client.get("/admin?as_of=2025-02-30").get_data(as_text=True)
    assert _tied_to_error(page, "as-of-error") == {"as_of"}
    assert "aria-invalid" not in client.get("/admin").get_data(as_text=True)


def test_ui_search_escapes_everything_but_the_snippet_marks(
    client: Any, agent_headers: Any, corpus: None
) -> None:
    _sign_in(client, agent_headers)
    page = client.get("/search?q=onerror").get_data(as_text=True)
    assert "<img" not in page and "<script>x()" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    page = client.get("/search?q=退款").get_data(as_text=True)
    assert '<mark><span lang="zh">退款</span></mark>' in page  # marked Chinese, inside the mark
    record = client.get("/records/A-3").get_data(as_text=True)
    assert "&lt;script&gt;x()&lt;/script&gt;&lt;img onerror=&#34;y&#34;&gt;" in record


def test_ui_bad_query_is_shown_not_a_500(client: Any, agent_headers: Any, corpus: None) -> None:
    _sign_in(client, agent_headers)
    response = client.get("/search?q=%22unclosed&per_page=1000")
    assert response.status_code == 400
    assert "could not run" in response.get_data(as_text=True)


@pytest.mark.parametrize(("query", "at_fault"), [
    ("from=2024-01-01&to=2023-01-01", "from"),
    ("from=2023-02-30", "from"),
    ("to=bogus", "to"),
    ("per_page=1000", "per_page"),
    ("sort=sideways", "sort"),
    ("q=%22unclosed", "q"),
    ("q=refund&q=kettle", "q"),
])
def test_ui_a_refused_search_marks_the_field_at_fault_and_says_it_did_not_run(
    client: Any, agent_headers: Any, corpus: None, query: str, at_fault: str
) -> None:
    """The query box was marked invalid (and described by the message) whatever was wrong,
    a date or the page size included; the page had no heading and a search's title."""
    _sign_in(client, agent_headers)
    response = client.get(f"/search?{query}")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert _tied_to_error(page, "search-error") == {at_fault}
    assert re.findall(r"<h1[^>]*>([^<]*)</h1>", page) == ["The search could not be run"]
    assert "<title>The search could not be run – " in page
    if at_fault == "sort":  # its note still describes it too
        assert _elements_by_id(page)["sort"]["aria-describedby"] == "search-error sort-default"
    fine = client.get("/search?q=refund").get_data(as_text=True)
    assert "aria-invalid" not in fine and 'id="search-error"' not in fine
    assert "could not be run" not in fine


def test_ui_empty_parameters_are_dropped_from_the_url(client: Any, agent_headers: Any) -> None:
    _sign_in(client, agent_headers)
    response = client.get("/search?q=&category=a&category=b&from=&owner=&junk=1")
    assert response.status_code == 302
    assert response.headers["Location"] == "/search?category=a&category=b"
    assert client.get("/search?category=a&category=b").status_code == 200


def test_ui_unknown_record_is_a_404_page(client: Any, agent_headers: Any) -> None:
    _sign_in(client, agent_headers)
    response = client.get("/records/NOPE-1")
    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_ui_a_page_not_found_or_not_to_open_keeps_the_signed_in_header(
    client: Any, agent_headers: Any, corpus: None
) -> None:
    """A 404 or 405 page showed a signed-in user no menu, no name and only a Sign in link, as
    if signed out; the 403 and missing-record pages showed them."""
    for path, status in (("/nope", 404), ("/records/A-1/restore", 405)):
        response = client.get(path)
        page = response.get_data(as_text=True)
        assert response.status_code == status, path
        assert "Signed in as" not in page and 'href="/sign-in"' in page, path
    _sign_in(client, agent_headers)
    for path, status in (("/nope", 404), ("/records/A-1/restore", 405),
                         ("/records/NOPE-1", 404), ("/admin", 403)):
        response = client.get(path)
        page = response.get_data(as_text=True)
        assert response.status_code == status, path
        assert 'data-testid="who"' in page and "test-agent" in page, path
        assert '<nav class="nav" aria-label="Main">' in page, path
        assert ">Back to search</a>" in page and 'href="/sign-in"' not in page, path


def test_ui_record_page_names_a_disposal_and_an_erasure_each_for_what_it_was(
    client: Any, admin_headers: Any, services: Any, corpus: None
) -> None:
    services.store.purge(["A-1"], datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC), "disposer")
    services.store.erase(["A-2"], datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC), "admin")
    _sign_in(client, admin_headers)

    disposed = client.get("/records/A-1")
    erased = client.get("/records/A-2")

    assert disposed.status_code == 200 and erased.status_code == 200
    disposed_page, erased_page = disposed.get_data(as_text=True), erased.get_data(as_text=True)
    assert "was disposed of 2031-02-03" in disposed_page
    assert "<dt>Disposed</dt><dd>2031-02-03" in disposed_page
    assert "<dt>Erased</dt>" not in disposed_page
    assert "was erased on request 2031-05-06" in erased_page
    assert "<dt>Erased</dt><dd>2031-05-06" in erased_page
    assert "<dt>Disposed</dt>" not in erased_page


def test_ui_a_customer_id_with_a_direction_changing_character_shows_it(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """`\u202eCUST-9` was drawn as `9-TSUC`: the same as a customer of that id."""
    archived(make_record(id="BIDI-1", customer_id="\u202eCUST-9", body="bidimarker"))
    _sign_in(client, admin_headers)
    record = client.get("/records/BIDI-1").get_data(as_text=True)
    hits = client.get("/search?q=bidimarker").get_data(as_text=True)
    for page in (record, hits):
        assert ">\\u202eCUST-9</a>" in page
        assert "\u202e" not in page.replace("%E2%80%AE", "")  # (the link's query keeps it)


def test_ui_record_page_says_when_a_disposed_or_erased_id_is_active_again(
    client: Any, admin_headers: Any, services: Any, corpus: None
) -> None:
    """Restored before its erasure, or made anew by the CRM after its disposal: the archive's
    facts stay what they were, and the page says the id is in the active CRM now."""
    from archivist.active_db import upsert_records, utcnow
    from archivist.records import parse_record
    from indexer.jobs.erasure import erase_records
    from indexer.jobs.restore import restore_record

    restore_record(services.sessions, services.store, services.index, "A-2", "admin", utcnow())
    erase_records(services, record_id="A-2", actor="admin", at=utcnow())
    services.store.purge(["A-1"], datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC), "disposer")
    with services.sessions.begin() as session:
        upsert_records(session, [parse_record({
            "id": "A-1", "kind": "note", "category": "support", "customer_id": "C9",
            "owner": None, "subject": "made anew", "body": "new", "status": "open",
            "created_at": "2031-03-01T00:00:00Z", "updated_at": "2031-03-01T00:00:00Z"})])
    _sign_in(client, admin_headers)

    for record_id, said in (("A-2", "was erased on request"), ("A-1", "was disposed of")):
        page = client.get(f"/records/{record_id}").get_data(as_text=True)
        assert said in page
        assert "a record with this id is in the active CRM now" in page, record_id
    services.store.purge(["A-3"], datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC), "disposer")
    page = client.get("/records/A-3").get_data(as_text=True)
    assert "was disposed of" in page and "in the active CRM now" not in page


def test_ui_roles_hide_and_refuse(
    client: Any, agent_headers: Any, auditor_headers: Any, corpus: None
) -> None:
    _sign_in(client, agent_headers)
    page = client.get("/records/A-1").get_data(as_text=True)
    assert "Restore to active CRM" not in page and "Audit log" not in page
    csrf = _csrf(client, "/search")
    assert client.post("/records/A-1/restore", data={"csrf_token": csrf}).status_code == 403
    for path in ("/audit", "/admin", "/admin/holds", "/search/export.csv"):
        assert client.get(path).status_code == 403, path

    client.post("/sign-out", data={"csrf_token": csrf})
    _sign_in(client, auditor_headers)
    page = client.get("/search?q=refund").get_data(as_text=True)
    assert "Export CSV" in page and "Legal holds" not in page
    assert client.get("/audit").status_code == 200
    assert client.get("/admin").status_code == 403


def test_ui_export_started_from_another_site_is_refused_and_not_audited(
    client: Any, auditor_headers: Any, corpus: None, services: Any
) -> None:
    """The session cookie rides along when another site sends the browser to the export
    link; such an export would run, audited in the user's name, without a click here."""
    from archivist.audit import AuditFilter, list_audit

    _sign_in(client, auditor_headers)
    for site in ("cross-site", "same-site"):
        response = client.get("/search/export.csv?q=refund", headers={"Sec-Fetch-Site": site})
        assert response.status_code == 403, site
        assert "another site" in response.get_data(as_text=True)
    with services.read_sessions.begin() as session:
        assert list_audit(session, AuditFilter(action="export")).total == 0

    for site in ("same-origin", "none", None):  # a click here, a typed URL, an older browser
        headers = {"Sec-Fetch-Site": site} if site else {}
        response = client.get("/search/export.csv?q=refund", headers=headers)
        assert response.status_code == 200, site
        assert "A-1" in response.get_data(as_text=True)
    with services.read_sessions.begin() as session:  # only the three started here
        assert list_audit(session, AuditFilter(action="export")).total == 3


def test_ui_export_without_sec_fetch_headers_is_judged_by_its_origin_then_its_referer(
    client: Any, auditor_headers: Any, corpus: None, services: Any
) -> None:
    """Over plain HTTP (and in older browsers) no `Sec-Fetch-Site` is sent: the `Origin`, else
    the `Referer`, says whether another site sent the browser to the export link."""
    from archivist.audit import AuditFilter, list_audit

    _sign_in(client, auditor_headers)
    for headers in ({"Referer": "http://evil.example/"}, {"Origin": "http://evil.example"},
                    {"Origin": "null"},
                    {"Origin": "http://evil.example", "Referer": "http://localhost/search"},
                    {"Referer": "http://localhost.evil.example/search?q=refund"}):
        response = client.get("/search/export.csv?q=refund", headers=headers)
        assert response.status_code == 403, headers
        assert "another site" in response.get_data(as_text=True)
    with services.read_sessions.begin() as session:
        assert list_audit(session, AuditFilter(action="export")).total == 0

    for headers in ({"Referer": "http://localhost/search?q=refund"},
                    {"Origin": "http://localhost"},
                    {"Referer": "https://localhost/search?q=refund"},  # TLS ended by a proxy
                    {"Sec-Fetch-Site": "same-origin", "Referer": "http://evil.example/"}):
        response = client.get("/search/export.csv?q=refund", headers=headers)
        assert response.status_code == 200, headers
        assert "A-1" in response.get_data(as_text=True)
    with services.read_sessions.begin() as session:
        assert list_audit(session, AuditFilter(action="export")).total == 4


def test_ui_head_of_an_export_answers_its_headers_without_running_it(
    client: Any, auditor_headers: Any, corpus: None, services: Any
) -> None:
    from archivist.audit import AuditFilter, list_audit

    _sign_in(client, auditor_headers)
    response = client.head("/search/export.csv?q=refund")
    response.close()  # as a server does once it has answered
    assert (response.status_code, response.mimetype) == (200, "text/csv")
    assert response.get_data() == b"" and "Content-Length" not in response.headers
    assert response.headers["Content-Disposition"].startswith(
        'attachment; filename="archivist-export_'
    )
    with services.read_sessions.begin() as session:
        assert list_audit(session, AuditFilter(action="export")).total == 0
    refused = client.head("/search/export.csv?q=refund%20AND")  # as its GET is
    refused.close()
    assert refused.status_code == 400
    client.get("/audit")  # waits for the audit entries under way
    with services.read_sessions.begin() as session:
        [entry] = list_audit(session, AuditFilter(action="export")).entries
    assert entry.outcome == "bad_query"


def test_ui_restore_is_audited_and_idempotent_in_the_ui(
    client: Any, admin_headers: Any, auditor_headers: Any, corpus: None, services: Any
) -> None:
    from archivist.active_db import find_active

    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/records/A-1")
    no_reason = client.post("/records/A-1/restore", data={"csrf_token": csrf},
                            follow_redirects=True)
    assert "give a reason" in no_reason.get_data(as_text=True)
    form = {"csrf_token": csrf, "reason": "customer asked"}
    response = client.post("/records/A-1/restore", data=form)
    assert response.status_code == 303
    page = client.get("/records/A-1").get_data(as_text=True)
    assert "back in the active CRM" in page and "Restore this process" not in page
    assert "customer asked" in page
    with services.sessions.begin() as session:
        assert len(find_active(session, ["A-1"])) == 1
    again = client.post("/records/A-1/restore", data=form, follow_redirects=True)
    assert "was not restored" in again.get_data(as_text=True)
    audit = client.get("/audit?action=restore").get_data(as_text=True)
    assert "test-admin" in audit and "A-1" in audit


def test_ui_restore_button_counts_the_whole_process_not_the_listed_part(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """The record page lists 1,000 records of a process; the button and its confirmation say
    how many the restore really brings back."""
    archived(make_record(id="BIG-ROOT"),
             *(make_record(id=f"BIG-{i:05d}", parent_id="BIG-ROOT") for i in range(1050)))
    _sign_in(client, admin_headers)
    page = client.get("/records/BIG-00005").get_data(as_text=True)
    assert "The first 1,000 records of the process." in page
    assert "Restore this process: 1051 records" in page
    assert "(1051 records)" in page


def test_ui_links_with_control_characters_go_to_a_safe_page_not_a_500(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    csrf = _csrf(client)
    response = client.post("/sign-in", data={
        "token": _secret(admin_headers), "csrf_token": csrf, "next": "/records/A-1\r\nX: 1"})
    assert (response.status_code, response.headers["Location"]) == (303, "/search")
    form = {"csrf_token": _csrf(client, "/search"), "mode": "ids", "ids": ["A-1"],
            "reason": "r", "search": "q=a\nb"}
    response = _bulk_restore(client, **form)
    assert response.status_code == 303 and "\n" not in response.headers["Location"]


def test_ui_bulk_restore_restores_only_what_its_confirmation_counted(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """A search's records archived after its confirmation page was shown are not restored
    with the ones it counted: the page comes back with the new count, nothing restored."""
    archived(make_record(id="CNT-1", customer_id="C-CNT", body="countword"))
    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/search")
    form = {"csrf_token": csrf, "mode": "search", "search": "q=countword", "reason": "r"}
    page = client.post("/restore", data=form).get_data(as_text=True)
    assert "The search matches 1 record: restoring 1 archived record" in page
    shown = re.search(r'name="plan" value="([0-9a-f]{64})"', page)
    assert shown
    archived(*(make_record(id=f"CNT-{n}", customer_id="C-CNT", body="countword")
               for n in range(2, 12)))  # meanwhile, the archive job
    confirmed = {**form, "plan": shown.group(1), "confirmed": "1"}
    again = client.post("/restore", data=confirmed).get_data(as_text=True)
    assert 'data-testid="plan-changed"' in again
    assert "The search matches 11 records: restoring 11 archived records" in again
    assert "nothing was restored" in again
    assert _archived_ids(client, "countword") == {f"CNT-{n}" for n in range(1, 12)}
    done = _bulk_restore(client, **form)  # confirming the new count restores them
    assert done.status_code == 303
    assert _archived_ids(client, "countword") == set()


def test_ui_a_bulk_restore_sent_again_says_its_records_were_already_restored(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """Back to the confirmation and Restore again (the form sent twice) said the count had
    changed and that the records "cannot be restored", never that they were restored."""
    archived(make_record(id="AG-1", body="againword"),
             make_record(id="AG-1-M", parent_id="AG-1", body="reply"),
             make_record(id="AG-2", body="againword"), make_record(id="AG-3", body="againword"))
    _sign_in(client, admin_headers)
    form = {"csrf_token": _csrf(client, "/search"), "mode": "ids", "ids": ["AG-1", "AG-2"],
            "search": "q=againword", "reason": "reopened"}
    shown = client.post("/restore", data=form).get_data(as_text=True)
    assert "You ticked 2 records: restoring 3 archived records in 2 processes" in shown
    plan = re.search(r'name="plan" value="([0-9a-f]{64})"', shown)
    assert plan is not None
    confirmed = {**form, "plan": plan.group(1), "confirmed": "1"}
    assert client.post("/restore", data=confirmed).status_code == 303

    again = client.post("/restore", data=confirmed)
    page = again.get_data(as_text=True)
    assert "These records were already restored (2); nothing more to restore." in page
    assert "You ticked 2 records: restoring 0 archived records in 0 processes" in page
    assert "changed since the count was shown" not in page and "cannot be restored" not in page
    assert 'data-testid="nothing-to-restore"' in page and 'name="confirmed"' not in page
    assert _archived_ids(client, "againword") == {"AG-3"}

    # ticked beside one still archived: that one is counted, the other said to be restored
    form = {**form, "ids": ["AG-2", "AG-3"]}
    page = client.post("/restore", data=form).get_data(as_text=True)
    assert "You ticked 2 records: restoring 1 archived record in 1 process" in page
    assert "1 was already restored and will be skipped." in page
    assert "cannot be restored" not in page
    # a record never archived still cannot be
    page = client.post("/restore", data={**form, "ids": ["AG-2", "NOPE-9"]}).get_data(
        as_text=True)
    assert "1 cannot be restored and will be skipped." in page
    assert "1 was already restored and will be skipped." in page


_CONTROL = ("Nothing was restored: the search holds a control character, which the search page "
            "never sends.")


@pytest.mark.parametrize(("form", "said"), [
    # a typo'd filter was dropped: the search matched every archived record
    ({"mode": "search", "search": "customer_idd=C-ONE"},
     "Nothing was restored: the search has no parameter &#39;customer_idd&#39;."),
    ({"mode": "search", "search": "zzz"},
     "Nothing was restored: the search has no parameter &#39;zzz&#39;."),
    ({"mode": "ids", "ids": ["x" * 129]},
     "Nothing was restored: a record id has 1 to 128 characters."),
    # a control character was read as no search at all: every archived record counted
    ({"mode": "search", "search": "q=ONE\x07"}, _CONTROL),
    ({"mode": "search", "search": "customer_id=C-ONE\t"}, _CONTROL),
    ({"mode": "search", "search": "customer_id=C\x7f"}, _CONTROL),
], ids=["misspelt-filter", "no-filter", "long-id", "bell", "tab", "delete"])
def test_ui_bulk_restore_refuses_what_the_search_page_never_sends(
    client: Any, admin_headers: Any, services: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]], form: dict[str, Any], said: str,
) -> None:
    """The API refuses an unknown search parameter and an id no record can have; the page's
    form did neither: it counted every archived record for a misspelt filter, and wrote a
    100,000-character id twice into the audit log."""
    archived(make_record(id="ONE-1", customer_id="C-ONE"), make_record(id="TWO-1"))
    _sign_in(client, admin_headers)
    data = {"csrf_token": _csrf(client, "/search"), "reason": "r", **form}
    for step in ({}, {"confirmed": "1", "plan": "0" * 64}):
        response = client.post("/restore", data={**data, **step}, follow_redirects=True)
        assert said in response.get_data(as_text=True)
    states = {i: e.state for i, e in services.store.entries(["ONE-1", "TWO-1"]).items()}
    assert states == {"ONE-1": "archived", "TWO-1": "archived"}
    client.application.extensions["archivist_audit"].flush()
    with services.sessions.begin() as session:
        assert list_audit(session, AuditFilter(action="restore")).total == 0


def test_ui_restore_ticked_shows_the_whole_processes_count_first(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(make_record(id="TK-ROOT", body="tickroot"),
             *(make_record(id=f"TK-{n}", parent_id="TK-ROOT", body="child") for n in range(5)))
    _sign_in(client, admin_headers)
    form = {"csrf_token": _csrf(client, "/search"), "mode": "ids", "ids": ["TK-ROOT"],
            "search": "q=tickroot"}
    page = client.post("/restore", data=form).get_data(as_text=True)
    assert "You ticked 1 record: restoring 6 archived records in 1 process" in page
    assert _archived_ids(client, "tickroot") == {"TK-ROOT"}  # only counted so far
    assert _bulk_restore(client, **form, reason="r").status_code == 303
    assert _archived_ids(client, "tickroot OR child") == set()


def test_ui_a_confirmed_restore_counts_its_limit_as_the_dry_run_did(
    config_path: Path, services: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """`max_bulk_restore` counts the records asked for, not their processes' other records:
    what the confirmation page offered is restored when confirmed."""
    from tests.conftest import _token_headers

    config_path.write_text(config_path.read_text() + "\n[server]\nmax_bulk_restore = 3\n")
    archived(make_record(id="LIM-ROOT", body="limitroot"),
             *(make_record(id=f"LIM-{n}", parent_id="LIM-ROOT", body="kid") for n in range(4)))
    app = create_app(load_config(config_path))
    try:
        client = app.test_client()
        _sign_in(client, _token_headers(services, "admin"))
        form = {"csrf_token": _csrf(client, "/search"), "mode": "ids", "ids": ["LIM-ROOT"],
                "search": "q=limitroot", "reason": "r"}
        page = client.post("/restore", data=form).get_data(as_text=True)
        assert "You ticked 1 record: restoring 5 archived records in 1 process" in page
        done = _bulk_restore(client, **form)
        assert "Restored 5 records (1 process)" in client.get(
            done.headers["Location"]).get_data(as_text=True)
    finally:
        close_app(app)
    assert services.store.find_archived(["LIM-ROOT", *(f"LIM-{n}" for n in range(4))]) == set()


def test_ui_record_page_names_a_hold_on_an_active_record_of_its_process(
    client: Any, admin_headers: Any, services: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """A child imported under an archived root stays active; a hold on its customer keeps
    the whole process from disposal and erasure, so the root's page says so."""
    import json
    from functools import partial

    from archivist.importer import import_lines
    from indexer.processes import find_archived_parents

    archived(make_record(id="HA-ROOT", customer_id="C-ARCH"))
    child = make_record(id="HA-KID", parent_id="HA-ROOT", customer_id="C-LIVE",
                        updated_at="2999-01-01T00:00:00Z")
    report = import_lines([json.dumps(child).encode()], services.sessions,
                          services.store.find_archived,
                          find_archived_parents=partial(find_archived_parents, services.store))
    assert report.rejected == 0
    _sign_in(client, admin_headers)
    client.post("/admin/holds", data={"csrf_token": _csrf(client, "/admin/holds"),
                                      "scope": "customer", "value": "C-LIVE",
                                      "reason": "litigation 9"})
    page = client.get("/records/HA-ROOT").get_data(as_text=True)
    assert 'data-testid="hold-note"' in page and "litigation 9" in page


def _archived_ids(client: Any, q: str) -> set[str]:
    page = client.get("/search", query_string={"q": q, "per_page": 100}).get_data(as_text=True)
    return set(re.findall(r'class="hit-title"><a href="/records/([^"?]+)[?"]', page))


def test_ui_signing_in_again_ends_the_session_before(
    client: Any, admin_headers: Any, agent_headers: Any
) -> None:
    _sign_in(client, admin_headers)
    admin_cookie = client.get_cookie("archivist_session")
    assert admin_cookie is not None and client.get("/admin").status_code == 200
    _sign_in(client, agent_headers)
    assert client.get("/admin").status_code == 403
    client.set_cookie("archivist_session", admin_cookie.value)  # a copy of the admin cookie
    response = client.get("/admin")
    assert response.status_code == 302 and "/sign-in" in response.headers["Location"]


def test_ui_search_form_keeps_a_bookmarked_search_as_it_is(
    client: Any, agent_headers: Any, corpus: None
) -> None:
    """Pressing Search again must not cut a bound's time or drop an unusual page size."""
    _sign_in(client, agent_headers)
    page = client.get(
        "/search?q=refund&from=2019-06-15T12:00:00Z&to=2020-06-20&per_page=5"
    ).get_data(as_text=True)
    assert 'name="from" type="text" value="2019-06-15T12:00:00Z"' in page
    assert 'name="to" type="date" value="2020-06-20"' in page
    assert '<option value="5" selected>' in page


def test_ui_admin_as_of_errors_name_the_parameter(client: Any, admin_headers: Any) -> None:
    _sign_in(client, admin_headers)
    for value in ("9999-12-31T23:59:59-14:00", "1" * 5000):
        response = client.get("/admin", query_string={"as_of": value})
        assert response.status_code == 400
        assert "as_of: " in response.get_data(as_text=True)


def test_ui_admin_shows_no_preview_for_an_as_of_it_refused(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    """A preview for now under the error would pass for the answer to the date asked for."""
    _sign_in(client, admin_headers)
    shown = client.get("/admin", query_string={"as_of": "2040-01-01"})
    assert shown.status_code == 200
    page = shown.get_data(as_text=True)
    assert "counted as if the job ran at 2040-01-01 00:00 UTC" in page
    assert 'id="held-back"' in page and "<tfoot>" in page and "no-preview" not in page
    for value in ("garbage", "0001-01-02"):  # unreadable; so early a policy reaches year 0
        refused = client.get("/admin", query_string={"as_of": value})
        page = refused.get_data(as_text=True)
        assert refused.status_code == 400, value
        assert "as_of: " in page and 'data-testid="no-preview"' in page, value
        assert "counted as if" not in page and 'id="held-back"' not in page, value
        assert "<tfoot>" not in page, value
        assert f'value="{value}"' in page  # kept in its box to be corrected


def test_ui_audit_log_links_only_entries_naming_a_record(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/search")
    _bulk_restore(client, csrf_token=csrf, mode="ids", ids=["A-2"], reason="bulk")
    client.post("/records/A-1/restore", data={"csrf_token": csrf, "reason": "one"})
    page = client.get("/audit?action=restore").get_data(as_text=True)
    assert '<a href="/records/A-1">A-1</a>' in page
    assert '<a href="/records/ids">' not in page and ">ids</td>" in page


def test_ui_chinese_text_is_marked_as_chinese_wherever_record_text_is_shown(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """The pages are `lang="en"`: Chinese subjects, bodies and snippets were read as English."""
    archived(make_record(id="Z-1", subject="客户申请退款", body="客户要求退款。\nrefund <b>",
                         status="已关闭", attributes={"渠道": "微信"}),
             make_record(id="Z-1-M", parent_id="Z-1", subject="回复", body="已退款"))
    _sign_in(client, admin_headers)
    search = client.get("/search?q=退款").get_data(as_text=True)
    assert '>客户申请退款</a>' not in search
    assert '<span lang="zh">客户申请退款</span></a>' in search
    assert '<p class="snippet"><span lang="zh">客户要求</span><mark>' in search
    record = client.get("/records/Z-1").get_data(as_text=True)
    for shown in ('<h1><span lang="zh">客户申请退款</span></h1>',
                  '<span lang="zh">客户要求退款。</span>\nrefund &lt;b&gt;</div>',
                  '<dt>Status</dt><dd><span lang="zh">已关闭</span></dd>',
                  '&#34;<span lang="zh">渠道</span>&#34;: &#34;<span lang="zh">微信</span>&#34;',
                  '<bdi><span lang="zh">回复</span></bdi>'):
        assert shown in record, shown
    assert "<title>客户申请退款 · Archivist</title>" in record  # (a title holds no markup)


def test_ui_chinese_runs_are_marked_and_nothing_else_changes() -> None:
    from markupsafe import Markup, escape

    from server.ui.filters import mark_chinese

    def zh(text: str) -> str:
        return f'<span lang="zh">{text}</span>'

    assert mark_chinese("refund 退款，谢谢！ ok") == f"refund {zh('退款，谢谢！')} ok"
    # CJK punctuation, a Han character beyond the first plane, fullwidth forms
    assert mark_chinese("「发票」𠀋ＩＮＶ－１") == zh("「发票」𠀋ＩＮＶ－１")
    # text is escaped first; markup (a snippet) is kept, its marks around their own runs
    assert mark_chinese('<b>退款</b> & "x"') == (
        f"&lt;b&gt;{zh('退款')}&lt;/b&gt; &amp; &#34;x&#34;")
    assert mark_chinese(Markup("客户<mark>退款</mark>了 &amp; more")) == (
        f"{zh('客户')}<mark>{zh('退款')}</mark>{zh('了')} &amp; more")
    # nothing else changes: without its spans, the result is the escaped text
    for text in ("plain <i>ASCII</i> & 'quotes'", "カタカナ 한국어 café", "混合 mixed\n文本", ""):
        marked = mark_chinese(text)
        assert isinstance(marked, Markup)
        assert re.sub(r'<span lang="zh">|</span>', "", marked) == escape(text)
    assert mark_chinese("カタカナ 한국어 café") == "カタカナ 한국어 café"  # not Chinese


def test_ui_counts_read_in_the_singular_and_the_plural() -> None:
    from server.ui.filters import counted

    assert [counted(1, "record"), counted(1051, "record"), counted(3, "process"),
            counted(1, "process")] == ["1 record", "1,051 records", "3 processes", "1 process"]


def test_ui_times_read_with_four_digit_years() -> None:
    from datetime import UTC, datetime

    from server.ui.filters import format_when

    assert format_when("0001-01-01T00:00:00Z") == "0001-01-01 00:00 UTC"
    assert format_when(datetime(987, 6, 5, 4, 3, tzinfo=UTC)) == "0987-06-05 04:03 UTC"
    assert format_when("2024-03-05T22:07:00+08:00") == "2024-03-05 14:07 UTC"


def test_ui_a_bad_audit_filter_shows_no_entries_rather_than_the_whole_log(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    _sign_in(client, admin_headers)
    client.get("/search?q=refund")  # (an entry the unfiltered log would show)
    for query in ("from=2026-12-06&to=2026-12-01&action=restore", "from=bogus", "action=nope"):
        response = client.get(f"/audit?{query}")
        page = response.get_data(as_text=True)
        assert response.status_code == 400, query
        assert "<strong>0</strong> entries" in page, query
        assert "correct the filter above" in page and "<td>search</td>" not in page, query
    assert "<td>search</td>" in client.get("/audit").get_data(as_text=True)


def test_ui_a_page_past_the_end_says_so_and_leads_back(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    _sign_in(client, admin_headers)
    page = client.get("/search?q=refund&page=99").get_data(as_text=True)
    assert "past the last page" in page and "No archived record matches" not in page
    assert 'href="/search?q=refund&amp;page=1"' in page
    assert "No archived record matches" in client.get("/search?q=zzzqqq").get_data(as_text=True)
    paged = client.get("/search?per_page=1&page=99").get_data(as_text=True)  # 3 pages
    assert "past the last page" in paged and "Page 99 of 3" not in paged
    audit = client.get("/audit?page=9999").get_data(as_text=True)
    assert "Page 9,999 is past the last page of these entries" in audit
    assert "No entries match" not in audit and 'href="/audit?page=1"' in audit


def test_ui_bulk_restore_asks_for_its_reason_before_the_ticks_are_sent(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    _sign_in(client, admin_headers)
    page = client.get("/search?q=refund").get_data(as_text=True)
    reason = re.search(r'<input[^>]*data-testid="bulk-reason"[^>]*>', page)
    assert reason is not None and " required" in reason.group()


def test_ui_a_restore_keeps_the_record_page_s_way_back_to_its_search(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    _sign_in(client, admin_headers)
    back = "/search?q=refund&sort=oldest"
    page = client.get("/records/A-1", query_string={"back": back}).get_data(as_text=True)
    assert 'name="back" value="/search?q=refund&amp;sort=oldest"' in page
    csrf = _csrf(client, "/search")
    done = client.post("/records/A-1/restore",
                       data={"csrf_token": csrf, "reason": "reopened", "back": back})
    assert done.status_code == 303
    page = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "Restored: the process is back" in page
    assert '<a href="/search?q=refund&amp;sort=oldest">← Back to search</a>' in page
    # a way back elsewhere than this site's search is not followed
    done = client.post("/records/A-2/restore", data={
        "csrf_token": csrf, "reason": "r", "back": "https://elsewhere.example/search"})
    assert "elsewhere" not in done.headers["Location"]


def test_ui_a_customer_filter_pasted_with_spaces_finds_the_customer(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(make_record(id="CU-1", customer_id="C03135", body="refund"))
    _sign_in(client, admin_headers)
    tidy = client.get("/search?customer_id=C03135%20")
    assert tidy.status_code == 302 and tidy.headers["Location"].endswith("?customer_id=C03135")
    page = client.get(tidy.headers["Location"]).get_data(as_text=True)
    assert "CU-1" in page


def _chips(page: str, label: str) -> dict[str, tuple[int, str]]:
    """The facet chips of one row: name -> (count, link)."""
    row = re.search(rf'facet-label">{label}</span>(.*?)</div>', page, re.S)
    assert row, page[:500]
    found = re.findall(r'<a class="chip[^"]*" href="([^"]+)"[^>]*>([^<]+?) <span class="count">'
                       r"(\d+)</span>", row.group(1))
    return {name: (int(count), href.replace("&amp;", "&")) for href, name, count in found}


def _total(client: Any, link: str) -> int:
    page = client.get(link).get_data(as_text=True)
    match = re.search(r'data-testid="total">\s*([\d,]+)', page)
    assert match, page[:500]
    return int(match.group(1).replace(",", ""))


def test_ui_a_facet_chip_counts_what_its_link_shows(
    client: Any, agent_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(
        make_record(id="F-1", category="Billing", created_at="2020-03-01T00:00:00Z"),
        make_record(id="F-2", category="billing", created_at="2020-09-01T00:00:00Z"),
        make_record(id="F-3", category="billing", created_at="2021-02-01T00:00:00Z"),
        make_record(id="F-4", category="support", created_at="2020-11-01T00:00:00Z"),
    )
    _sign_in(client, agent_headers)
    page = client.get("/search").get_data(as_text=True)
    # the chips are a group named by its label (a plain div's label was not read)
    assert '<div class="facets" role="group" aria-label="Refine by">' in page
    categories = _chips(page, "Category")
    assert {name: count for name, (count, _) in categories.items()} == {"billing": 3, "support": 1}
    for count, link in categories.values():
        assert _total(client, link) == count
    # the filter box is one box too, ticked whichever spelling the URL has
    filtered = client.get("/search?category=Billing").get_data(as_text=True)
    assert len(re.findall(r'name="category" value="billing"', filtered, re.I)) == 1
    assert re.search(r'name="category" value="Billing" checked', filtered)
    assert "category=" not in _chips(filtered, "Category")["Billing"][1]  # its chip unticks
    # with no result of its own, the box has the spelling most records have, not the first
    other = client.get("/search?category=support").get_data(as_text=True)
    assert re.search(r'name="category" value="billing"', other)
    assert not re.search(r'name="category" value="Billing"', other)
    # a filter no record or policy names is shown ticked all the same, so it can be unticked
    nothing = client.get("/search?category=Nowhere&kind=weird").get_data(as_text=True)
    assert re.search(r'name="category" value="Nowhere" checked', nothing)
    assert re.search(r'name="kind" value="weird" checked', nothing)

    # a year chip keeps the dates asked for
    page = client.get("/search?from=2020-06-01&to=2021-03-01").get_data(as_text=True)
    years = _chips(page, "Year")
    assert {year: count for year, (count, _) in years.items()} == {"2020": 2, "2021": 1}
    assert "from=2020-06-01" in years["2020"][1] and "to=2020-12-31" in years["2020"][1]
    assert "from=2021-01-01" in years["2021"][1] and "to=2021-03-01" in years["2021"][1]
    for count, link in years.values():
        assert _total(client, link) == count


def test_ui_holds_round_trip(client: Any, admin_headers: Any) -> None:
    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/admin/holds")
    form = {"csrf_token": csrf, "scope": "customer", "value": "C9", "reason": "case 7"}
    page = client.post("/admin/holds", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Legal hold placed" in page and "case 7" in page
    page = client.post("/admin/holds", data=form, follow_redirects=True).get_data(as_text=True)
    assert "already on hold" in page
    blank = {**form, "reason": "   "}
    page = client.post("/admin/holds", data=blank, follow_redirects=True).get_data(as_text=True)
    assert "needs a reason" in page
    lift = {"csrf_token": csrf, "scope": "customer", "value": "C9"}
    page = client.post("/admin/holds/remove", data=lift, follow_redirects=True)
    assert "lifted" in page.get_data(as_text=True)
    # A value with a direction-changing character is shown with it, not drawn as `54000C`.
    form = {**form, "value": "\u202eC00045"}
    page = client.post("/admin/holds", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Legal hold placed" in page
    assert ">\\u202eC00045</td>" in page and "Lift the hold on customer \\u202eC00045?" in page
    assert 'name="value" value="\u202eC00045"' in page  # the form lifts the value as it is
    lift = {**lift, "value": "\u202eC00045"}
    page = client.post("/admin/holds/remove", data=lift, follow_redirects=True)
    assert "lifted" in page.get_data(as_text=True)


def test_ui_admin_forms_refuse_a_field_given_twice_and_do_nothing(
    client: Any, admin_headers: Any, corpus: None, services: Any
) -> None:
    """A field sent twice (by hand, or a tampered form) was taken at its first value: a hold
    on `sales` placed when `sales` and `billing` were asked. Refused as the API refuses it."""
    from werkzeug.datastructures import MultiDict

    from archivist.active_db import find_active
    from archivist.holds import list_holds

    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/admin/holds")
    twice = [("csrf_token", csrf), ("scope", "category"), ("value", "sales"),
             ("value", "billing"), ("reason", "case 7")]
    response = client.post("/admin/holds", data=MultiDict(twice))
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "The hold was not placed: value: given more than once; give it once" in page
    assert _tied_to_error(page, "hold-error") == {"h-value"}
    client.post("/admin/holds", data={"csrf_token": csrf, "scope": "category",
                                      "value": "sales", "reason": "case 7"})
    lift = MultiDict([("csrf_token", csrf), ("scope", "category"), ("value", "sales"),
                      ("value", "billing")])
    page = client.post("/admin/holds/remove", data=lift, follow_redirects=True)
    assert "The hold was not lifted: value: given more than once" in page.get_data(as_text=True)
    with services.read_sessions.begin() as session:
        assert [(h.scope, h.value) for h in list_holds(session)] == [("category", "sales")]

    csrf = _csrf(client, "/records/A-1")
    restore = MultiDict([("csrf_token", csrf), ("reason", "asked"), ("reason", "other")])
    page = client.post("/records/A-1/restore", data=restore, follow_redirects=True)
    assert "The process was not restored: reason: given more than once" in (
        page.get_data(as_text=True))
    bulk = MultiDict([("csrf_token", csrf), ("mode", "ids"), ("mode", "search"),
                      ("ids", "A-1"), ("ids", "A-2"), ("reason", "asked")])
    page = client.post("/restore", data=bulk, follow_redirects=True)
    assert "Nothing was restored: mode: given more than once" in page.get_data(as_text=True)
    with services.read_sessions.begin() as session:
        assert find_active(session, ["A-1", "A-2"]) == {}

    response = client.get("/admin?as_of=2026-01-01&as_of=2027-01-01")
    assert response.status_code == 400
    assert "as_of: given more than once; give it once" in response.get_data(as_text=True)
    response = client.get("/admin?as_of=2026-01-01&foo=1")  # tidied away, as on other pages
    assert (response.status_code, response.headers["Location"]) == (
        302, "/admin?as_of=2026-01-01"
    )


def test_ui_record_page_names_the_holds_that_keep_its_process(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(make_record(id="H-ROOT", customer_id="C-HELD"),
             make_record(id="H-KID", parent_id="H-ROOT", customer_id="C-OTHER"),
             make_record(id="H-FREE", customer_id="C-FREE", category="billing"))
    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/admin/holds")
    for scope, value, reason in (("customer", "C-HELD", "litigation 12"),
                                 ("category", "BILLING", "tax audit")):
        client.post("/admin/holds", data={"csrf_token": csrf, "scope": scope, "value": value,
                                          "reason": reason})
    kid = client.get("/records/H-KID").get_data(as_text=True)  # its root's customer is held
    assert 'data-testid="hold-note"' in kid and "litigation 12" in kid
    assert "tax audit" not in kid
    free = client.get("/records/H-FREE").get_data(as_text=True)  # billing, whatever the case
    assert "tax audit" in free and "litigation 12" not in free
    client.post("/admin/holds/remove", data={"csrf_token": csrf, "scope": "category",
                                             "value": "BILLING"})
    assert 'data-testid="hold-note"' not in client.get("/records/H-FREE").get_data(as_text=True)


def test_ui_admin_page_previews_the_next_runs(
    client: Any, admin_headers: Any, corpus: None
) -> None:
    _sign_in(client, admin_headers)
    page = client.get("/admin?as_of=2040-01-01").get_data(as_text=True)
    assert "finance" in page and "Next disposal run would remove" in page
    assert client.get("/admin?as_of=someday").status_code == 400
    # the archive run that archived the corpus ran here: the page says by which process
    from archivist.leases import this_process

    assert re.search(rf"<th scope=\"row\">archive</th>.*?<td>{re.escape(this_process())}</td>",
                     page, re.S)


def test_ui_responses_carry_security_headers(client: Any) -> None:
    response = client.get("/sign-in")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    css = client.get("/assets/ui.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    css.close()


def test_ui_secret_key_persists_next_to_the_database(config: Any, tmp_path: Path) -> None:
    path = secret_key_path(config)
    assert path.parent == tmp_path / "data"
    first = load_secret_key(path)
    assert load_secret_key(path) == first and len(first) == 64
    assert path.stat().st_mode & 0o077 == 0


def _load_key_after(barrier: Any, path: Path, results: Any) -> None:
    barrier.wait()
    results.put(load_secret_key(path))


def test_ui_secret_key_is_the_same_for_server_processes_starting_together(tmp_path: Path) -> None:
    path = tmp_path / "key"
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        path.unlink(missing_ok=True)
        barrier, results = ctx.Barrier(6), ctx.Queue()
        workers = [ctx.Process(target=_load_key_after, args=(barrier, path, results))
                   for _ in range(6)]
        for worker in workers:
            worker.start()
        keys = {results.get(timeout=30) for _ in workers}
        for worker in workers:
            worker.join(timeout=30)
        assert keys == {path.read_text().strip()} and len(keys.pop()) == 64
        assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no draft left behind


def test_ui_secret_key_from_config(config_path: Path, services: Any) -> None:
    config_path.write_text(
        config_path.read_text() + '\n[server]\nsecret_key = "s3cret"\nsecure_cookies = true\n'
    )
    app = create_app(load_config(config_path))
    try:
        assert app.secret_key == "s3cret"
        assert app.config["SESSION_COOKIE_SECURE"] is True
    finally:
        close_app(app)


def test_ui_sign_out_from_an_older_tab_still_ends_the_session(
    client: Any, admin_headers: Any
) -> None:
    _sign_in(client, admin_headers)
    old_tab = _csrf(client, "/search")
    _sign_in(client, admin_headers)  # signed in again in another tab: a new form token
    assert _csrf(client, "/search") != old_tab

    response = client.post("/sign-out", data={"csrf_token": old_tab})

    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    again = client.get("/search")
    assert again.status_code == 302 and "/sign-in" in again.headers["Location"]


def test_ui_a_sign_in_form_from_before_another_tab_signed_in_asks_again(
    client: Any, agent_headers: Any
) -> None:
    second_tab = _csrf(client)  # both tabs show the sign-in page
    _sign_in(client, agent_headers)  # the first tab signs in: a fresh session

    stale = client.post("/sign-in", data={"token": _secret(agent_headers),
                                          "csrf_token": second_tab, "next": "/audit"})

    assert stale.status_code == 400
    page = stale.get_data(as_text=True)
    assert "The sign-in form was out of date" in page and 'value="/audit"' in page
    fresh = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert fresh is not None and fresh.group(1) != second_tab
    signed_in = client.post("/sign-in", data={"token": _secret(agent_headers),
                                              "csrf_token": fresh.group(1)})
    assert signed_in.status_code == 303


def test_ui_a_refused_form_token_page_still_says_who_is_signed_in(
    client: Any, admin_headers: Any
) -> None:
    _sign_in(client, admin_headers)
    response = client.post("/admin/holds", data={
        "csrf_token": "stale", "scope": "customer", "value": "C9", "reason": "r"})
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "security token is missing or out of date" in page and "test-admin" in page
    assert "C9" not in client.get("/admin/holds").get_data(as_text=True)


def test_ui_a_process_search_shows_its_filter_and_keeps_it_when_refined(
    client: Any, agent_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(
        make_record(id="P-1", body="refund asked"),
        make_record(id="P-1-M", parent_id="P-1", body="refund done"),
        make_record(id="Q-1", body="refund elsewhere"),
    )
    _sign_in(client, agent_headers)
    page = client.get("/search?process=P-1").get_data(as_text=True)
    assert "2 records" in page
    assert "Only the records of process" in page
    assert '<input type="hidden" name="process" value="P-1">' in page  # sent with the form
    assert re.search(r'<a class="chip chip-on" href="/search"[^>]*>Show every process</a>', page)
    refined = client.get("/search?q=refund&process=P-1").get_data(as_text=True)
    assert "2 records" in refined and "Q-1" not in refined


def test_ui_the_audit_and_admin_forms_keep_a_bound_with_a_time(
    client: Any, admin_headers: Any
) -> None:
    _sign_in(client, admin_headers)
    moment = "2026-12-06T01:59:40.388355Z"
    page = client.get("/audit", query_string={"from": moment, "to": moment}).get_data(
        as_text=True)
    assert f'name="from" type="text" value="{moment}"' in page
    assert f'name="to" type="text" value="{moment}"' in page
    assert 'name="from" type="date" value="2026-12-06"' in client.get(
        "/audit?from=2026-12-06").get_data(as_text=True)
    admin = client.get("/admin", query_string={"as_of": "2031-01-01T12:00:00Z"})
    assert 'name="as_of" type="text" value="2031-01-01T12:00:00Z"' in admin.get_data(
        as_text=True)


@pytest.mark.parametrize("typed", ["bogus", "2031-02-30", "20310101"])
def test_ui_a_bound_that_is_no_plain_date_is_shown_as_typed_with_its_error(
    client: Any, admin_headers: Any, typed: str
) -> None:
    """A date box shows a value that is not a plain date empty: such a value gets a text box,
    so the page's error names what is there to correct."""
    _sign_in(client, admin_headers)
    for url, name in [("/admin", "as_of"), ("/audit", "from"), ("/search", "to")]:
        page = client.get(url, query_string={name: typed}).get_data(as_text=True)
        assert f'name="{name}" type="text" value="{typed}"' in page, url


def test_ui_admin_preview_too_early_for_a_policy_shows_the_page_with_the_error(
    client: Any, admin_headers: Any
) -> None:
    _sign_in(client, admin_headers)
    response = client.get("/admin", query_string={"as_of": "0001-01-01"})
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "as_of: as_of 0001-01-01 minus" in page and "is before year 1" in page
    assert 'id="as_of"' in page and "Preview" in page  # the form, to correct it


def test_ui_a_refused_hold_keeps_what_was_typed(client: Any, admin_headers: Any) -> None:
    _sign_in(client, admin_headers)
    form = {"csrf_token": _csrf(client, "/admin/holds"), "scope": "record",
            "value": "REC 00000042", "reason": "litigation 2024-117, counsel J. Doe"}
    response = client.post("/admin/holds", data=form)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "The hold was not placed" in page
    assert '<option value="record" selected>' in page
    assert 'value="REC 00000042"' in page
    assert 'value="litigation 2024-117, counsel J. Doe"' in page


def test_ui_bulk_restore_and_process_links_keep_the_page_of_the_search(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(
        make_record(id="T-1", body="refund"),
        make_record(id="T-1-M", parent_id="T-1", body="refund note"),
        *(make_record(id=f"T-{i}", body="refund") for i in range(2, 6)),
    )
    _sign_in(client, admin_headers)
    page = client.get("/search?q=refund&per_page=10&page=1").get_data(as_text=True)
    assert '<input type="hidden" name="search" value="q=refund&amp;per_page=10&amp;page=1">' in page
    done = _bulk_restore(client, csrf_token=_csrf(client, "/search"), mode="search",
                         search="q=refund&per_page=10&page=1", reason="reopened")
    assert done.headers["Location"] == "/search?q=refund&per_page=10&page=1"

    archived(make_record(id="U-1", body="x"), make_record(id="U-1-M", parent_id="U-1", body="y"))
    back = "/search?q=x&sort=oldest"
    record = client.get("/records/U-1", query_string={"back": back}).get_data(as_text=True)
    assert 'href="/records/U-1-M?back=/search?q%3Dx%26sort%3Doldest"' in record


def test_ui_no_link_leads_to_the_page_of_a_record_never_archived(
    client: Any, admin_headers: Any, corpus: None, make_record: Callable[..., dict[str, Any]]
) -> None:
    _sign_in(client, admin_headers)
    assert client.get("/records/NOPE").status_code == 404  # a read of it, audited not_found
    client.get("/records/A-1")
    audit = client.get("/audit?action=read").get_data(as_text=True)
    assert '<a href="/records/A-1">A-1</a>' in audit
    assert ">NOPE</td>" in audit and 'href="/records/NOPE"' not in audit
    services = client.application.extensions["archivist"]
    with services.sessions.begin() as session:  # active, never archived: restore is refused
        upsert_records(session, [parse_record(make_record(id="ACT-9"))])
    csrf = _csrf(client, "/search")
    client.post("/records/ACT-9/restore", data={"csrf_token": csrf, "reason": "r"})
    restores = client.get("/audit?action=restore").get_data(as_text=True)
    assert ">ACT-9</td>" in restores and 'href="/records/ACT-9"' not in restores

    csrf = _csrf(client, "/admin/holds")
    for value in ("A-2", "ACTIVE-ONLY"):
        client.post("/admin/holds", data={"csrf_token": csrf, "scope": "record",
                                          "value": value, "reason": "case 9"})
    holds = client.get("/admin/holds").get_data(as_text=True)
    assert '<a href="/records/A-2">A-2</a>' in holds
    assert "ACTIVE-ONLY" in holds and 'href="/records/ACTIVE-ONLY"' not in holds


def test_ui_the_process_tree_links_a_restored_record_to_its_page(
    client: Any, admin_headers: Any, archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]], services: Any,
) -> None:
    archived(make_record(id="R-1", body="a"), make_record(id="R-1-M", parent_id="R-1", body="b"))
    _sign_in(client, admin_headers)
    client.post("/records/R-1/restore", data={"csrf_token": _csrf(client, "/search"),
                                              "reason": "reopened"})
    page = client.get("/records/R-1").get_data(as_text=True)
    assert "restored" in page.lower()
    current = '<a class="mono" href="/records/R-1?back=/search" aria-current="page">'
    assert current in page
    assert '<a class="mono" href="/records/R-1-M?back=/search"' in page  # active, restored
