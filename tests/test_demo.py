"""The demo data set has real processes, and the README's examples work on it as written."""

from __future__ import annotations

from datetime import UTC, datetime

from archivist.demo_data import SHOWCASE_ROOT, generate_demo_records
from indexer.jobs.demo import load_demo


def test_demo_records_form_processes():
    records = list(generate_demo_records(400, now=datetime(2026, 1, 1, tzinfo=UTC)))
    ids = {r["id"] for r in records}
    linked = [r for r in records if r.get("parent_id")]
    assert len(linked) > 100 and all(r["parent_id"] in ids for r in linked)
    showcase = [r for r in records if r["id"].startswith(SHOWCASE_ROOT)]
    assert {r["kind"] for r in showcase} == {"process", "ticket", "communication", "note"}
    assert any("退款" in r["body"] for r in showcase) and any("refund" in r["body"]
                                                             for r in showcase)


def test_readme_examples_work_on_the_demo(services, client, admin_headers):
    setup = load_demo(services, 500, datetime.now(UTC))
    assert setup.loaded and setup.archived > 0
    hits = client.get("/api/v1/search?q=INV-2023-004512", headers=admin_headers).json["hits"]
    assert {h["process_id"] for h in hits} == {SHOWCASE_ROOT} and len(hits) >= 5
    view = client.get(f"/api/v1/records/{SHOWCASE_ROOT}", headers=admin_headers).json
    assert view["archive"]["state"] == "archived" and len(view["process"]["records"]) == 7
    dry = client.post("/api/v1/restore", headers=admin_headers, json={
        "search": {"q": "INV-2023-004512"}, "reason": "billing dispute", "dry_run": True,
    }).json
    assert (dry["restored"], dry["processes"]) == (7, 1)
    done = client.post(f"/api/v1/records/{SHOWCASE_ROOT}/restore", headers=admin_headers,
                       json={"reason": "customer reopened the case"}).json
    assert len(done["restored"]) == 7
    assert client.get("/api/v1/search?q=INV-2023-004512", headers=admin_headers).json[
        "total"] == 0
