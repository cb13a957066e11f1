"""A hold on a value no record has (a typo, an invisible character pasted with it) holds
nothing while it looks in force: placing one says so, in the UI and on the command line."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from archivist.active_db import utcnow
from archivist.holds import list_holds
from indexer.hold_reach import hold_reaches_a_record
from indexer.jobs.restore import restore_process
from tests.conftest import ARCHIVE_AS_OF
from tests.test_ui_pages import _csrf, _sign_in


@pytest.fixture
def records(archived: Any, make_record: Any, services: Any) -> None:
    archived(
        make_record(id="OLD-1", customer_id="CE", category="Finance"),
        make_record(id="OLD-2", customer_id="CR", category="legal"),
        make_record(id="OLD-3", customer_id="CP", category="gone"),
        # recent: stays in the active database
        make_record(id="NEW-1", customer_id="CA", category="billing", updated_at=ARCHIVE_AS_OF),
    )
    restore_process(services.sessions, services.store, services.index, "OLD-2", "admin",
                    utcnow(), "reopened")  # restored: active again
    services.store.purge(["OLD-3"], utcnow(), "disposal")  # purged: a hold keeps nothing


@pytest.mark.parametrize(
    ("scope", "value", "reaches"),
    [
        ("customer", "CE", True),  # archived
        ("customer", "CA", True),  # active
        ("customer", "CR", True),  # restored
        ("customer", "CE\u200b", False),  # a zero-width space pasted with it
        ("customer", "CP", False),  # only purged records
        ("category", "FINANCE", True),  # casefolded, as holds compare
        ("category", "Billing", True),
        ("category", "gone", False),
        ("category", "finance ", False),
        ("record", "OLD-1", True),
        ("record", "NEW-1", True),
        ("record", "OLD-3", False),
        ("record", "OLD-9", False),
    ],
)
def test_a_hold_reaches_a_record_only_when_one_has_its_value_now(
    services: Any, records: None, scope: str, value: str, reaches: bool
) -> None:
    assert hold_reaches_a_record(services, scope, value) is reaches


def test_the_ui_warns_when_a_placed_hold_holds_nothing(
    client: Any, admin_headers: Any, records: None, services: Any
) -> None:
    _sign_in(client, admin_headers)
    csrf = _csrf(client, "/admin/holds")
    form = {"csrf_token": csrf, "scope": "customer", "value": "CE\u200b", "reason": "case 42"}
    page = client.post("/admin/holds", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Legal hold placed" in page and "the hold holds nothing yet" in page
    form["value"] = "CE"
    page = client.post("/admin/holds", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Legal hold placed" in page and "holds nothing" not in page
    with services.read_sessions.begin() as session:  # both placed: the warning refuses nothing
        assert {h.value for h in list_holds(session)} == {"CE", "CE\u200b"}


def test_the_cli_warns_on_stderr_when_a_placed_hold_holds_nothing(
    config_path: Any, services: Any, records: None
) -> None:
    def hold(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "archivist", "hold", "add", *args, "--reason", "r",
             "--config", str(config_path)],
            capture_output=True, text=True, timeout=300,
        )

    typo = hold("--customer", "CX")
    assert typo.returncode == 0 and typo.stdout == "hold placed on customer CX\n"
    assert typo.stderr.startswith(
        "warning: No record, archived or active, has that customer ('CX') now")
    pasted = hold("--customer", "CE\u200b")  # with a zero-width space: shown, not invisible
    assert pasted.stderr.startswith(
        "warning: No record, archived or active, has that customer ('CE\\u200b') now")
    mistyped = hold("--record", "R-404")
    assert mistyped.stderr.startswith(
        "warning: No record, archived or active, has that id ('R-404') now")
    found = hold("--category", "finance")
    assert found.returncode == 0 and found.stderr == ""
    with services.read_sessions.begin() as session:
        assert {(h.scope, h.value) for h in list_holds(session)} == {
            ("customer", "CX"), ("customer", "CE\u200b"), ("record", "R-404"),
            ("category", "finance"),
        }


def test_the_api_answers_a_placed_hold_that_holds_nothing_with_a_warning(
    client: Any, admin_headers: Any, records: None
) -> None:
    body = {"scope": "customer", "value": "C042", "reason": "litigation"}
    typo = client.post("/api/v1/holds", json=body, headers=admin_headers)
    assert typo.status_code == 201
    assert typo.json["value"] == "C042"
    assert typo.json["warning"].startswith(
        "No record, archived or active, has that customer ('C042') now")
    found = client.post("/api/v1/holds", json={**body, "value": "CE"}, headers=admin_headers)
    assert found.status_code == 201 and "warning" not in found.json
