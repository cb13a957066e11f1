"""JSON objects whose keys are unique, and numbers kept as written.

Python's decoder keeps the last of two equal keys (`{"customer_id": "A", "customer_id": "B"}`
reads as B): a file or request meaning something else to every other reader. It also reads a
number with a fraction or exponent as a double, silently rounding one with more digits than a
double holds. Archivist refuses such text rather than guess which value was meant, or keep
another value than the one written.
"""

from __future__ import annotations

from decimal import Decimal
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


class InexactNumber(ValueError):
    """A JSON number a double cannot hold as written (too many digits, too large or small)."""


def exact_float(text: str) -> float:
    """A `parse_float` hook for `json.loads` that refuses a number a double would change.

    `1.5`, `1E+2` and `0.1` are kept (their double reads back as the same number);
    `3.14159265358979323846` (more than 17 significant digits), `1e400` and `1e-400` are not.
    Integers are not floats: Python keeps those exactly, however long.

    :raises InexactNumber: naming the number and why
    """
    value = float(text)
    if Decimal(repr(value)) == Decimal(text):
        return value
    shown = text if len(text) <= 40 else text[:37] + "..."
    if value in (float("inf"), float("-inf")):
        why = "is too large for a JSON number kept as a double (about 1.8e308 at most)"
    elif value == 0:
        why = "is too small for a JSON number kept as a double (about 5e-324 at least)"
    else:
        why = "has more digits than a double keeps (17 significant digits)"
    raise InexactNumber(f"the number {shown} {why}; write it as a string to keep it exactly")
