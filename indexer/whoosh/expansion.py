"""The terms a prefix expands to in a shard, read per segment and kept while the segment lives.

A prefix query reads each segment's term table from the prefix on; at 1,000,000 records a shard
has a dozen segments or more, and Whoosh's merged iteration over them took ~15 ms per prefix,
twice per query (the cost check and the evaluation). Segments never change, so the terms found
in one stay valid for as long as it lives.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from itertools import islice
from typing import Any

from indexer.whoosh.lru import SizedLru

_SEGMENT_TERMS: SizedLru[tuple[bytes, ...]] = SizedLru(
    16 << 20, lambda terms: sum(len(t) + 40 for t in terms) + 100
)


def prefix_terms(reader: Any, fieldname: str, prefix: str | bytes, limit: int) -> list[bytes]:
    """Return the sorted terms of a field that start with ``prefix``, over a shard's segments.

    :param reader: the shard's Whoosh reader.
    :param limit: each segment is read for at most ``limit + 1`` terms: a result longer than
        ``limit`` means "too many" and is not complete.
    """
    bprefix = prefix.encode("utf-8") if isinstance(prefix, str) else prefix
    found: set[bytes] = set()
    for leaf, _base in reader.leaf_readers():
        found.update(_segment_terms(leaf, fieldname, bprefix, limit))
    return sorted(found)


def forget_segments(segids: Collection[Any]) -> None:
    """Drop the terms kept for segments that are gone."""
    _SEGMENT_TERMS.drop(lambda key: key[0] in segids)


def _segment_terms(leaf: Any, fieldname: str, prefix: bytes, limit: int) -> Sequence[bytes]:
    def read() -> tuple[bytes, ...]:
        return tuple(islice(leaf.expand_prefix(fieldname, prefix), limit + 1))

    segment = leaf.segment() if hasattr(leaf, "segment") else None
    if segment is None:
        return read()
    return _SEGMENT_TERMS.get_or_make((segment.segid, fieldname, prefix, limit), read)
