"""One-click restore over HTTP: the round trip, conflicts, and two restores at once."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from archive_store.segment import canonical_json, sha256_hex
from archivist.active_db import find_active, upsert_records
from archivist.records import parse_record
from archivist.sqlite_writers import writers_lock_path
from indexer.jobs.reconcile import reconcile_pending


def test_record_view_shows_the_hash_of_its_archived_version(
    client: Any,
    admin_headers: dict[str, str],
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(make_record(id="H-1", body="the hash of this one"))
    view = client.get("/api/v1/records/H-1", headers=admin_headers).get_json()
    sha = sha256_hex(canonical_json(view["record"]))
    assert view["archive"]["sha256"] == sha

    assert services.store.purge(["H-1"], datetime.now(UTC), "dispose-job") == 1
    gone = client.get("/api/v1/records/H-1", headers=admin_headers).get_json()
    assert gone["record"] is None and gone["archive"]["state"] == "purged"
    assert gone["archive"]["sha256"] == sha  # (from the disposal's event)


def test_restore_round_trip(
    client: Any,
    admin_headers: dict[str, str],
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    original = make_record(
        id="RT-1",
        body="refund for the broken kettle",
        created_at="2020-01-01T08:00:00.250000+02:00",
        attributes={"channel": "email", "tags": ["a", "b"], "n": 1.5},
    )
    archived(original)
    assert _search_ids(client, admin_headers, "kettle") == ["RT-1"]
    with services.sessions.begin() as session:
        assert find_active(session, ["RT-1"]) == {}

    response = client.post("/api/v1/records/RT-1/restore", headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json() == {"id": "RT-1", "state": "restored", "restored": ["RT-1"]}

    with services.sessions.begin() as session:
        restored = find_active(session, ["RT-1"])["RT-1"]
    assert restored == parse_record(original)
    assert restored.to_json()["attributes"] == original["attributes"]
    assert _search_ids(client, admin_headers, "kettle") == []

    view = client.get("/api/v1/records/RT-1", headers=admin_headers).get_json()
    assert view["archive"]["state"] == "restored"
    assert [e["event"] for e in view["history"]] == ["archived", "restored"]
    assert view["history"][1]["actor"] == "test-admin"

    audit = client.get("/api/v1/audit?action=restore", headers=admin_headers).get_json()
    assert [(e["target"], e["outcome"], e["actor"]) for e in audit["entries"]] == [
        ("RT-1", "ok", "test-admin")
    ]


def _search_ids(client: Any, headers: dict[str, str], q: str) -> list[str]:
    body = client.get("/api/v1/search", query_string={"q": q}, headers=headers).get_json()
    return [h["id"] for h in body["hits"]]


@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x",
])
def test_a_restore_body_that_is_not_json_is_refused_with_nothing_restored(
    client: Any,
    admin_headers: dict[str, str],
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
    content_type: str,
) -> None:
    """A reason sent in a body that is not JSON (curl -d labels it a form) would be lost."""
    archived(make_record(id="CT-1"))
    response = client.post(
        "/api/v1/records/CT-1/restore", data='{"reason": "asked by the customer"}',
        headers={**admin_headers, "Content-Type": content_type},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"
    view = client.get("/api/v1/records/CT-1", headers=admin_headers).get_json()
    assert view["archive"]["state"] == "archived"
    response = client.post("/api/v1/records/CT-1/restore", json={"reason": "asked by them"},
                           headers=admin_headers)
    assert response.status_code == 200
    view = client.get("/api/v1/records/CT-1", headers=admin_headers).get_json()
    assert view["history"][-1]["reason"] == "asked by them"


def test_restore_of_a_never_archived_id_is_404(client: Any, admin_headers: dict[str, str]) -> None:
    response = client.post("/api/v1/records/NOPE-1/restore", headers=admin_headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_restore_of_an_active_record_never_archived_is_409(
    client: Any, admin_headers: dict[str, str], services: Any,
    make_record: Callable[..., dict[str, Any]],
) -> None:
    with services.sessions.begin() as session:
        upsert_records(session, [parse_record(make_record(id="ACT-1"))])
    response = client.post("/api/v1/records/ACT-1/restore", headers=admin_headers)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error == {"code": "already_active",
                     "message": "record ACT-1 is in the active database and was never archived"}
    bulk = client.post("/api/v1/restore", headers=admin_headers,
                       json={"ids": ["ACT-1", "NOPE-1"], "reason": "check"}).get_json()
    assert bulk["skipped"] == [{"id": "ACT-1", "code": "already_active"},
                               {"id": "NOPE-1", "code": "not_found"}]


def test_restore_twice_is_409_not_archived(
    client: Any,
    admin_headers: dict[str, str],
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(make_record(id="TW-1"))
    assert client.post("/api/v1/records/TW-1/restore", headers=admin_headers).status_code == 200
    again = client.post("/api/v1/records/TW-1/restore", headers=admin_headers)
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "not_archived"


def test_restore_over_an_active_id_is_409_and_says_so(
    client: Any,
    admin_headers: dict[str, str],
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    archived(make_record(id="DUP-1", body="old text"))
    with services.sessions.begin() as session:  # the CRM re-created the id meanwhile
        upsert_records(session, [parse_record(make_record(id="DUP-1", body="new text"))])
    response = client.post("/api/v1/records/DUP-1/restore", headers=admin_headers)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "already_active"
    assert "already exists in the active database" in error["message"]
    view = client.get("/api/v1/records/DUP-1", headers=admin_headers).get_json()
    assert view["archive"]["state"] == "archived"
    with services.sessions.begin() as session:
        assert find_active(session, ["DUP-1"])["DUP-1"].body == "new text"


def _restore_at_once(base_url: str, headers: dict[str, str], record_id: str) -> list[int]:
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def restore() -> None:
        request = urllib.request.Request(
            f"{base_url}/api/v1/records/{record_id}/restore", method="POST", headers=headers
        )
        barrier.wait()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as e:
            assert json.load(e)["error"]["code"] in ("restore_in_progress", "not_archived")
            statuses.append(e.code)

    threads = [threading.Thread(target=restore) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_two_simultaneous_restores_give_one_200_and_one_409(
    live_server: str,
    admin_headers: dict[str, str],
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    records = archived(*[make_record(id=f"RACE-{n}") for n in range(5)])
    for record in records:
        assert sorted(_restore_at_once(live_server, admin_headers, record["id"])) == [200, 409]


def _post_restore(live_server: str, headers: dict[str, str], record_id: str) -> int:
    request = urllib.request.Request(
        f"{live_server}/api/v1/records/{record_id}/restore", method="POST", headers=headers
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        status: int = response.status
        return status


def _http_search_ids(live_server: str, headers: dict[str, str], q: str) -> list[str]:
    search = urllib.request.Request(f"{live_server}/api/v1/search?q={q}", headers=headers)
    with urllib.request.urlopen(search, timeout=5) as response:
        return [h["id"] for h in json.load(response)["hits"]]


def test_a_restore_goes_on_beside_an_archive_batch_and_reconcile_waits(
    live_server: str,
    admin_headers: dict[str, str],
    agent_headers: dict[str, str],
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """Moves share the store's move lock: a restore completes while an archive batch is
    moving (here: a thread holding the lock as a batch does), and reconcile, which needs the
    lock alone, waits until the batch is done."""
    archived(make_record(id="WAIT-1", body="kettle descaling"), make_record(id="WAIT-2"))
    held, release = threading.Event(), threading.Event()

    def archive_batch() -> None:
        with services.store.moving():
            held.set()
            release.wait(60)

    settled: list[int] = []
    batch = threading.Thread(target=archive_batch)
    batch.start()
    try:
        assert held.wait(10)
        assert _post_restore(live_server, admin_headers, "WAIT-1") == 200
        assert _http_search_ids(live_server, agent_headers, "kettle") == []
        reconcile = threading.Thread(
            target=lambda: settled.append(
                reconcile_pending(services.sessions, services.store, datetime.now(UTC))
            )
        )
        reconcile.start()
        time.sleep(0.5)
        assert reconcile.is_alive() and not settled
    finally:
        release.set()
        batch.join()
    reconcile.join(60)
    assert settled == [0]
    with services.sessions.begin() as session:
        assert set(find_active(session, ["WAIT-1", "WAIT-2"])) == {"WAIT-1"}


def test_searches_go_on_while_a_restore_waits_to_write(
    live_server: str,
    admin_headers: dict[str, str],
    agent_headers: dict[str, str],
    services: Any,
    archived: Callable[..., Any],
    make_record: Callable[..., dict[str, Any]],
) -> None:
    """A restore pauses its process's searches only while it works, not while it waits for
    its turn to write to the active database; it completes once the turn comes."""
    archived(make_record(id="WAIT-1", body="kettle descaling"), make_record(id="WAIT-2"))
    database = Path(services.config.active_url.removeprefix("sqlite:///")).absolute()
    statuses: list[int] = []
    fd = os.open(writers_lock_path(database), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer has the turn
        restorer = threading.Thread(
            target=lambda: statuses.append(_post_restore(live_server, admin_headers, "WAIT-1"))
        )
        restorer.start()
        time.sleep(0.5)
        assert restorer.is_alive() and not statuses  # waiting for its turn
        assert _http_search_ids(live_server, agent_headers, "kettle") == ["WAIT-1"]
        assert restorer.is_alive()
    finally:
        os.close(fd)  # gives the turn back
    restorer.join(60)
    assert statuses == [200]
    assert _http_search_ids(live_server, agent_headers, "kettle") == []
