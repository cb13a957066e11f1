"""Stores whose catalog an earlier version wrote open with this version: the catalog is
rewritten once into this version's shape, and reads, history, entry hashes and `verify` answer
as they did; new writes go on from there. Two earlier shapes: `v1`, a row per entry with its
hashes; `v2`, a row per record with its state as text and its record's `created_at`.

The stores in `tests/data` were made by those versions (see `tests/data/make_v1_stores.py` and
`make_v2_stores.py`), one sealed with a key, one without (whose v1 catalog keeps its hashes as
hex text)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from archive_store import ArchiveItem, ArchiveStore
from archive_store.errors import StoreReadOnly
from archive_store.segment import MAGIC, SEALED_MAGIC
from tests.test_encryption import magics
from tests.test_read_only import read_only

DATA = Path(__file__).resolve().parent / "data"
KEY = bytes(range(32))
EXPECTED = {
    version: json.loads((DATA / f"expected_{version}.json").read_text())
    for version in ("v1", "v2")
}
STORES = [
    (version, name, key) for version in ("v1", "v2") for name, key in (("sealed", KEY),
                                                                       ("plain", None))
]
IDS = ["R-1", "R-2", "R-3", "R-4", "R-5", "R-6"]
AT = datetime(2025, 1, 1, tzinfo=UTC)


def old_store(tmp_path: Path, version: str, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / f"store_{version}_{name}", folder)
    return folder


def expected(version: str, name: str) -> dict[str, Any]:
    """What that version read from the store, but the record's `created_at` in `info`: the
    catalog keeps it no more (`records` compares the records themselves)."""
    read: dict[str, Any] = EXPECTED[version][name]
    return {**read, "info": {
        i: {k: v for k, v in info.items() if k != "created_at"} for i, info in read["info"].items()
    }}


def earlier_shape(folder: Path) -> bool:
    """Whether the catalog still has an earlier version's shape."""
    conn = sqlite3.connect(folder / "catalog.db")
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
        return "created_at" in columns or "entries" in tables(folder)
    finally:
        conn.close()


def tables(folder: Path) -> set[str]:
    conn = sqlite3.connect(folder / "catalog.db")
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def pragma(folder: Path, name: str) -> int:
    conn = sqlite3.connect(folder / "catalog.db")
    try:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        conn.close()


def as_read(store: ArchiveStore) -> dict[str, object]:
    """What `make_v1_stores.expected` recorded, read through this version."""
    last = store.last_seq()
    return {
        "last_seq": last,
        "hashes": {str(s): store.entry_hash_at(s) for s in range(1, last + 1)},
        "info": {i: json.loads(json.dumps(
            {**asdict(store.info(i)), "sha256": store.hashes([i])[i]}, default=str
        )) for i in IDS},
        "history": {
            i: [json.loads(json.dumps(asdict(e), default=str)) for e in store.history(i)]
            for i in IDS
        },
        "records": store.get_many(IDS),
    }


@pytest.mark.parametrize(("version", "name", "key"), STORES)
def test_an_old_catalog_is_upgraded_and_reads_as_before(
    tmp_path: Path, version: str, name: str, key: bytes | None
) -> None:
    folder = old_store(tmp_path, version, name)
    assert earlier_shape(folder)
    assert ArchiveStore.committed_head_in(folder) == expected(version, name)["last_seq"]

    with ArchiveStore.open(folder, key=key) as store:
        assert as_read(store) == expected(version, name)
        assert store.verify() == []

    assert not earlier_shape(folder) and "history" in tables(folder)
    assert pragma(folder, "freelist_count") == 0  # the old tables' pages given back
    assert not Path(f"{folder / 'catalog.db'}-wal").exists() or Path(
        f"{folder / 'catalog.db'}-wal").stat().st_size == 0
    assert ArchiveStore.committed_head_in(folder) == expected(version, name)["last_seq"]
    with ArchiveStore.open(folder, key=key) as store:  # (once: a second open changes nothing)
        assert as_read(store) == expected(version, name)


