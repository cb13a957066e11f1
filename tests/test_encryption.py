"""Encryption at rest: the key, what a wrong key does, old stores, and the dictionary."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from archive_store import ArchiveItem, ArchiveStore, compression
from archive_store.crypto import KEY_ENV, KeyMissing, WrongKey, make_key
from archive_store.segment import MAGIC, SEALED_MAGIC, iter_frames
from archivist.demo_data import generate_records
from indexer.services import Services
from tests.conftest import write_jsonl
from tests.test_cli import archivist

AT = datetime(2026, 1, 1, tzinfo=UTC)
MARKER = "plinthovarque"


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def item(record_id: str, customer_id: str | None = "C1", body: str = "") -> ArchiveItem:
    record = {
        "id": record_id, "kind": "note", "category": "support", "customer_id": customer_id,
        "owner": None, "subject": "s", "body": body or f"{MARKER} {record_id}", "status": "closed",
        "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-02T00:00:00Z",
    }
    return ArchiveItem(record_id, record, "support", customer_id, datetime(2020, 1, 2, tzinfo=UTC))


def magics(store_dir: Path) -> list[bytes]:
    out = []
    for path in sorted((store_dir / "segments").iterdir()):
        with path.open("rb") as f:
            out.extend(frame[:4] for _, frame in iter_frames(f))
    return out


def test_init_makes_the_databases_and_key_of_an_earlier_version_private(config_path: Path) -> None:
    """An earlier version made its databases with the umask's mode (0644 here)."""
    assert archivist("init", "--config", str(config_path)).returncode == 0
    data = config_path.parent / "data"
    databases = [data / "active.db", data / "archive" / "catalog.db",
                 config_path.parent / "archive.key"]  # and a key file copied with 0644
    for database in databases:
        database.chmod(0o644)

    assert archivist("init", "--config", str(config_path)).returncode == 0

    for database in databases:
        assert stat.S_IMODE(database.stat().st_mode) == 0o600, database


def test_a_command_warns_of_a_key_file_others_may_read(config_path: Path) -> None:
    assert archivist("init", "--config", str(config_path)).returncode == 0
    key_file = config_path.parent / "archive.key"
    quiet = archivist("stats", "--config", str(config_path))
    assert quiet.returncode == 0 and "key file" not in quiet.stderr

    key_file.chmod(0o644)  # copied without its mode, or mounted so
    shared = archivist("stats", "--config", str(config_path))

    assert shared.returncode == 0, shared.stderr
    warning = f"warning: archive key file {key_file} may be read by other users (mode 0644)"
    assert shared.stderr.startswith(warning), shared.stderr  # as every other warning reads
    assert f"chmod 600 {key_file}" in shared.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o644  # a command that reads it: unchanged


def test_init_makes_a_private_key_file_and_no_text_reaches_the_archive(
    config_path: Path, tmp_path: Path, make_record: Any
) -> None:
    assert archivist("init", "--config", str(config_path)).returncode == 0
    key_file = config_path.parent / "archive.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    # the databases too: token hashes and the audit log; customer ids and sealed data keys
    data = config_path.parent / "data"
    for database in (data / "active.db", data / "archive" / "catalog.db"):
        assert stat.S_IMODE(database.stat().st_mode) == 0o600, database
    records = [make_record(id=f"K-{i}", body=f"{MARKER} li.wei@example.com {i}")
               for i in range(30)]
    archivist("import", str(write_jsonl(tmp_path / "in.jsonl", records)),
              "--config", str(config_path))
    assert archivist("archive", "--as-of", "2026-01-01", "--config", str(config_path)
                     ).returncode == 0
    archive = config_path.parent / "data" / "archive"
    for path in archive.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert MARKER.encode() not in data and b"li.wei@example.com" not in data, path
    assert set(magics(archive)) == {SEALED_MAGIC}


def test_wrong_key_is_one_line_and_writes_nothing(
    config_path: Path, tmp_path: Path, make_record: Any
) -> None:
    archivist("init", "--config", str(config_path))
    archivist("import", str(write_jsonl(tmp_path / "a.jsonl", [make_record(id="W-1")])),
              "--config", str(config_path))
    archivist("archive", "--as-of", "2026-01-01", "--config", str(config_path))
    archivist("import", str(write_jsonl(tmp_path / "b.jsonl", [make_record(id="W-2")])),
              "--config", str(config_path))
    data = config_path.parent / "data"
    before = digest(data / "archive") | {"active.db": digest(data)["active.db"]}
    wrong = {KEY_ENV: base64.b64encode(make_key()).decode()}

    result = archivist("archive", "--as-of", "2026-01-01", "--config", str(config_path), env=wrong)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "archive key does not open" in result.stderr
    assert digest(data / "archive") | {"active.db": digest(data)["active.db"]} == before
    search = archivist("stats", "--config", str(config_path), env=wrong)
    assert search.returncode == 1 and search.stdout == ""


def test_missing_key_file_is_a_clear_error(config: Any, make_record: Any) -> None:
    with Services.open(config, create=True):
        pass
    config.key_file.rename(config.key_file.with_name("elsewhere.key"))
    with pytest.raises(KeyMissing, match="archivist init"):
        Services.open(config)


