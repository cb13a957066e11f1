"""The web UI in a real browser: Playwright driving Debian's Chromium against `archivist serve`.

One installation (real records imported and archived) and one server process serve the whole
module; each test signs in with a fresh browser context (its own cookies). Set
`ARCHIVIST_SCREENSHOTS=docs` to (re)write the README's screenshots into that folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CONFIG_TEXT = """
[active]
url = "sqlite:///data/active.db"

[archive]
dir = "data/archive"

[index]
dir = "data/index"

[server]
rate_limit_per_minute = 100000

[retention.default]
archive_after_days = 365
keep_years = 5

[retention.category.finance]
archive_after_days = 180
keep_years = 7
"""
ARCHIVE_AS_OF = "2026-01-01T00:00:00+00:00"
XSS_BODY = '<script>window.__xss = 1</script>\n<img src=x onerror="window.__xss = 2">'


def _record(record_id: str, category: str, kind: str, subject: str, body: str, created: str,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "id": record_id,
        "kind": kind,
        "category": category,
        "customer_id": extra.pop("customer_id", "C-1042"),
        "owner": extra.pop("owner", "alice"),
        "subject": subject,
        "body": body,
        "status": extra.pop("status", "closed"),
        "created_at": created,
        "updated_at": created,
        **extra,
    }


KNOWN = [
    _record(
        "EN-1",
        "support",
        "communication",
        "Refund requested for order SO-1001",
        "The customer asked for a refund because the parcel arrived damaged.\n"
        "Second line: a replacement was shipped.",
        "2022-03-10T09:30:00Z",
        attributes={"channel": "email", "tags": ["vip", "urgent"], "order": "SO-1001"},
    ),
    _record(
        "EN-2",
        "billing",
        "transaction",
        "Invoice INV-2023-004512 disputed",
        "We refunded the first payment; the second refund is pending.",
        "2023-05-02T14:00:00Z",
    ),
    _record(
        "EN-3",
        "support",
        "ticket",
        "Shipment delayed",
        "Shipping was delayed twice; the customer wants a refund.",
        "2023-08-20T08:15:00Z",
    ),
    _record(
        "ZH-1",
        "support",
        "communication",
        "客户申请退款",
        "客户收到的商品有损坏，要求退款并重新发货。",
        "2022-11-05T03:00:00Z",
        owner="wang.fang",
    ),
    _record(
        "ZH-2",
        "billing",
        "note",
        "发票金额有误",
        "财务部门正在核对发票金额，客户要求退款。",
        "2023-02-14T06:45:00Z",
        owner="chen.jing",
    ),
    _record(
        "ZH-3",
        "sales",
        "communication",
        "续约报价",
        "合同续签的价格已经确认，销售经理下周跟进。",
        "2023-04-01T02:00:00Z",
    ),
    _record(
        "XSS-1",
        "support",
        "note",
        "<b>Bold</b> subject <script>alert('s')</script>",
        XSS_BODY + "\nmarkupword",
        "2022-01-01T00:00:00Z",
    ),
    _record(
        "RESTORE-1",
        "finance",
        "transaction",
        "Chargeback from the bank",
        "Bank chargeback notice, restoreword.",
        "2021-09-09T12:00:00Z",
        customer_id="C-7",
    ),
    # a process: a case with a ticket, an English and a Chinese message, and a note
    _record("PROC-1", "support", "process", "Warranty case", "Warranty claim opened, caseword.",
            "2022-03-01T09:00:00Z"),
    _record("PROC-1-T", "support", "ticket", "Replacement ticket", "Send a replacement.",
            "2022-03-02T09:00:00Z", parent_id="PROC-1"),
    _record("PROC-1-M1", "support", "communication", "Customer message",
            "The device still fails after the update.", "2022-03-03T09:00:00Z",
            parent_id="PROC-1-T"),
    _record("PROC-1-M2", "support", "communication", "客户来信", "设备更新后仍然无法使用。",
            "2022-03-04T09:00:00Z", parent_id="PROC-1-T"),
    _record("PROC-1-N", "support", "note", "Internal note", "Approved by the team lead.",
            "2022-03-05T09:00:00Z", parent_id="PROC-1"),
    _record("TICK-1", "sales", "note", "First tickword note", "tickword one",
            "2022-06-01T00:00:00Z"),
    _record("TICK-2", "sales", "note", "Second tickword note", "tickword two",
            "2022-06-02T00:00:00Z"),
    _record("TICK-3", "sales", "note", "Third tickword note", "tickword three",
            "2022-06-03T00:00:00Z"),
    # every field at its longest, without a space to break at
    _record("WIDE-1", "cat-" + "x" * 124, "note", "Widthword " + "w" * 300, "widthword",
            "2022-08-01T00:00:00Z", customer_id="CUST-" + "9" * 251, owner="o." + "y" * 254),
    # a subject of thousands of characters, with spaces to wrap at
    _record("LONG-1", "sales", "note", "Longsubjectword " + "lorem ipsum dolor " * 400,
            "longbodyword", "2022-08-02T00:00:00Z", customer_id="C-LONG"),
    _record("ALL-1", "sales", "note", "Allword one", "allword", "2022-07-01T00:00:00Z"),
    _record("ALL-1-C", "sales", "note", "Follow-up", "child", "2022-07-02T00:00:00Z",
            parent_id="ALL-1"),
]


@dataclass
class Site:
    """The running server and what the tests need to know about its installation."""

    url: str
    config_path: Path
    tokens: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _install(root: Path, records: list[dict[str, Any]]) -> tuple[Path, dict[str, str]]:
    """A real installation: init, import these records, archive, tokens."""
    from archivist.active_db import utcnow
    from archivist.config import load_config
    from archivist.importer import import_lines
    from archivist.tokens import create_token
    from indexer.jobs.runs import run_archive_job
    from indexer.services import Services

    config_path = root / "config.toml"
    config_path.write_text(CONFIG_TEXT)
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]
    with Services.open(load_config(config_path), create=True) as services:
        report = import_lines(lines, services.sessions, services.store.find_archived)
        assert report.rejected == 0, report.errors
        run_archive_job(services, datetime.fromisoformat(ARCHIVE_AS_OF))
        tokens = {}
        with services.sessions.begin() as session:
            for role in ("agent", "auditor", "admin"):
                tokens[role] = create_token(session, f"ui-{role}", role, utcnow())
    return config_path, tokens


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`archivist serve` as a real process on a free port, over a loaded installation."""
    from archivist.demo_data import generate_records

    root = tmp_path_factory.mktemp("ui-site")
    yield from _serving(root, [*KNOWN, *generate_records(80, seed=11)])


