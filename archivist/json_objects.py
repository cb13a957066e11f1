"""JSON objects whose keys are unique.

Python's decoder keeps the last of two equal keys (`{"customer_id": "A", "customer_id": "B"}`
reads as B): a file or request meaning something else to every other reader. Archivist refuses
such text rather than guess which value was meant.
"""

from __future__ import annotations

from typing import Any


class DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An `object_pairs_hook` for `json.loads` that refuses an object naming a key twice.

    :raises DuplicateKey: naming the first key that repeats
    """
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the key {key[:60]!r} appears twice in one object")
            seen.add(key)
    return value