def open_and_crash(folder: str, key: bytes | None) -> None:
    """In a child process: open the store, and die by SIGKILL once its catalog is rewritten,
    before that commits."""
    os.environ["ARCHIVIST_CRASH_AT"] = "catalog.upgraded:1"
    ArchiveStore.open(Path(folder), key=key)


@pytest.mark.parametrize(("version", "name", "key"), STORES[::2])
def test_a_crash_during_the_upgrade_leaves_the_earlier_catalog_as_it_was(
    tmp_path: Path, version: str, name: str, key: bytes | None
) -> None:
    folder = old_store(tmp_path, version, name)
    child = multiprocessing.get_context("spawn").Process(
        target=open_and_crash, args=(str(folder), key)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -9  # killed where asked, not finished

    assert earlier_shape(folder)
    with ArchiveStore.open(folder, key=key) as store:  # (the next open upgrades it)
        assert as_read(store) == expected(version, name)
        assert store.verify() == []
    assert not earlier_shape(folder)


@pytest.mark.parametrize(("version", "name", "key"), STORES)
def test_an_upgraded_store_takes_new_writes(
    tmp_path: Path, version: str, name: str, key: bytes | None
) -> None:
    folder = old_store(tmp_path, version, name)
    record = {"id": "N-1", "kind": "note", "category": "support", "customer_id": "C9",
              "body": "written after the upgrade", "created_at": "2021-01-01T00:00:00Z",
              "updated_at": "2021-01-01T00:00:00Z"}
    created = datetime(2021, 1, 1, tzinfo=UTC)
    with ArchiveStore.open(folder, key=key) as store:
        store.archive_batch([ArchiveItem("N-1", record, "support", "C9", created)],
                            AT, "archive-job")
        store.clear_pending(["N-1"])
        store.begin_restores([["R-1"]])
        store.complete_restores(["R-1"], AT, "admin", "asked again")
        assert store.purge(["R-6"], AT, "dispose-job") == 1
        erased = store.erase(["R-3"], AT, "admin", customer_id="C3")
        assert [e.record_id for e in erased] == ["R-3"]
        assert store.verify() == []
        assert store.last_seq() == expected(version, name)["last_seq"] + 4
    with ArchiveStore.open(folder, key=key) as store:
        assert store.verify() == []
        assert store.get("N-1") == record
        assert store.get("R-2")["body"] == "restored later"
        assert [e.event for e in store.history("R-3")] == [
            "archived", "restored", "archived", "erased"]
        assert [e.reason for e in store.history("R-1")] == [None, "asked again"]
        assert {i: store.info(i).state for i in ("R-1", "R-3", "R-6")} == {
            "R-1": "restored", "R-3": "erased", "R-6": "purged"}
    for path in (folder / "segments").iterdir():
        assert b"archived twice" not in path.read_bytes()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_an_old_catalog_on_a_read_only_folder_is_read_through_an_upgraded_copy(
    tmp_path: Path, version: str
) -> None:
    folder = old_store(tmp_path, version, "sealed")
    before = (folder / "catalog.db").read_bytes()
    with read_only(folder):
        with ArchiveStore.open(folder, key=KEY) as store:
            assert store.read_only
            assert as_read(store) == expected(version, "sealed")
            assert store.verify() == []
            with pytest.raises(StoreReadOnly):
                store.purge(["R-1"], AT, "dispose-job")
    assert (folder / "catalog.db").read_bytes() == before
    assert not [p for p in Path(tempfile.gettempdir()).glob("archivist-catalog-*")]


def test_an_old_unencrypted_store_is_sealed_after_its_upgrade(tmp_path: Path) -> None:
    """The unencrypted store's catalog also kept its hashes as hex text."""
    folder = old_store(tmp_path, "v1", "plain")
    assert set(magics(folder)) == {MAGIC}
    with ArchiveStore.open(folder, key=KEY) as store:
        assert store.reseal() > 0
        assert store.verify() == []
        assert as_read(store) == expected("v1", "plain")
    assert set(magics(folder)) == {SEALED_MAGIC}