@contextmanager
def _serving_site(root: Path, records: list[dict[str, Any]]) -> Iterator[Site]:
    """`_serving` as a context manager, for a test of its own installation."""
    root.mkdir(parents=True, exist_ok=True)
    yield from _serving(root, records)


def _serving(root: Path, records: list[dict[str, Any]]) -> Iterator[Site]:
    """An installation of these records under `root`, served by `archivist serve` as a real
    process on a free port until the generator is closed."""
    config_path, tokens = _install(root, records)
    port = _free_port()
    out = root / "serve.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "archivist", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--config", str(config_path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, out.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield Site(url, config_path, tokens)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: run scripts/setup --test as root")
        pytest.skip(f"{CHROMIUM} is missing (scripts/setup --test installs it, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # launch() gives every run a fresh, temporary user data dir.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Any, site: Site) -> Iterator[Any]:
    """A factory of pages, each in its own context (cookies), optionally signed in."""
    with _pages(browser, site) as make:
        yield make


@contextmanager
def _pages(browser: Any, site: Site) -> Iterator[Any]:
    """A factory of pages of a site, each in its own context (cookies), optionally signed
    in; every context is closed at the end."""
    contexts = []

    def make(role: str | None = None, width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(
            base_url=site.url, viewport={"width": width, "height": height}, accept_downloads=True
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if role is not None:
            sign_in(page, site.tokens[role])
        return page

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Any, token: str) -> None:
    page.goto("/")
    assert "/sign-in" in page.url
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/search"))


def hit_ids(page: Any) -> list[str]:
    return [m.inner_text() for m in page.locator(".hit .hit-meta .mono.muted").all()]


def api_ids(site: Site, role: str, **params: Any) -> list[str]:
    """The ids the JSON API finds for a search (every page)."""
    ids: list[str] = []
    number = 1
    while True:
        query = urllib.parse.urlencode({**params, "page": number, "per_page": 100}, doseq=True)
        request = urllib.request.Request(
            f"{site.url}/api/v1/search?{query}",
            headers={"Authorization": f"Bearer {site.tokens[role]}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        ids += [h["id"] for h in body["hits"]]
        if len(ids) >= body["total"]:
            return ids
        number += 1


def wait_until_audited(site: Site, action: str, target: str, timeout: float = 30) -> None:
    """Wait until the audit log has an entry of `ui-agent` for this action and target."""
    query = urllib.parse.urlencode({"actor": "ui-agent", "action": action, "per_page": 100})
    request = urllib.request.Request(
        f"{site.url}/api/v1/audit?{query}",
        headers={"Authorization": f"Bearer {site.tokens['auditor']}"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=30) as response:
            if any(target in e["target"] for e in json.load(response)["entries"]):
                return
        time.sleep(0.1)
    raise AssertionError(f"no audited {action} of {target!r} within {timeout} s")


def shown_total(page: Any) -> int:
    return int(re.sub(r"\D", "", page.get_by_test_id("total").inner_text()))


def contrast(one: str, other: str) -> float:
    """The WCAG contrast ratio of two opaque CSS colours as the browser gives them (`rgb(…)`)."""

    def luminance(css: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", css)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
                   for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(one), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# The colour an element is drawn on: the background of the nearest box behind it that has one.
BACKDROP_JS = """(e, own) => {
    for (let node = own ? e : e.parentElement; node; node = node.parentElement) {
        const bg = getComputedStyle(node).backgroundColor;
        if (bg !== 'rgba(0, 0, 0, 0)' && bg !== 'transparent') return bg;
    }
    return 'rgb(255, 255, 255)';
}"""
FOCUS_JS = """e => {
    const s = getComputedStyle(e);
    const inside = parseFloat(s.outlineOffset) < 0;  // drawn on the element's own background
    return {name: e.id || e.className || e.tagName, style: s.outlineStyle,
            width: parseFloat(s.outlineWidth), color: s.outlineColor,
            backdrop: (BACKDROP)(e, inside), topbar: e.closest('.topbar') !== null};
}""".replace("BACKDROP", BACKDROP_JS)


def tab_through(page: Any, presses: int) -> list[dict[str, Any]]:
    """Press Tab `presses` times; the focus outline of each element reached."""
    reached = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        reached.append(page.evaluate_handle("document.activeElement").evaluate(FOCUS_JS))
    return reached


# --- the tests the issue asks for -------------------------------------------------------------


def test_ui_agent_searches_filters_and_reads_without_restore(new_page: Any, site: Site) -> None:
    page = new_page("agent")
    assert "ui-agent" in page.get_by_test_id("who").inner_text()
    assert "agent" in page.get_by_test_id("who").inner_text()
    assert page.get_by_role("link", name="Audit log").count() == 0

    page.get_by_label("Search the archive").fill("refund")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=refund"))
    ids = hit_ids(page)
    assert {"EN-1", "EN-3"} <= set(ids)
    assert shown_total(page) == len(api_ids(site, "agent", q="refund"))
    assert page.locator(".snippet mark").first.inner_text().lower().startswith("refund")

    page.get_by_label("Search the archive").fill("退款")
    page.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_url(re.compile(r"q=%E9%80%80%E6%AC%BE"))
    ids = hit_ids(page)
    assert {"ZH-1", "ZH-2"} <= set(ids) and "ZH-3" not in ids
    assert "退款" in page.locator(".snippet mark").first.inner_text()

    # filter by category (a checkbox) and by date (the date field and a range)
    page.get_by_role("checkbox", name=re.compile(r"^billing\b")).check()
    page.get_by_label("From").fill("2023-01-01")
    page.get_by_label("To (inclusive)").fill("2023-12-31")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"category=billing"))
    assert "from=2023-01-01" in page.url and "to=2023-12-31" in page.url
    ids = hit_ids(page)
    assert "ZH-2" in ids and "ZH-1" not in ids
    expected = api_ids(site, "agent", q="退款", category="billing", to="2023-12-31",
                       **{"from": "2023-01-01"})  # fmt: skip
    assert ids == expected
    for tag in page.locator(".hit .tag:not(.tag-kind)").all():
        assert tag.inner_text() == "billing"
    for dates in page.locator(".hit-dates").all():
        assert "Created 2023-" in dates.inner_text()

    # the URL holds the whole state: opening it anew shows the same results
    bookmarked = page.url
    again = new_page("agent")
    again.goto(bookmarked)
    assert hit_ids(again) == ids
    assert again.get_by_role("checkbox", name=re.compile(r"^billing\b")).is_checked()

    page.get_by_role("link", name="发票金额有误").click()
    page.wait_for_url(re.compile(r"/records/ZH-2"))
    assert page.get_by_role("heading", name="发票金额有误").is_visible()
    assert "财务部门正在核对发票金额" in page.get_by_test_id("body").inner_text()
    assert page.get_by_test_id("state").inner_text().lower() == "archived"
    assert page.get_by_role("button", name=re.compile("Restore")).count() == 0
    page.get_by_role("link", name="← Back to search").click()
    assert page.url == bookmarked


def test_ui_admin_restores_a_record(new_page: Any, site: Site) -> None:
    from archivist.active_db import find_active, make_engine, make_sessions
    from archivist.config import load_config

    page = new_page("admin")
    page.get_by_label("Search the archive").fill("restoreword")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=restoreword"))
    assert hit_ids(page) == ["RESTORE-1"]
    page.get_by_role("link", name="Chargeback from the bank").click()
    page.wait_for_url(re.compile(r"/records/RESTORE-1"))

    questions: list[str] = []

    def answer(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    page.get_by_test_id("restore-reason").fill("bank dispute reopened")
    page.get_by_role("button", name="Restore this process: 1 record").click()
    page.wait_for_selector("[data-testid=restored-note]")
    assert questions and "RESTORE-1" in questions[0]
    assert "back in the active CRM" in page.locator(".flash-success").first.inner_text()
    assert page.get_by_test_id("state").inner_text().lower() == "restored"
    assert page.get_by_role("button", name=re.compile("Restore this process")).count() == 0
    assert [c.inner_text() for c in page.locator("table tbody tr td:nth-child(2)").all()] == [
        "archived",
        "restored",
    ]

    engine = make_engine(load_config(site.config_path).active_url)
    try:
        with make_sessions(engine).begin() as session:
            active = find_active(session, ["RESTORE-1"])
        assert len(active) == 1
    finally:
        engine.dispose()

    page.goto("/search?q=restoreword")
    assert shown_total(page) == 0 and hit_ids(page) == []


def test_ui_admin_restores_a_process_from_a_record_page(new_page: Any, site: Site) -> None:
    page = new_page("admin")
    page.goto("/records/PROC-1-M2")
    nodes = page.get_by_test_id("process-node")
    assert nodes.count() == 5
    tree = page.locator(".process-tree").first.inner_text()
    assert "Warranty case" in tree and "客户来信" in tree and "Internal note" in tree
    # the tree nests: the messages are inside the ticket's list
    under_ticket = page.locator('[data-id="PROC-1-T"] [data-testid=process-node]')
    assert [n.get_attribute("data-id") for n in under_ticket.all()] == ["PROC-1-M1", "PROC-1-M2"]
    assert page.get_by_test_id("process-link").inner_text() == "PROC-1"
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("restore-reason").fill("customer reopened the case")
    page.get_by_role("button", name="Restore this process: 5 records").click()
    page.wait_for_selector("[data-testid=restored-note]")
    assert "5 records" in page.locator(".flash-success").first.inner_text()
    states = [n.get_attribute("data-state") for n in page.get_by_test_id("process-node").all()]
    assert states == ["active"] * 5
    assert "customer reopened the case" in page.locator("main").inner_text()
    assert api_ids(site, "admin", process="PROC-1") == []
    assert api_ids(site, "admin", q="caseword") == []


def test_ui_admin_restores_ticked_results_and_a_whole_search(new_page: Any, site: Site) -> None:
    page = new_page("admin")
    page.goto("/search?q=tickword&sort=oldest")
    assert hit_ids(page) == ["TICK-1", "TICK-2", "TICK-3"]
    # nothing ticked yet: said on the page, the reason typed kept, nothing sent
    page.get_by_test_id("bulk-reason").fill("reopened by sales")
    page.get_by_test_id("restore-ticked").click()
    assert page.get_by_test_id("tick-first").is_visible()
    assert page.get_by_test_id("bulk-reason").input_value() == "reopened by sales"
    assert page.url.endswith("/search?q=tickword&sort=oldest")
    ticks = page.get_by_test_id("tick")
    ticks.nth(0).check()
    ticks.nth(2).check()
    page.get_by_test_id("bulk-reason").fill("reopened by sales")
    page.get_by_test_id("restore-ticked").click()
    page.wait_for_selector("[data-testid=restore-plan]")  # the count first, on a page
    plan = page.get_by_test_id("restore-plan").inner_text()
    assert "You ticked 2 records: restoring 2 archived records in 2 processes" in plan
    assert api_ids(site, "admin", q="tickword") == ["TICK-1", "TICK-2", "TICK-3"]
    assert page.get_by_test_id("confirm-reason").input_value() == "reopened by sales"
    page.get_by_test_id("confirm-restore").click()
    page.wait_for_selector(".flash-success")
    assert "Restored 2 records" in page.locator(".flash-success").first.inner_text()
    assert hit_ids(page) == ["TICK-2"]
    assert api_ids(site, "admin", q="tickword") == ["TICK-2"]

    page.goto("/search?q=allword")
    assert hit_ids(page) == ["ALL-1"]
    page.get_by_test_id("restore-all").click()
    page.wait_for_selector("[data-testid=restore-plan]")
    plan = page.get_by_test_id("restore-plan").inner_text()
    assert "matches 1 record" in plan and "restoring 2 archived records in 1 process" in plan
    assert api_ids(site, "admin", q="allword") == ["ALL-1"]  # the dry run changed nothing
    page.get_by_test_id("confirm-reason").fill("whole search")
    page.get_by_test_id("confirm-restore").click()
    page.wait_for_selector(".flash-success")
    assert "Restored 2 records (1 process)" in page.locator(".flash-success").first.inner_text()
    assert api_ids(site, "admin", q="allword") == []


def test_ui_agent_sees_no_restore_controls(new_page: Any) -> None:
    page = new_page("agent")
    page.goto("/search?q=refund")
    assert page.get_by_test_id("tick").count() == 0
    assert page.locator("#bulk-restore").count() == 0
    page.goto("/records/ZH-1")
    assert page.get_by_role("button", name=re.compile("Restore")).count() == 0
    assert page.get_by_test_id("process-node").count() == 1


def test_ui_admin_restore_dismissed_does_nothing(new_page: Any) -> None:
    page = new_page("admin")
    dismissed: list[str] = []

    def dismiss(dialog: Any) -> None:
        dismissed.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.goto("/records/EN-3")
    page.get_by_test_id("restore-reason").fill("checking")
    page.get_by_role("button", name=re.compile("Restore this process")).click()
    page.wait_for_timeout(300)
    assert dismissed
    page.reload()
    assert page.get_by_test_id("state").inner_text().lower() == "archived"


def test_ui_auditor_exports_the_current_search(new_page: Any, site: Site) -> None:
    page = new_page("auditor")
    page.goto("/search?q=refund&category=billing&category=support")
    total = shown_total(page)
    assert total > 0
    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    ids = [row["id"] for row in rows]
    assert len(ids) == total == len(set(ids))
    assert set(ids) == set(api_ids(site, "auditor", q="refund", category=["billing", "support"]))
    assert {row["category"] for row in rows} <= {"billing", "support"}
    assert list(rows[0]) == [
        "id", "kind", "category", "customer_id", "owner", "subject", "status",
        "created_at", "updated_at", "archived_at",
    ]  # fmt: skip


def test_ui_record_with_markup_renders_as_text(new_page: Any) -> None:
    page = new_page("agent")
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto("/search?q=markupword")
    assert hit_ids(page) == ["XSS-1"]
    assert page.locator(".hit img, .hit script, .hit b").count() == 0
    assert "<b>Bold</b>" in page.locator(".hit-title").inner_text()
    page.locator(".hit-title a").click()
    page.wait_for_url(re.compile(r"/records/XSS-1"))
    body = page.get_by_test_id("body")
    assert body.inner_text().startswith("<script>window.__xss = 1</script>\n<img src=x")
    assert body.locator("script, img").count() == 0
    assert page.locator("h1").inner_text() == "<b>Bold</b> subject <script>alert('s')</script>"
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img").count() == 0
    assert dialogs == []


def test_ui_forged_post_without_csrf_token_fails(new_page: Any, site: Site) -> None:
    page = new_page("admin")
    for form in ({}, {"csrf_token": "forged"}):
        response = page.request.post(f"{site.url}/records/EN-1/restore", form=form)
        assert response.status == 403
    response = page.request.post(
        f"{site.url}/admin/holds", form={"scope": "customer", "value": "C-1", "reason": "x"}
    )
    assert response.status == 403
    page.goto("/records/EN-1")
    assert page.get_by_test_id("state").inner_text().lower() == "archived"
    page.goto("/admin/holds")
    assert "C-1 " not in page.locator("main").inner_text()

    # a sign-in form posted from elsewhere (no CSRF cookie/token) fails too: the sign-in
    # page again, signed in as no one
    fresh = new_page()
    response = fresh.request.post(f"{site.url}/sign-in", form={"token": site.tokens["admin"]})
    assert response.status == 400 and "sign in again" in response.text()
    fresh.goto("/search")
    assert "/sign-in" in fresh.url


def test_ui_role_forbidden_post_gets_403(new_page: Any, site: Site) -> None:
    page = new_page("agent")
    page.goto("/records/EN-1")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    response = page.request.post(f"{site.url}/records/EN-1/restore", form={"csrf_token": token})
    assert response.status == 403
    hold = {"csrf_token": token, "scope": "customer", "value": "C-1042", "reason": "forged"}
    assert page.request.post(f"{site.url}/admin/holds", form=hold).status == 403
    page.goto("/admin/holds")
    assert page.get_by_role("heading", name="Not allowed").is_visible()
    page.goto("/records/EN-1")
    assert page.get_by_test_id("state").inner_text().lower() == "archived"
    # agents see no export button, and the export URL refuses them
    page.goto("/search?q=refund")
    assert page.get_by_role("link", name="Export CSV").count() == 0
    assert page.request.get(f"{site.url}/search/export.csv?q=refund").status == 403


# --- more of the pages ------------------------------------------------------------------------


def test_ui_sign_out_and_bad_token(new_page: Any, site: Site) -> None:
    page = new_page()
    page.goto("/search?q=refund")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert "unknown or revoked" in page.locator(".flash-error").inner_text()
    page.get_by_label("API token").fill(site.tokens["agent"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/search\?q=refund$"))  # back where the user was going
    cookie = next(c for c in page.context.cookies() if c["name"] == "archivist_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert site.tokens["agent"] not in json.dumps(page.evaluate("document.cookie"))
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/sign-in"))
    page.goto("/search")
    assert "/sign-in" in page.url


def test_ui_facets_and_paging_follow_links(new_page: Any, site: Site) -> None:
    page = new_page("agent")
    page.goto("/search?per_page=10")
    total = shown_total(page)
    assert total > 10 and len(hit_ids(page)) == 10
    first = hit_ids(page)
    page.get_by_role("link", name="Next →").click()
    assert "page=2" in page.url and hit_ids(page) != first
    chip = page.locator(".facet-row:has(.facet-label:text('Category')) a.chip").first
    name = chip.inner_text().split()[0]
    count = int(chip.locator(".count").inner_text())
    chip.click()
    assert f"category={name}" in page.url and not re.search(r"[?&]page=", page.url)
    assert shown_total(page) == count
    year_chip = page.locator(".facet-row:has(.facet-label:text('Year')) a.chip").first
    year = year_chip.inner_text().split()[0]
    year_chip.click()
    assert f"from={year}-01-01" in page.url and f"to={year}-12-31" in page.url


def test_ui_auditor_reads_the_audit_log(new_page: Any, site: Site) -> None:
    agent = new_page("agent")
    agent.goto("/search?q=shipment")
    agent.goto("/records/EN-3")
    # Searches and reads are audited without waiting (the entry is committed moments later, by
    # the server process that answered): wait until both are in the log, then read it as a user.
    wait_until_audited(site, "read", "EN-3")
    wait_until_audited(site, "search", "shipment")
    page = new_page("auditor")
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Actor (token name)").fill("ui-agent")
    page.get_by_label("Action").select_option("read")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"action=read"))
    rows = page.locator("table tbody tr").all()
    assert rows and all("ui-agent" in r.inner_text() for r in rows)
    assert any("EN-3" in r.inner_text() for r in rows)
    page.get_by_label("Action").select_option("search")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"action=search"))
    assert "shipment" in page.locator("table tbody").inner_text()
    # auditors have no admin pages
    assert page.get_by_role("link", name="Legal holds").count() == 0


def place_customer_hold(page: Any, customer_id: str, reason: str) -> None:
    """On the Legal holds page, place a hold on a customer as an admin would."""
    page.get_by_role("link", name="Legal holds").click()
    page.get_by_label("Applies to").select_option("customer")
    page.get_by_label("Record id, customer id or category").fill(customer_id)
    page.get_by_label("Reason").fill(reason)
    page.get_by_role("button", name="Place hold").click()


def test_ui_admin_places_and_lifts_a_hold_and_sees_retention(new_page: Any) -> None:
    page = new_page("admin")
    place_customer_hold(page, "C-4242", "litigation 2024-117")
    assert "Legal hold placed" in page.locator(".flash-success").inner_text()
    row = page.locator("tr", has_text="C-4242")
    assert "litigation 2024-117" in row.inner_text()

    page.get_by_role("button", name="Place hold").click()  # empty form: the browser refuses
    assert page.get_by_label("Reason").evaluate("e => e.validity.valueMissing")

    page.on("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("Lift")).click()
    page.wait_for_selector(".flash-success:has-text('lifted')")
    assert page.locator("tr", has_text="C-4242").count() == 0

    page.get_by_role("link", name="Retention & jobs").click()
    counts = page.get_by_test_id("counts").inner_text()
    assert "Archived" in counts and "Active" in counts
    policies = page.get_by_test_id("policies")
    assert policies.locator("tr", has_text="finance").locator("td").nth(0).inner_text() == "180"
    page.get_by_label("Preview as of").fill("2040-01-01")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_url(re.compile(r"as_of=2040-01-01"))
    total = page.locator("tfoot td").nth(3).inner_text()
    assert int(total.replace(",", "")) > 0  # by 2040 every archived record is past its keep
    assert "archive" in page.locator("tbody th", has_text="archive").first.inner_text()


def test_ui_controls_have_labels_and_pages_fit_a_phone(new_page: Any, site: Site) -> None:
    for path in ("/search?q=退款", "/records/EN-1", "/audit", "/admin/holds", "/admin"):
        page = new_page("admin", width=375, height=740)
        page.goto(path)
        unlabeled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select')]
                 .filter(e => e.labels.length === 0).map(e => e.name || e.id)"""
        )
        assert unlabeled == [], path
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width)
        page.context.close()


def test_ui_tables_scroll_in_named_regions_the_keyboard_reaches(new_page: Any) -> None:
    """At 320 px a record page scrolled sideways: its History table was not in the box that
    lets a table scroll on its own. Each such box is a named region in the Tab order, so the
    keyboard can scroll it."""
    for path in ("/records/EN-1", "/records/PROC-1-M2", "/audit", "/admin", "/admin/holds"):
        page = new_page("admin", width=320, height=700)
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, (path, width)
        outside = page.evaluate("[...document.querySelectorAll('main table')]"
                                ".filter(t => !t.closest('.table-wrap')).length")
        assert outside == 0, path
        for box in page.locator(".table-wrap").all():
            name = box.get_attribute("aria-label")
            assert box.get_attribute("role") == "region" and name, path
            assert box.get_attribute("tabindex") == "0", path
            assert page.get_by_role("region", name=name, exact=True).count() == 1, (path, name)
        page.context.close()
    page = new_page("auditor", width=320, height=700)
    page.goto("/audit")
    log = page.get_by_role("region", name="Audit log entries")
    log.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    # (Chromium scrolls for a key smoothly, over a few frames: a loaded machine may not have
    # drawn the first one yet when the key press returns)
    page.wait_for_function("e => e.scrollLeft > 0", arg=log.element_handle(), timeout=5000)
    assert log.evaluate("e => e.scrollLeft") > 0


def test_ui_a_selected_filter_chip_says_it_is_selected_and_that_it_removes(
    new_page: Any,
) -> None:
    """A selected chip was a link with aria-pressed, which means nothing on a link: its name
    was only "billing 6"."""
    page = new_page("agent")
    page.goto("/search?category=billing")
    chip = page.locator("a.chip-on")
    assert chip.count() == 1 and chip.get_attribute("aria-pressed") is None
    name = re.compile(r"^billing \d+ \(selected: remove this filter\)$")
    assert page.get_by_role("link", name=name).count() == 1
    assert chip.locator(".visually-hidden").count() == 1  # said, not shown
    assert page.get_by_role("link", name=re.compile(r"^note \d+$")).count() == 1  # unselected
    assert page.locator("[aria-pressed]").count() == 0
    chip.click()
    page.wait_for_url(re.compile(r"/search$"))


def test_ui_the_outcome_of_a_form_takes_the_focus_on_the_page_it_leads_to(
    new_page: Any,
) -> None:
    """The message a redirect brings (hold placed or lifted, a restore, signed out) was shown
    with the focus left at the top of the page, so a screen reader did not read it."""

    def focused() -> str:
        page.wait_for_load_state()  # (the page's script has run)
        return str(page.evaluate(
            "document.activeElement.matches('[role=status], [role=alert]')"
            " ? document.activeElement.textContent : ''"))

    page = new_page("admin")
    place_customer_hold(page, "C-FOCUS", "focus check")
    page.wait_for_selector(".flash-success")
    assert "Legal hold placed on customer C-FOCUS" in focused()
    page.keyboard.press("Tab")  # and the keyboard goes on from there, into the page
    assert page.evaluate("document.activeElement.closest('main') !== null")
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="C-FOCUS").get_by_role("button", name=re.compile("Lift")).click()
    page.wait_for_selector(".flash-success:has-text('lifted')")
    assert "Legal hold on customer C-FOCUS lifted" in focused()
    page.goto("/admin/holds")  # a page without a message keeps the focus where it was
    assert focused() == ""
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/sign-in"))
    assert focused() == "You are signed out."


def test_ui_the_sort_choices_read_whole(new_page: Any) -> None:
    """The sort box is as wide as its longest choice needs (the default's was cut off at
    "Default (relevance for a …" beside the results), and a phone still does not scroll
    sideways; what the default means is said beside the box."""
    for width in (1280, 390):
        page = new_page("agent", width=width, height=844)
        page.goto("/search?q=refund")
        if width < 760:  # a phone folds the filters above the results
            page.get_by_text("Filters", exact=True).click()
        shown, needed = page.evaluate("""() => {
            const sort = document.getElementById('sort');
            const shown = sort.getBoundingClientRect().width;
            sort.style.width = 'auto';  // as wide as its longest choice needs
            const needed = sort.getBoundingClientRect().width;
            sort.style.width = '';
            return [shown, needed];
        }""")
        assert shown >= needed, (width, shown, needed)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        note = page.locator("#sort-default")
        assert note.is_visible() and "relevance for a query, else newest" in note.inner_text()
        assert page.get_by_label("Sort by").get_attribute("aria-describedby") == "sort-default"
        page.context.close()


def test_ui_a_long_reason_wraps_on_a_phone(new_page: Any, site: Site) -> None:
    """A reason is free text, often a pasted link: the holds table wraps it at phone width
    (and its hidden column label stays inside the table)."""
    reason = "see https://crm.example.com/tickets/2026/12/refund-dispute-INV-2023-004512-appeal"
    headers = {"Authorization": f"Bearer {site.tokens['admin']}",
               "Content-Type": "application/json"}
    body = json.dumps({"scope": "customer", "value": "C-WRAP", "reason": reason}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"{site.url}/api/v1/holds", data=body, headers=headers, method="POST"), timeout=30)
    try:
        page = new_page("admin", width=375, height=740)
        page.goto("/admin/holds")
        assert page.locator("tr", has_text="C-WRAP").count() == 1
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        lift = page.locator("tr", has_text="C-WRAP").get_by_role("button", name=re.compile("Lift"))
        box = lift.bounding_box()  # in view, not in a table scrolled sideways
        assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= 375, box
        labels = page.locator("tr", has_text="C-WRAP").locator("td").evaluate_all(
            "cells => cells.map(c => getComputedStyle(c, '::before').content)")
        assert labels[:4] == ['"Scope: "', '"Value: "', '"Reason: "', '"Since: "'], labels
    finally:
        urllib.request.urlopen(urllib.request.Request(
            f"{site.url}/api/v1/holds/customer/C-WRAP", headers=headers, method="DELETE"),
            timeout=30)


def test_ui_the_longest_values_wrap_rather_than_widen_a_page(new_page: Any, site: Site) -> None:
    """Ids, categories, owners, hold values and audit targets may be long and have no space:
    each page wraps them rather than pushing its buttons out (at phone width a table of many
    columns scrolls inside its own box, by design, but the page itself never widens)."""
    headers = {"Authorization": f"Bearer {site.tokens['admin']}",
               "Content-Type": "application/json"}
    value = "CUST-" + "7" * 250
    body = json.dumps({"scope": "customer", "value": value, "reason": "wide"}).encode()
    urllib.request.urlopen(urllib.request.Request(
        f"{site.url}/api/v1/holds", data=body, headers=headers, method="POST"), timeout=30)
    long_query = ",".join(f"user{i}@example.com" for i in range(12))
    api_ids(site, "agent", q=long_query)
    wait_until_audited(site, "search", long_query)
    try:
        for width in (1280, 375):
            page = new_page("admin", width=width, height=800)
            for path in ("/search?q=widthword", "/records/WIDE-1", "/admin/holds", "/audit",
                         "/admin"):
                page.goto(path)
                if path == "/search?q=widthword":
                    assert hit_ids(page) == ["WIDE-1"]
                shown = page.evaluate("document.documentElement.scrollWidth")
                assert shown <= width, (path, width, shown)
                for button in page.locator("main button:visible").all() if width > 1000 else ():
                    box = button.bounding_box()
                    assert box is not None and box["x"] + box["width"] <= width, (path, width)
            page.context.close()
    finally:
        urllib.request.urlopen(urllib.request.Request(
            f"{site.url}/api/v1/holds/customer/{value}", headers=headers, method="DELETE"),
            timeout=30)


def test_ui_a_very_long_subject_leaves_the_restore_button_in_view(new_page: Any) -> None:
    """The heading shows the start of a subject of thousands of characters, so the record's
    controls stay on the first screen; the whole subject is one click away."""
    page = new_page("admin", width=1280, height=800)
    page.goto("/records/LONG-1")
    button = page.get_by_test_id("restore-process")
    box = button.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 800, box
    heading = page.locator("h1").inner_text()
    assert heading.startswith("Longsubjectword lorem") and heading.endswith("…")
    assert len(heading) <= 301
    title = page.title()  # the window's title and tab: the subject's start too
    assert title.startswith("Longsubjectword lorem") and len(title) <= 121 + len(" · Archivist")
    whole = page.get_by_test_id("full-subject")
    assert not whole.locator("p").is_visible()
    whole.locator("summary").click()
    shown = whole.locator("p").inner_text()
    assert shown == ("Longsubjectword " + "lorem ipsum dolor " * 400).strip()
    page.goto("/records/TICK-1")  # a short subject: whole in the heading, nothing to open
    assert page.locator("h1").inner_text() == "First tickword note"
    assert page.get_by_test_id("full-subject").count() == 0


def test_ui_pages_load_without_a_console_error(new_page: Any) -> None:
    page = new_page("admin")
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    failed: list[str] = []
    # (a request the next navigation cancels, such as the favicon Chromium fetches after the
    # page's load, is aborted by the browser, not failed by the server; any answer >= 400 is)
    page.on("requestfailed", lambda request: failed.append(f"{request.url} {request.failure}")
            if request.failure != "net::ERR_ABORTED" else None)
    page.on("response", lambda r: failed.append(f"{r.url} {r.status}") if r.status >= 400 else None)
    for path in ("/search?q=refund", "/records/EN-1", "/audit", "/admin/holds", "/admin"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    assert errors == [] and failed == []
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert page.request.get(icon).ok


def test_ui_focus_is_an_outline_seen_on_white_on_the_page_and_on_the_top_bar(
    new_page: Any,
) -> None:
    """The focus ring was a translucent shadow: 2.05:1 on white, 1.50:1 on the dark top bar,
    and gone in forced colours (which drop shadows but keep outlines)."""
    page = new_page("admin")
    page.goto("/search?q=refund")
    reached = tab_through(page, 30)
    assert {r["topbar"] for r in reached} == {True, False}  # the top bar and the page
    backdrops = {r["backdrop"] for r in reached}
    assert {"rgb(255, 255, 255)", "rgb(246, 247, 249)", "rgb(24, 32, 44)"} <= backdrops
    for ring in reached:
        assert ring["style"] == "solid" and ring["width"] >= 2, ring
        assert contrast(ring["color"], ring["backdrop"]) >= 3, ring

    page.emulate_media(forced_colors="active")
    page.goto("/search?q=refund")
    for ring in tab_through(page, 12):
        assert ring["style"] != "none" and ring["width"] >= 2, ring


def test_ui_form_fields_have_edges_seen_on_white_and_on_the_page(new_page: Any) -> None:
    """A box's border against its own white and against what surrounds it (WCAG 1.4.11):
    #b9c0cb was 1.83:1 on white."""
    page = new_page("admin")
    for path, fields in (
        ("/search?q=refund", ("#q", "#customer_id", "#from", "#date_field", "#sort")),
        ("/admin/holds", ("#h-scope", "#h-value", "#h-reason")),
        ("/audit", ("#a-from", "#a-actor", "#a-action")),
        ("/admin", ("#as_of",)),
    ):
        page.goto(path)
        for field in fields:
            edge, inside, outside = page.locator(field).evaluate(
                "(e) => [getComputedStyle(e).borderTopColor, getComputedStyle(e).backgroundColor,"
                f" ({BACKDROP_JS})(e, false)]")
            for neighbour in (inside, outside):
                assert contrast(edge, neighbour) >= 3, (path, field, edge, neighbour)


def test_ui_a_phone_shows_the_search_page_in_the_order_the_keyboard_goes(new_page: Any) -> None:
    """The filters come first in the page; a phone showed them below every result, so Tab went
    from the help link down past the results to them, then back up. Now they come first there
    too, folded, and the first result is still on the first screen."""
    page = new_page("agent", width=375, height=740)
    page.goto("/search?q=refund")
    tops = page.evaluate("""() => [...document.querySelectorAll(
            'main a[href], main button, main input, main select, main summary')]
        .filter(e => e.checkVisibility({visibilityProperty: true}))
        .map(e => [e.id || e.textContent.trim().slice(0, 30), e.getBoundingClientRect().top])""")
    for (before, above), (after, below) in zip(tops, tops[1:], strict=False):
        assert below >= above - 1, (before, above, after, below)  # each further down, or beside
    folded = page.get_by_text("Filters", exact=True)
    first_hit = page.locator(".hit-title a").first
    assert first_hit.bounding_box()["y"] < 740
    assert not page.get_by_label("Customer id").is_visible()
    page.locator(".help summary").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Filters"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#results') !== null")
    folded.click()  # opened, the filters stay above the results
    customer = page.get_by_label("Customer id")
    assert customer.is_visible()
    assert customer.bounding_box()["y"] < first_hit.bounding_box()["y"]
    # a refused filter is shown open, to be corrected
    page.goto("/search?q=refund&from=2023-02-30")
    assert page.get_by_label("From").is_visible()

    wide = new_page("agent")  # beside the results, open, without a summary to fold them
    wide.goto("/search?q=refund")
    assert wide.get_by_label("Customer id").is_visible()
    assert not wide.get_by_text("Filters", exact=True).is_visible()
    filters, results = (wide.locator(f"#{name}").bounding_box() for name in ("filters", "results"))
    assert filters["x"] + filters["width"] <= results["x"] and filters["y"] <= results["y"]


def test_ui_keyboard_only_search(new_page: Any) -> None:
    page = new_page("agent")
    assert page.evaluate("document.activeElement.id") == "q"  # signed in: type at once
    page.goto("/search?q=refund")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to results"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # the next stop is among the results
    assert page.evaluate("document.activeElement.closest('#results') !== null")
    page.locator("#q").fill("")
    page.locator("#q").focus()
    page.keyboard.type("invoice")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=invoice"))
    page.locator(".hit-title a").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/records/"))


def test_ui_screenshots(browser: Any, tmp_path: Path) -> None:
    """The README's pictures, of the demo's data set (`archivist demo`) and its refund case."""
    from archivist.demo_data import generate_demo_records

    target = Path(os.environ.get("ARCHIVIST_SCREENSHOTS") or tmp_path / "shots")
    target.mkdir(parents=True, exist_ok=True)
    shots = {
        "ui-search.png": ("/search?q=refund OR 退款", 1280, 900),
        "ui-record.png": ("/records/REC-00000042-M2", 1280, 900),
        "ui-search-phone.png": ("/search?q=退款", 390, 844),
    }
    records = list(generate_demo_records(300, now=datetime.fromisoformat(ARCHIVE_AS_OF)))
    with _serving_site(tmp_path / "demo", records) as demo, _pages(browser, demo) as new_page:
        for name, (path, width, height) in shots.items():
            page = new_page("admin" if "record" in name else "auditor", width=width,
                            height=height)
            page.goto(path)
            assert page.locator("h1").count() == 1  # a page of the site, not an error
            page.screenshot(path=str(target / name), full_page=False)
            assert (target / name).stat().st_size > 10_000
