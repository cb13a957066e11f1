"""Two worker processes, each with its own config file naming the same PostgreSQL and archive,
start their archive job at the same moment: it runs once at a time, and every row moves once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from archivist.config import load_config
from indexer.services import Services
from tests.pg import find_pg_bin, run_postgres
from tests.test_crm_crash import DATA, SNAPSHOT
from tests.test_crm_tables import EXAMPLE, run_sql, write_config

if find_pg_bin() is None and not os.environ.get("ARCHIVIST_REQUIRE_POSTGRES"):
    pytest.skip("PostgreSQL is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

WORKER = (
    "import sys; from archivist.config import load_config; from indexer.worker import run\n"
    "run(load_config(sys.argv[1]), archive_now=True)\n"
)


def test_crm_two_workers_run_the_archive_job_once(tmp_path: Path):
    with run_postgres() as url:
        run_sql(url, (EXAMPLE / "schema.sql").read_text())
        run_sql(url, DATA)
        engine = create_engine(url)
        with engine.connect() as connection:
            original = dict(connection.execute(text(SNAPSHOT)).all())
        configs = []
        for machine in ("a", "b"):
            folder = tmp_path / machine
            folder.mkdir()
            path = write_config(folder, url)
            # one archive, and so one archive key, shared by both machines
            shared = f'dir = "{tmp_path / "archive"}"\nkey_file = "{tmp_path / "archive.key"}"'
            path.write_text(path.read_text().replace('dir = "archive"', shared)
                            .replace("batch_size = 3", "batch_size = 100")
                            .replace('[index]\ndir = "index"', f'[index]\ndir = "{tmp_path}/ix"'))
            configs.append(path)
        with Services.open(load_config(configs[0]), create=True):
            pass
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER, str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for path in configs
        ]
        try:
            deadline = time.monotonic() + 240
            runs: list = []
            while time.monotonic() < deadline:
                with engine.connect() as connection:
                    runs = connection.execute(text(
                        "SELECT started_at, finished_at, archived FROM job_runs "
                        "WHERE job = 'archive' ORDER BY started_at"
                    )).all()
                if runs and all(r.finished_at is not None for r in runs) and any(
                    r.archived for r in runs
                ):
                    break
                time.sleep(0.5)
            time.sleep(3)  # the other worker's scheduled start has long passed
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=120)
        with engine.connect() as connection:
            runs = connection.execute(text(
                "SELECT started_at, finished_at, archived FROM job_runs WHERE job = 'archive' "
                "ORDER BY started_at"
            )).all()
            left = dict(connection.execute(text(SNAPSHOT)).all())
        engine.dispose()

        assert [r.archived > 0 for r in runs].count(True) == 1, runs
        for earlier, later in zip(runs, runs[1:], strict=False):
            assert earlier.finished_at <= later.started_at, "two archive runs overlapped"
        with Services.open(load_config(configs[1])) as services:
            archived = services.store.find_archived(original)
            assert archived and not archived & set(left)
            assert archived | set(left) == set(original)
            for record_id in list(archived)[:100]:
                assert [h.event for h in services.store.history(record_id)] == ["archived"]