def test_missing_key_of_an_encrypted_archive_is_not_replaced_by_init(
    config_path: Path, tmp_path: Path, make_record: Any
) -> None:
    """`init` makes a key for a new archive only: for one already sealed, a new key would not
    open it, and every later command would say the key is wrong instead of missing."""
    archivist("init", "--config", str(config_path))
    archivist("import", str(write_jsonl(tmp_path / "a.jsonl", [make_record(id="W-1")])),
              "--config", str(config_path))
    archivist("archive", "--as-of", "2026-01-01", "--config", str(config_path))
    key_file = config_path.parent / "archive.key"
    key_file.rename(tmp_path / "kept-safe.key")

    for command in (("init",), ("stats",)):
        result = archivist(*command, "--config", str(config_path))
        assert result.returncode == 1, command
        assert result.stderr.count("\n") == 1 and "put the key back" in result.stderr
        assert not key_file.exists()
    (tmp_path / "kept-safe.key").rename(key_file)
    assert archivist("stats", "--config", str(config_path)).returncode == 0


def test_store_written_with_a_key_refuses_none_and_another(tmp_path: Path) -> None:
    key = make_key()
    with ArchiveStore.open(tmp_path / "a", key=key) as store:
        store.archive_batch([item("X-1")], AT, "t")
    with pytest.raises(KeyMissing):
        ArchiveStore.open(tmp_path / "a")
    with pytest.raises(WrongKey):
        ArchiveStore.open(tmp_path / "a", key=make_key())
    with ArchiveStore.open(tmp_path / "a", key=key) as store:
        assert store.get("X-1")["body"].startswith(MARKER)


def test_an_old_unencrypted_store_keeps_working_and_seals_new_frames(tmp_path: Path) -> None:
    with ArchiveStore.open(tmp_path / "a") as old:  # as stores were before encryption
        old.archive_batch([item("OLD-1"), item("OLD-2", customer_id=None)], AT, "t")
    assert magics(tmp_path / "a") == [MAGIC, MAGIC]
    key = make_key()

    with ArchiveStore.open(tmp_path / "a", key=key) as store:
        store.archive_batch([item("NEW-1")], AT, "t")
        store.clear_pending(["OLD-1"])
        store.begin_restore("OLD-1")
        store.complete_restore("OLD-1", AT, "t")
        assert store.get("OLD-2")["body"] == f"{MARKER} OLD-2"
        assert store.get("NEW-1")["body"] == f"{MARKER} NEW-1"
        assert store.verify() == []
        assert magics(tmp_path / "a") == [MAGIC, MAGIC, SEALED_MAGIC, SEALED_MAGIC]

        assert store.reseal() == 2
        assert set(magics(tmp_path / "a")) == {SEALED_MAGIC}
        assert store.verify() == []
        assert store.get("OLD-1")["body"] == f"{MARKER} OLD-1"
    for path in (tmp_path / "a" / "segments").iterdir():
        assert MARKER.encode() not in path.read_bytes()


def test_verify_names_a_damaged_sealed_record(tmp_path: Path) -> None:
    with ArchiveStore.open(tmp_path / "a", key=make_key()) as store:
        store.archive_batch([item(f"D-{i}") for i in range(5)], AT, "t")
        (path,) = (tmp_path / "a" / "segments").iterdir()
        entries = {e.record_id: e for e in store.archive_batch([item("D-5")], AT, "t")}
        data = bytearray(path.read_bytes())
        entry = entries["D-5"]
        data[entry.offset + entry.length - 3] ^= 0x40
        path.write_bytes(bytes(data))
        assert {p.record_id for p in store.verify()} == {"D-5"}


def test_a_dictionary_is_trained_and_compresses_records_below_the_raw_json(
    tmp_path: Path,
) -> None:
    records = list(generate_records(1500, seed=7))
    items = [
        ArchiveItem(r["id"], r, r["category"], r["customer_id"],
                    datetime.fromisoformat(r["updated_at"]))
        for r in records
    ]
    raw = sum(len(json.dumps(r, ensure_ascii=False).encode()) + 1 for r in records)
    key = make_key()
    with ArchiveStore.open(tmp_path / "a", key=key) as store:
        store.archive_batch(items[:1000], AT, "t")
        store.archive_batch(items[1000:], AT, "t")
        size = sum(p.stat().st_size for p in (tmp_path / "a" / "segments").iterdir())
        assert size < 0.5 * raw
        assert store.get(records[1234]["id"]) == records[1234]
        assert store.verify() == []
    with ArchiveStore.open(tmp_path / "a", key=key) as reopened:
        assert reopened.get(records[5]["id"]) == records[5]


def test_the_dictionary_learns_only_runs_three_customers_share() -> None:
    common = b"<common-envelope-part>"
    samples = [
        ("c-1", b"alice@example.com" + common + b"Wanda Marker"),
        ("c-1", b"alice@example.com" + common),  # the same customer twice counts once
        ("c-2", b"bob@example.net" + common + b"alice@example.com"),
        ("c-3", common + b"|" + common),
        ("c-4", b"xx"),  # shorter than a window: nothing to keep
    ]
    runs = compression.shared_runs(samples)
    assert runs == [common, common, common, common, common]
    assert not any(b"alice" in run or b"Marker" in run for run in runs)


def test_serve_refuses_to_start_with_a_wrong_key(config_path: Path) -> None:
    archivist("init", "--config", str(config_path))
    wrong = {KEY_ENV: base64.b64encode(make_key()).decode()}
    result = archivist("serve", "--port", "0", "--config", str(config_path), env=wrong)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the archive key does not open this archive (wrong key file or "
        "ARCHIVIST_ARCHIVE_KEY); nothing was read or written"
    ]
