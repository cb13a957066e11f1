"""Web sessions: the cookie holds a server-side session id, never the API token."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from archivist.tokens import revoke_token
from archivist.web_sessions import end_web_session, find_web_session, start_web_session


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _sign_in(client: Any, headers: dict[str, str]) -> str:
    """Sign in; return the session cookie's value as the browser got it."""
    page = client.get("/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    response = client.post("/sign-in", data={"token": _secret(headers), "csrf_token": csrf[1]})
    assert response.status_code == 303
    cookie = client.get_cookie("archivist_session")
    assert cookie is not None
    return str(cookie.value)


def _browser(app: Any, cookie: str) -> Any:
    """Another browser that got hold of a copy of the cookie."""
    other = app.test_client()
    other.set_cookie("archivist_session", cookie)
    return other


def test_session_cookie_does_not_carry_the_token_and_still_signs_in(
    app: Any, client: Any, agent_headers: dict[str, str]
) -> None:
    cookie = _sign_in(client, agent_headers)
    secret = _secret(agent_headers)
    assert secret not in cookie
    payload = app.session_interface.get_signing_serializer(app).loads(cookie)
    assert secret not in repr(payload)
    assert set(payload) <= {"sid", "csrf", "_permanent", "_flashes"}
    page = client.get("/search")
    assert page.status_code == 200 and "test-agent" in page.get_data(as_text=True)
    # What the cookie holds is no API token.
    for value in (cookie, payload["sid"]):
        response = client.get("/api/v1/search", headers={"Authorization": f"Bearer {value}"})
        assert response.status_code == 401


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(
    app: Any, client: Any, agent_headers: dict[str, str]
) -> None:
    cookie = _sign_in(client, agent_headers)
    assert _browser(app, cookie).get("/search").status_code == 200  # a copy works meanwhile
    page = client.get("/search").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    assert client.post("/sign-out", data={"csrf_token": csrf[1]}).status_code == 303
    response = _browser(app, cookie).get("/search")
    assert response.status_code == 302 and response.headers["Location"].startswith("/sign-in")
    # The token itself is untouched by signing out.
    assert client.get("/api/v1/search", headers=agent_headers).status_code == 200


def test_revoking_the_token_ends_its_sessions(
    app: Any, client: Any, services: Any, agent_headers: dict[str, str]
) -> None:
    cookie = _sign_in(client, agent_headers)
    with services.sessions.begin() as session:
        revoke_token(session, "test-agent", datetime.now(UTC), ledger(services))
    assert _browser(app, cookie).get("/search").status_code == 302


def test_web_session_expires_and_ends(services: Any, agent_headers: dict[str, str]) -> None:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    with services.sessions.begin() as session:
        session_id = start_web_session(session, _secret(agent_headers), at, timedelta(hours=12))
        assert start_web_session(session, "not-a-token", at, timedelta(hours=12)) is None
    assert session_id is not None
    with services.sessions.begin() as session:
        live = find_web_session(session, session_id, at + timedelta(hours=11))
        assert live is not None and live.name == "test-agent"
        assert find_web_session(session, session_id, at + timedelta(hours=12)) is None
        end_web_session(session, session_id)
        assert find_web_session(session, session_id, at + timedelta(hours=1)) is None


def test_signing_out_ends_an_export_under_way_in_that_browser(
    services: Any, archived: Any, make_record: Any, auditor_headers: dict[str, str]
) -> None:
    import dataclasses

    import pytest

    from archivist.active_db import AuditEntry
    from archivist.web_sessions import WebSession
    from server import create_app
    from server.actions import ExportRevoked
    from tests.conftest import close_app

    archived(*[make_record(id=f"BIG-{n:04d}", subject=f"{n} " + "long subject " * 80)
               for n in range(400)])  # several chunks of CSV
    server = dataclasses.replace(services.config.server, token_cache_seconds=0)
    app = create_app(dataclasses.replace(services.config, server=server))
    try:
        client = app.test_client()
        _sign_in(client, auditor_headers)
        response = client.get("/search/export.csv", buffered=False)
        assert response.status_code == 200
        chunks = iter(response.response)
        received = next(chunks)
        with services.sessions.begin() as session:  # signed out (from another tab, say)
            session.query(WebSession).delete()
        with pytest.raises(ExportRevoked):
            for chunk in chunks:
                received += chunk
        response.close()
        assert received.count(b"\r\n") < 401
        with services.read_sessions.begin() as session:
            entry = session.query(AuditEntry).filter(AuditEntry.action == "export").one()
        assert entry.outcome == "revoked"
    finally:
        close_app(app)


def ledger(services: Any) -> Any:
    """The installation's revocation ledger, beside its key file."""
    from archivist.tokens import revocation_ledger_path

    return revocation_ledger_path(services.config.key_file)
