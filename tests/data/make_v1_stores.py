"""Make `store_v1_sealed/` and `store_v1_plain/`: archive stores as the catalog of one row per
entry (with each entry's hashes) kept them, for the upgrade tests. Run with that version's
`archive_store` on the path (commit 7075095): `PYTHONPATH=<its checkout> python make_v1_stores.py`.
`expected.json` beside them holds what that version read from them.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from archive_store import ArchiveItem, ArchiveStore

HERE = Path(__file__).resolve().parent
KEY = bytes(range(32))
AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
IDS = ["R-1", "R-2", "R-3", "R-4", "R-5", "R-6"]


def item(record_id: str, customer: str | None, body: str, parent: str | None = None) -> ArchiveItem:
    record = {
        "id": record_id, "kind": "note", "category": "support", "customer_id": customer,
        "subject": f"subject of {record_id}", "body": body,
        "created_at": "2020-01-02T03:04:05Z", "updated_at": "2020-02-03T04:05:06.250000Z",
    }
    if parent is not None:
        record["parent_id"] = parent
    return ArchiveItem(
        record_id, record, "support", customer, datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2020, 2, 3, 4, 5, 6, 250000, tzinfo=UTC), parent,
    )


def fill(store: ArchiveStore) -> None:
    ids = IDS
    store.archive_batch([
        item("R-1", "C1", "first words kept"),
        item("R-2", "C1", "restored later"),
        item("R-3", "C3", "archived twice"),
        item("R-4", "C4", "disposed of"),
        item("R-5", "C2", "erased on request"),
        item("R-6", None, "a child note", parent="R-1"),
    ], AT, "archive-job")
    store.clear_pending(ids)
    for record_id, reason in (("R-2", "customer asked"), ("R-3", None)):
        store.begin_restores([[record_id]])
        store.complete_restores([record_id], AT + timedelta(days=1), "admin", reason)
    store.archive_batch([item("R-3", "C3", "archived twice, changed")], AT + timedelta(days=2),
                        "archive-job")
    store.clear_pending(["R-3"])
    store.purge(["R-4"], AT + timedelta(days=3), "dispose-job")
    store.erase(["R-5"], AT + timedelta(days=4), "admin", customer_id="C2")


def expected(store: ArchiveStore) -> dict[str, object]:
    ids = IDS
    out: dict[str, object] = {"last_seq": store.last_seq()}
    out["hashes"] = {str(s): store.entry_hash_at(s) for s in range(1, store.last_seq() + 1)}
    out["info"] = {i: json.loads(json.dumps(asdict(store.info(i)), default=str)) for i in ids}
    out["history"] = {
        i: [json.loads(json.dumps(asdict(e), default=str)) for e in store.history(i)] for i in ids
    }
    out["records"] = store.get_many(ids)
    return out


def make(
    name: str,
    key: bytes | None,
    read: Callable[[ArchiveStore], dict[str, object]] = expected,
    hex_text: bool = True,
) -> dict[str, object]:
    """Make the store `name`; returns what `read` read from it (`make_v2_stores` passes its
    own, and no hashes as hex text: that catalog has none)."""
    folder = HERE / name
    shutil.rmtree(folder, ignore_errors=True)
    with ArchiveStore.open(folder, key=key) as store:
        fill(store)
        result = read(store)
        assert store.verify() == []
    (folder / ".lock").unlink(missing_ok=True)
    for lock in ("move.lock", "index.lock", "dispose.lock", "archive.lock"):
        (folder / lock).unlink(missing_ok=True)
    if key is None and hex_text:  # the oldest catalogs kept their hashes as hex text
        conn = sqlite3.connect(folder / "catalog.db")
        with conn:
            conn.execute("UPDATE entries SET sha256 = lower(hex(sha256)), "
                         "entry_hash = lower(hex(entry_hash)), prev_hash = lower(hex(prev_hash))")
            conn.execute("UPDATE records SET sha256 = lower(hex(sha256))")
        conn.close()
    conn = sqlite3.connect(folder / "catalog.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return result


if __name__ == "__main__":
    (HERE / "expected_v1.json").write_text(json.dumps(
        {"sealed": make("store_v1_sealed", KEY), "plain": make("store_v1_plain", None)},
        indent=1, sort_keys=True, ensure_ascii=False,
    ) + "\n")
