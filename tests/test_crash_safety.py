"""Crash safety: SIGKILL `archivist archive` mid-run, rerun, and nothing is lost or doubled.

Kills land both at named crash points (inside each step: store write, catalog commit, active
delete, pending cleanup) and at random moments chosen by the clock.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archivist.active_db import find_active
from archivist.config import load_config
from archivist.demo_data import generate_records
from indexer.services import Services

pytestmark = pytest.mark.slow
AS_OF = "2030-01-01"
CRASH_POINTS = [
    "archive.before_store",
    "store.frames_written",
    "store.catalog_committed",
    "archive.after_store",
    "archive.after_delete",
    "archive.after_commit",
]


def archivist(
    config_path: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> subprocess.Popen[bytes] | subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "archivist", *args, "--config", str(config_path)]
    full_env = {**os.environ, **(env or {})}
    if wait:
        return subprocess.run(command, capture_output=True, env=full_env, timeout=300)
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=full_env
    )


def import_records(config_path: Path, records: list[dict], tmp_path: Path) -> None:
    path = tmp_path / f"batch-{random.random()}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    result = archivist(config_path, "import", str(path))
    assert result.returncode == 0, result.stderr


def test_sigkill_during_archive_loses_and_doubles_nothing(tmp_path, config_path):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "1234")))
    assert archivist(config_path, "init").returncode == 0
    records = list(generate_records(20_000, seed=11))
    # a tenth stays young, so both places hold records at the end
    for r in records[::10]:
        r["updated_at"] = "2029-12-31T00:00:00Z"
    import_records(config_path, records, tmp_path)

    killed_at_points = 0
    for point in CRASH_POINTS:
        env = {"ARCHIVIST_CRASH_AT": f"{point}:{rng.randint(1, 6)}"}
        result = archivist(config_path, "archive", "--as-of", AS_OF, env=env)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
        killed_at_points += 1

    killed_at_random = 0
    extra = 0
    for _ in range(40):
        if killed_at_random >= 6:
            break
        process = archivist(config_path, "archive", "--as-of", AS_OF, wait=False)
        time.sleep(rng.uniform(0.4, 2.0))
        process.send_signal(signal.SIGKILL)
        if process.wait() == -signal.SIGKILL:
            killed_at_random += 1
        else:  # it finished first: give the next run fresh work to be killed in
            fresh = list(generate_records(3000, seed=12, start=100_000 + extra))
            extra += 3000
            records.extend(fresh)
            import_records(config_path, fresh, tmp_path)
    assert killed_at_points == len(CRASH_POINTS) and killed_at_random >= 5

    result = archivist(config_path, "archive", "--as-of", AS_OF)
    assert result.returncode == 0, result.stderr
    assert archivist(config_path, "verify").returncode == 0

    expected = {r["id"]: r for r in records}
    with Services.open(load_config(config_path)) as services:
        with services.sessions.begin() as session:
            active = find_active(session, expected)
        archived = services.store.find_archived(expected)
        assert not set(active) & set(archived), "a record is in both places"
        assert set(active) | set(archived) == set(expected), "a record is in neither place"
        assert set(active) == {r["id"] for r in records[:20_000:10]}
        for record_id in archived:
            assert services.store.get(record_id) == expected[record_id]
            assert len(services.store.history(record_id)) == 1
        assert list(services.store.iter_pending()) == []
        assert services.store.verify() == []
