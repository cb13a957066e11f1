"""Shared fixtures: a whole installation under tmp_path, with real files and databases."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from archivist.config import Config, load_config
from indexer.search import SearchEngine
from indexer.services import Services
from server import close_app, create_app
from tests.engines import ENGINES

CONFIG_TEXT = """
[active]
url = "sqlite:///data/active.db"

[archive]
dir = "data/archive"
segment_max_bytes = 65536
batch_size = 200

[index]
dir = "data/index"

[retention.default]
archive_after_days = 365
keep_years = 5

[retention.category.finance]
archive_after_days = 180
keep_years = 7

[retention.category.medical]
keep_years = 10
"""


def pin_worker_schedule(config_path: Path) -> None:
    """Give a config whose worker a test starts its scheduled runs twelve hours from now: the
    defaults (archive daily at 02:00, dispose Sundays at 03:30) would otherwise fire, or be
    caught up within their grace hour, when a test happens to run then (a disposal purging
    the test's records)."""
    from datetime import UTC, datetime

    text = config_path.read_text()
    if "[worker]" in text:
        return
    hour = (datetime.now(UTC).hour + 12) % 24
    config_path.write_text(
        text + f"\n[worker]\narchive_cron = '0 {hour} * * *'\ndispose_cron = '30 {hour} * * *'\n"
    )


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A config file whose data lives under tmp_path."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG_TEXT)
    return path


@pytest.fixture
def config(config_path: Path) -> Config:
    """The loaded config of the tmp_path installation."""
    return load_config(config_path)


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine_name(request: pytest.FixtureRequest) -> str:
    """The search engine a test runs against (the conformance suite: see tests/engines.py)."""
    return str(request.param)


@pytest.fixture
def open_engine(engine_name: str) -> Iterator[Callable[[Path], SearchEngine]]:
    """Opens the engine under test in a folder; closes what it opened after the test."""
    opened: list[SearchEngine] = []

    def open_dir(path: Path) -> SearchEngine:
        opened.append(ENGINES[engine_name].open_dir(path))
        return opened[-1]

    yield open_dir
    for engine in reversed(opened):
        engine.close()


@pytest.fixture
def services(config: Config, engine_name: str) -> Iterator[Services]:
    """Database, sessions, store and index of the tmp_path installation, created fresh."""
    open_index = ENGINES[engine_name].open_for
    with Services.open(config, create=True, open_index=open_index) as services:
        yield services


@pytest.fixture
def make_record() -> Callable[..., dict[str, Any]]:
    """A factory of valid records as JSON values; keyword arguments override fields."""
    counter = itertools.count(1)

    def make(**overrides: Any) -> dict[str, Any]:
        n = next(counter)
        record: dict[str, Any] = {
            "id": f"R-{n:05d}",
            "kind": "communication",
            "category": "support",
            "customer_id": "C001",
            "owner": "alice",
            "subject": f"Subject {n}",
            "body": "The customer asked for a refund.",
            "status": "closed",
            "created_at": "2020-01-01T00:00:00Z",
            "updated_at": "2020-01-02T00:00:00Z",
        }
        record.update(overrides)
        return record

    return make


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Write JSON values (or raw strings, written as they are) as JSON Lines."""
    with path.open("w", encoding="utf-8") as f:
        for value in records:
            f.write(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            f.write("\n")
    return path


# --- the HTTP server ---------------------------------------------------------------------------

ARCHIVE_AS_OF = "2026-01-01T00:00:00Z"


@pytest.fixture
def app(services: Any) -> Iterator[Any]:
    """The Flask app of the tmp_path installation (its database created by `services`)."""
    app = create_app(services.config)
    app.config["TESTING"] = True
    yield app
    close_app(app)


@pytest.fixture
def client(app: Any) -> Any:
    """A Flask test client of `app`."""
    return app.test_client()


def _token_headers(services: Any, role: str) -> dict[str, str]:
    from archivist.active_db import utcnow
    from archivist.tokens import create_token

    with services.sessions.begin() as session:
        secret = create_token(session, f"test-{role}", role, utcnow())
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin_headers(services: Any) -> dict[str, str]:
    """Headers carrying a token named `test-admin` with the admin role."""
    return _token_headers(services, "admin")


@pytest.fixture
def auditor_headers(services: Any) -> dict[str, str]:
    """Headers carrying a token named `test-auditor` with the auditor role."""
    return _token_headers(services, "auditor")


@pytest.fixture
def agent_headers(services: Any) -> dict[str, str]:
    """Headers carrying a token named `test-agent` with the agent role."""
    return _token_headers(services, "agent")


@pytest.fixture
def archived(services: Any) -> Callable[..., list[dict[str, Any]]]:
    """Import records into the active database and run the archive job over them (and index)."""
    from datetime import datetime
    from functools import partial

    from archivist.importer import import_lines
    from indexer.jobs.runs import run_archive_job
    from indexer.processes import find_archived_parents

    def archive(*records: dict[str, Any]) -> list[dict[str, Any]]:
        lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]
        report = import_lines(
            lines,
            services.sessions,
            services.store.find_archived,
            find_archived_parents=partial(find_archived_parents, services.store),
        )
        assert report.rejected == 0, report.errors
        run_archive_job(services, datetime.fromisoformat(ARCHIVE_AS_OF))
        return list(records)

    return archive


@pytest.fixture
def live_server(app: Any) -> Iterator[str]:
    """`app` on a real threaded HTTP server in this process; yields its base URL."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)
