"""Make `backup_v1/`: a backup `archivist backup create` made while the catalog kept a row per
entry with each entry's hashes, of an installation of 20 archived records (and one restored, so
that an event carries a reason), for the upgrade test in `test_backup.py`. Run with that
version's code on the path (commit 7075095), from the repository's root:
`PYTHONPATH=<its checkout> python tests/data/make_v1_backup.py`. `backup_v1.key` is the
installation's archive key; `backup_v1.json` the answers its searches gave.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from datetime import datetime
from functools import partial
from pathlib import Path

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.importer import import_lines
from indexer.jobs.backup import create_backup
from indexer.jobs.restore import restore_record
from indexer.jobs.runs import run_archive_job
from indexer.processes import find_archived_parents
from indexer.services import Services
from tests.conftest import ARCHIVE_AS_OF, CONFIG_TEXT
from tests.test_backup import _answers, _records

HERE = Path(__file__).resolve().parent


COUNTER = itertools.count(1)


def make_record(**overrides: object) -> dict:
    n = next(COUNTER)
    record = {
        "id": f"R-{n:05d}", "kind": "communication", "category": "support",
        "customer_id": "C001", "owner": "alice", "subject": f"Subject {n}",
        "body": "The customer asked for a refund.", "status": "closed",
        "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z",
    }
    record.update(overrides)
    return record


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "config.toml").write_text(CONFIG_TEXT)
        config = load_config(root / "config.toml")
        with Services.open(config, create=True) as services:
            lines = [json.dumps(r, ensure_ascii=False).encode()
                     for r in _records(make_record, 0, 20)]
            import_lines(lines, services.sessions, services.store.find_archived,
                         find_archived_parents=partial(find_archived_parents, services.store))
            run_archive_job(services, datetime.fromisoformat(ARCHIVE_AS_OF))
            restore_record(services.sessions, services.store, services.index, "B-00003", "admin",
                           utcnow(), reason="asked by the customer")
            answers = _answers(services)
            shutil.rmtree(HERE / "backup_v1", ignore_errors=True)
            create_backup(services, HERE / "backup_v1", utcnow())
        shutil.copy2(config.key_file, HERE / "backup_v1.key")
    (HERE / "backup_v1.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
