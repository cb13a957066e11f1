"""Make `store_v2_sealed/` and `store_v2_plain/`: archive stores as the catalog of one row per
record with its state as text (and each record's `created_at`) kept them, for the upgrade
tests: the same records and steps as `make_v1_stores.py`. Run with that version's
`archive_store` on the path (commit 4befd79):
`PYTHONPATH=<its checkout>:tests/data python tests/data/make_v2_stores.py`.
`expected_v2.json` beside them holds what that version read from them.
"""

from __future__ import annotations

import json

import make_v1_stores
from make_v1_stores import HERE, IDS, KEY

from archive_store import ArchiveStore


def expected(store: ArchiveStore) -> dict[str, object]:
    """As `make_v1_stores.expected`, each `info` with its record's hash (which this version's
    catalog no longer kept: `ArchiveStore.hashes` read it from the frames)."""
    out = make_v1_stores.expected(store)
    info = out["info"]
    assert isinstance(info, dict)
    for record_id, sha in store.hashes(IDS).items():
        info[record_id]["sha256"] = sha
    return out


def make(name: str, key: bytes | None) -> dict[str, object]:
    return make_v1_stores.make(name, key, read=expected, hex_text=False)


if __name__ == "__main__":
    (HERE / "expected_v2.json").write_text(json.dumps(
        {"sealed": make("store_v2_sealed", KEY), "plain": make("store_v2_plain", None)},
        indent=1, sort_keys=True, ensure_ascii=False,
    ) + "\n")
