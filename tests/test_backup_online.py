"""A backup taken while `archivist serve` restores and searches and `archivist worker` archives
recovers into a fresh installation: verify clean, every record in exactly one place, and the
same search answers as at backup time."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select

from archivist.active_db import ActiveRecord
from archivist.config import load_config
from archivist.importer import import_lines
from indexer.search import SearchQuery
from indexer.services import Services
from server import close_app, create_app
from tests.conftest import CONFIG_TEXT, pin_worker_schedule
from tests.test_server_process import _free_port, _get, _wait_healthy

pytestmark = pytest.mark.slow

WAVE_A = 1200  # archived before the server starts; some are restored while backups run
WAVE_B = 3000  # archived by the worker while backups run
QUERIES = {"refund": 0, "退款": 1, "INV-2023-000002": None, "": -1}


def _body(n: int) -> str:
    return (
        "The customer asked for a refund of the kettle.",
        "客户 申请 退款，订单 已经 取消。",
        f"Invoice INV-2023-{n:06d} was paid twice.",
    )[n % 3]


def _record(n: int) -> dict[str, Any]:
    return {
        "id": f"W-{n:05d}", "kind": "communication", "category": "support",
        "customer_id": f"C{n % 11}", "owner": "alice", "subject": f"Subject {n}",
        "body": _body(n), "status": "closed", "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2020-01-02T00:00:00Z",
    }


def _expected(archived: set[str], q: str) -> list[str]:
    """What a search must answer over exactly these archived records."""
    numbers = sorted(int(i.split("-")[1]) for i in archived)
    if q == "":
        return [f"W-{n:05d}" for n in numbers]
    if q.startswith("INV-"):
        return [i for i in (f"W-{n:05d}" for n in numbers) if i == "W-00002"]
    return [f"W-{n:05d}" for n in numbers if n % 3 == QUERIES[q]]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "archivist", *args], capture_output=True, text=True, timeout=600
    )


def _recover(backup: Path, folder: Path) -> Path:
    folder.mkdir()
    config = folder / "config.toml"
    config.write_text(CONFIG_TEXT)
    # the archive key is never in a backup: a recovery brings it along from where it is kept
    shutil.copy2(folder.parent / "archive.key", folder / "archive.key")
    assert _cli("init", "--config", str(config)).returncode == 0
    result = _cli("backup", "recover", str(backup), "--config", str(config))
    assert result.returncode == 0, result.stderr
    verified = _cli("verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return config


def _places(config_path: Path) -> tuple[set[str], set[str], dict[str, list[str]]]:
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            active = set(session.scalars(select(ActiveRecord.id)))
        archived = {e.record_id for e in services.store.iter_catalog(state="archived")}
        answers = {
            q: sorted(h.id for h in services.index.iter_hits(SearchQuery(q=q))) for q in QUERIES
        }
    return active, archived, answers


def _run_finished(base: str, token: str) -> bool:
    """The worker's archive run (the only one after wave A) has ended and is all indexed."""
    stats = json.loads(_get(f"{base}/api/v1/stats", token)[1])
    run = stats["last_run"] or {}
    return bool(run.get("finished_at")) and run.get("archived", 0) >= WAVE_B and (
        stats["indexed"] == stats["archived"]
    )


def test_backup_under_load_recovers_consistently(
    services: Services, config_path: Path, archived: Callable[..., Any], tmp_path: Path
) -> None:
    archived(*[_record(n) for n in range(WAVE_A)])
    lines = [json.dumps(_record(n)).encode() for n in range(WAVE_A, WAVE_A + WAVE_B)]
    assert import_lines(lines, services.sessions, services.store.find_archived).imported == WAVE_B
    every_id = {f"W-{n:05d}" for n in range(WAVE_A + WAVE_B)}
    # Small batches: the worker's run is hundreds of moves long, so backups land inside it.
    text = config_path.read_text().replace("batch_size = 200", "batch_size = 10")
    config_path.write_text(text + "\n[server]\nprocesses = 1\nthreads = 8\n")
    pin_worker_schedule(config_path)
    token = _cli("token", "create", "--role", "admin", "--name", "ops",
                 "--config", str(config_path)).stdout.strip()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "archivist", "serve", "--port", str(port),
             "--config", str(config_path)],
            stdout=subprocess.DEVNULL, stderr=log_file,
        )
    worker: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    failures: list[str] = []
    restored: list[str] = []

    def restore_some() -> None:
        for n in range(0, WAVE_A, 40):
            if stop.is_set():
                return
            status, body, _ = _get(f"{base}/api/v1/records/W-{n:05d}/restore", token, "POST")
            if status != 200:
                failures.append(f"restore W-{n:05d}: {status} {body[:200]!r}")
            else:
                restored.append(f"W-{n:05d}")
            time.sleep(0.05)

    def search_on() -> None:
        while not stop.is_set():
            status, body, _ = _get(f"{base}/api/v1/search?q=refund", token)
            if status != 200:
                failures.append(f"search: {status} {body[:200]!r}")
            time.sleep(0.02)

    try:
        _wait_healthy(base, server)
        worker = subprocess.Popen(
            [sys.executable, "-m", "archivist", "worker", "--archive-now",
             "--config", str(config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        threads = [threading.Thread(target=restore_some), threading.Thread(target=search_on)]
        for thread in threads:
            thread.start()
        backups: list[Path] = []
        live = tmp_path / "live-backup"
        round_ = 0
        # the same folder, incrementally, each round kept aside; on until the worker's run ends
        while round_ < 3 or (round_ < 20 and not _run_finished(base, token)):
            result = _cli("backup", "create", str(live), "--config", str(config_path))
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("backed up "), result.stdout
            kept = tmp_path / f"during-{round_}"
            shutil.copytree(live, kept)
            backups.append(kept)
            round_ += 1
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        assert failures == []

        deadline = time.monotonic() + 300  # let the worker finish its run
        while not _run_finished(base, token):
            assert time.monotonic() < deadline, "the worker's archive run did not finish"
            time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
        worker = None
        final = tmp_path / "final-backup"
        assert _cli("backup", "create", str(final), "--config", str(config_path)).returncode == 0
        live_answers = {
            q: json.loads(_get(f"{base}/api/v1/search?per_page=100&sort=oldest&q="
                               + quote(q), token)[1])
            for q in ("refund", "退款", "INV-2023-000002")
        }
    finally:
        stop.set()
        if worker is not None:
            worker.kill()
            worker.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    archived_counts = [
        json.loads((backup / "backup.json").read_text())["archived"] for backup in backups
    ]
    assert any(WAVE_A < n < WAVE_A + WAVE_B for n in archived_counts), (
        f"no backup was taken while the worker archived: {archived_counts}"
    )
    for number, backup in enumerate(backups):
        assert _cli("backup", "verify", str(backup), "--config", str(config_path)).returncode == 0
        config = _recover(backup, tmp_path / f"recovered-{number}")
        active, archived_ids, answers = _places(config)
        assert not active & archived_ids, "a record both active and archived"
        assert active | archived_ids == every_id, "a record in neither place"
        for q in QUERIES:
            assert answers[q] == _expected(archived_ids, q), q

    config = _recover(final, tmp_path / "recovered-final")
    app = create_app(load_config(config))
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}  # the token travelled with the backup
        for q, before in live_answers.items():
            after = client.get("/api/v1/search", headers=headers,
                               query_string={"q": q, "per_page": 100, "sort": "oldest"}).json
            assert after["total"] == before["total"], q
            assert [h["id"] for h in after["hits"]] == [h["id"] for h in before["hits"]], q
    finally:
        close_app(app)
