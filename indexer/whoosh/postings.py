"""Posting lists read a whole block at a time into numpy arrays, and a cache of decoded ones."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from collections.abc import Callable, Collection
from itertools import accumulate
from pickle import loads
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh.codec.whoosh3 import (
    WHOOSH3_HEADER_MAGIC,
    W3TermsReader,
)
from whoosh.reading import TermNotFound

from indexer.whoosh.lru import SizedLru

#
# Whoosh matchers cost ~20 us per posting in Python (scorer objects, per-document length column
# reads). For exact totals and facets every matching document is needed anyway, so queries are
# evaluated as numpy set algebra (indexer.whoosh.matchsets) over postings read here a whole block at
# a time, and BM25 is computed from cached per-document field lengths. A document's score is
# the sum of its matching terms' BM25 (as Whoosh's Or/And do), added in the same order as
# Whoosh would, so that equal documents get bit-equal scores. A phrase scores as BM25 of its
# own frequency.

Docs = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

NO_DOCS: Docs = np.empty(0, np.int64)
NO_SCORES: Floats = np.empty(0, np.float64)

# One posting block of a term: its document numbers, its values' source (the block's pickled
# data, unpickled only if a phrase needs its positions, or the values themselves), and whether
# that data is compressed.
Block = tuple[Docs, Any, bool]


_FLOAT_OP = np.dtype([("op", "u1"), ("v", ">f8")])
_ONE_WEIGHT = b"G" + struct.pack(">d", 1.0)


def _fast_block(b: bytes, n: int) -> tuple[int, bytes, bytes] | None:
    """Split a pickled posting block into its first id, id delta bytes and weight records.

    A block is ``pickle.dumps((id deltas, weights, values), 2)``
    (``whoosh.codec.whoosh3.W3PostingsWriter._write_block``). Unpickling it builds one bytes
    object per posting for the positions, which a term query never needs, so the frequent
    shape (the first id any size, then deltas under 256 as BININT1, weights as BINFLOATs,
    ``None`` or one float) is sliced here with bytes operations only: the deltas as one byte
    each, the weights as ``G`` + 8-byte big-endian double each. Any other shape returns None
    and the caller unpickles.
    """
    if n < 4 or b[:3] != b"\x80\x02(":
        return None
    op = b[3]
    if op == 0x4B:  # BININT1
        first, p = b[4], 5
    elif op == 0x4D:  # BININT2
        first, p = b[4] | b[5] << 8, 6
    elif op == 0x4A:  # BININT
        first, p = int.from_bytes(b[4:8], "little", signed=True), 8
    else:
        return None
    end = p + 2 * (n - 1)
    if b[p:end:2] != b"K" * (n - 1) or b[end : end + 2] != b"tq":
        return None
    w = end + 3  # after TUPLE and BINPUT
    kind = b[w : w + 1]
    if kind == b"N":
        weights = _ONE_WEIGHT * n
    elif kind == b"G":
        weights = b[w : w + 9] * n
    elif kind == b"(" and b[w + 1 : w + 1 + 9 * n : 9] == b"G" * n:
        weights = b[w + 1 : w + 1 + 9 * n]
    else:
        return None
    return first, b[p + 1 : end : 2], weights


def leaf_postings(
    leaf: Any, fieldname: str, btext: bytes, base: int, blocks: list[Block] | None
) -> tuple[Docs, Floats]:
    """Read a term's postings in one segment: document numbers (plus base) and weights.

    The term's whole posting list is read at once from its term info, deleted documents
    included (the caller masks them); each block is inflated only as far as its ids and weights
    and split with bytes operations, and the ids and weights of all blocks are then decoded by
    a few numpy calls. With ``blocks``, each block's ids and values source are kept there, for
    phrases.
    """
    terms = getattr(leaf, "_terms", None)
    if not isinstance(terms, W3TermsReader):
        if (fieldname, btext) not in leaf:
            return NO_DOCS, NO_SCORES
        return _matcher_postings(leaf.postings(fieldname, btext), base, blocks)
    try:
        info = terms.term_info(fieldname, btext)
    except TermNotFound:
        return NO_DOCS, NO_SCORES
    if info.is_inlined():
        inline_ids, inline_weights, inline_values = info.inlined_postings()
        ids = np.array(inline_ids, np.int64) + base
        if blocks is not None:
            blocks.append((ids, inline_values, False))
        return ids, np.array(inline_weights, np.float64)
    offset, extent = info.extent()
    # W3TermInfo.from_bytes leaves the extent's length as unpack_int's 1-tuple
    extent = extent[0] if isinstance(extent, tuple) else extent
    buf = terms._postfile.get(offset, extent)
    if buf[:4] != WHOOSH3_HEADER_MAGIC:
        return _matcher_postings(leaf.postings(fieldname, btext), base, blocks)
    reader = io.BytesIO(buf)
    pos = 4
    firsts: list[int] = []
    counts: list[int] = []
    fast: list[bool] = []
    deltas: list[bytes] = []
    weights: list[bytes] = []
    slow_deltas: list[Any] = []
    slow_weights: list[Floats] = []
    sources: list[tuple[Any, bool]] = []
    while True:
        length = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
        reader.seek(pos + 4)
        n, _maxid, _maxweight, compression, _minlen, _maxlen = pickle.load(reader)
        nextpos = pos + 4 + abs(length)
        raw = buf[reader.tell() : nextpos]
        got = None
        if compression:
            # ids and weights come first and take at most ~11 bytes a posting; the positions
            # after them are most of the block and only phrases inflate them
            b = zlib.decompressobj().decompress(raw, 11 * n + 16)
            got = _fast_block(b, n)
            if got is None:
                b = zlib.decompress(raw)
        else:
            b = raw
            got = _fast_block(b, n)
        if got is None:
            data = loads(b)
            firsts.append(data[0][0])
            slow_deltas.append(data[0][1:])
            w = data[1]
            slow_weights.append(
                np.ones(n)
                if w is None
                else np.full(n, float(w))
                if isinstance(w, (int, float))
                else np.array(w, np.float64)
            )
            sources.append((data[2], False))
        else:
            firsts.append(got[0])
            deltas.append(got[1])
            weights.append(got[2])
            sources.append((raw, bool(compression)))
        counts.append(n)
        fast.append(got is not None)
        if length < 0:
            break
        pos = nextpos
    ns = np.array(counts, np.int64)
    total = int(ns.sum())
    starts = np.zeros(len(ns), np.int64)
    np.cumsum(ns[:-1], out=starts[1:])
    inc = np.zeros(total, np.int64)
    rest = np.ones(total, np.bool_)
    rest[starts] = False
    fast_deltas = np.frombuffer(b"".join(deltas), np.uint8)
    fast_weights = np.frombuffer(b"".join(weights), _FLOAT_OP)["v"]
    if not slow_deltas:
        inc[rest] = fast_deltas
        wts = fast_weights.astype(np.float64)
    else:
        member = np.repeat(np.array(fast), ns)
        inc[rest & member] = fast_deltas
        inc[rest & ~member] = np.array([d for ds in slow_deltas for d in ds], np.int64)
        wts = np.empty(total, np.float64)
        wts[member] = fast_weights
        wts[~member] = np.concatenate(slow_weights)
    # within a block each id is the previous plus its delta; a block's first id is absolute
    rel = np.cumsum(inc)
    ids = rel + np.repeat(np.array(firsts, np.int64) + base - rel[starts], ns)
    if blocks is not None:
        for s, n, (source, compressed) in zip(starts.tolist(), counts, sources, strict=True):
            blocks.append((ids[s : s + n], source, compressed))
    return ids, wts


class PostingCache:
    """Decoded posting lists, per segment, the least recently used dropped first.

    Decoding a frequent word's postings (inflating hundreds of blocks) was most of the time of a
    query for it at 1,000,000 records, and agents search the same frequent words all day. Short
    lists are kept too: a query looks a term up in every segment of every shard, and at
    1,000,000 records those look-ups of lists of a few hundred postings (or none) cost as much
    as the long ones. Segments never change (deletions are masked at query time), so an entry
    stays valid for as long as its segment lives; entries of merged-away segments simply age
    out. Ids are kept relative to the segment as int32 and weights (term frequencies) as
    float32, both exact.
    """

    ENTRY_OVERHEAD = 320
    """Bytes an entry costs beyond its arrays (key, tuple, array headers), for the budget."""

    def __init__(self, budget_bytes: int, min_postings: int = 0) -> None:
        """:param min_postings: shorter lists are not kept."""
        self.min_postings = min_postings
        self._lru: SizedLru[tuple[npt.NDArray[np.int32], Any]] = SizedLru(
            budget_bytes, lambda e: int(e[0].nbytes + e[1].nbytes) + self.ENTRY_OVERHEAD
        )

    @property
    def used(self) -> int:
        """The bytes the kept lists take, by the budget's count."""
        return self._lru.used

    def get(self, key: tuple[Any, str, bytes], base: int) -> tuple[Docs, Floats] | None:
        """Return a cached posting list with ids shifted by ``base``, or None."""
        got = self._lru.get(key)
        if got is None:
            return None
        ids, weights = got
        if not len(ids):
            return NO_DOCS, NO_SCORES
        return ids.astype(np.int64) + base, weights.astype(np.float64)

    def put(self, key: tuple[Any, str, bytes], ids: Docs, weights: Floats, base: int) -> None:
        """Keep a posting list if it is long enough to be worth it."""
        if len(ids) >= self.min_postings:
            self._lru.put(key, ((ids - base).astype(np.int32), weights.astype(np.float32)))

    def forget(self, segids: Collection[Any]) -> None:
        """Drop the lists of segments that are gone (merged away, or their documents all
        deleted): they would otherwise hold their share of the budget until they age out."""
        self._lru.drop(lambda key: key[0] in segids)

    def clear(self) -> None:
        """Drop every entry."""
        self._lru.clear()


POSTING_CACHE = PostingCache(256 << 20)
"""The process's cache of decoded posting lists (256 MiB at most)."""


def cached_leaf_postings(
    leaf: Any, fieldname: str, btext: bytes, base: int, blocks: list[Block] | None
) -> tuple[Docs, Floats]:
    """:func:`leaf_postings` through :data:`POSTING_CACHE` (phrases, which need the blocks for
    positions, read the postings themselves)."""
    segment = leaf.segment() if hasattr(leaf, "segment") else None
    if blocks is not None or segment is None:
        return leaf_postings(leaf, fieldname, btext, base, blocks)
    key = (segment.segid, fieldname, btext)
    got = POSTING_CACHE.get(key, base)
    if got is None:
        got = leaf_postings(leaf, fieldname, btext, base, None)
        POSTING_CACHE.put(key, got[0], got[1], base)
    return got


def _matcher_postings(m: Any, base: int, blocks: list[Block] | None) -> tuple[Docs, Floats]:
    """Read postings through a Whoosh matcher, one at a time (codecs other than whoosh3)."""
    ids_list, w_list, values = [], [], []
    while m.is_active():
        ids_list.append(m.id() + base)
        w_list.append(m.weight())
        if blocks is not None:
            values.append(m.value())
        m.next()
    ids = np.array(ids_list, np.int64)
    if blocks is not None:
        blocks.append((ids, values, False))
    return ids, np.array(w_list, np.float64)


def _decode_positions(value: bytes) -> list[int]:
    # A Positions value is a 4-byte count, then a pickled list of deltas
    # (whoosh.formats.Positions.encode); inlined, ~2x faster than decode_positions.
    return list(accumulate(loads(value[4:] + b".")))


def position_keys(
    values: list[bytes], docs: Docs, decode: Callable[[bytes], list[int]] | None
) -> Docs:
    """Return ``doc << 32 | position`` for every position of the given Positions values, sorted.

    The frequent shape (every delta under 256, so one BININT1 each) is decoded for all values
    at once with numpy; other values one at a time.
    """
    if not values:
        return NO_DOCS
    dd: list[Docs] = []
    pp: list[Docs] = []
    if decode is not None:
        slow = list(range(len(values)))
    else:
        lens = np.fromiter(map(len, values), np.int64, len(values))
        # padded so that the 8-byte header read below stays inside even for a short value
        buf = np.frombuffer(b"".join(values) + bytes(8), np.uint8)
        starts = np.zeros(len(values), np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        head = buf[starts[:, None] + np.arange(8)].astype(np.int64)
        counts = head[:, 0] << 24 | head[:, 1] << 16 | head[:, 2] << 8 | head[:, 3]
        # all-BININT1 length: count, "\x80\x02]q\x00", "K d" each, "a" (one) or "(" ... "e",
        # then STOP
        ok = (
            (lens == 11 + 2 * counts + (counts > 1))
            & (counts > 0)
            & (head[:, 4] == 0x80)
            & (head[:, 5] == 2)
            & (head[:, 6] == 0x5D)
            & (head[:, 7] == 0x71)
        )
        okc = counts[ok]
        ok_docs = docs[ok]
        total = int(okc.sum())
        first_op = starts[ok] + 9 + (okc > 1)
        group = np.repeat(np.arange(len(okc)), okc)
        offsets = np.zeros(len(okc), np.int64)
        np.cumsum(okc[:-1], out=offsets[1:])
        ops = first_op[group] + 2 * (np.arange(total) - offsets[group])
        bad_groups = np.unique(group[buf[ops] != 0x4B])
        if len(bad_groups):
            ok_idx = np.flatnonzero(ok)
            ok[ok_idx[bad_groups]] = False
            keep = ~np.isin(group, bad_groups)
            ops, group = ops[keep], group[keep]
            okc = okc.copy()
            okc[bad_groups] = 0
            offsets = np.zeros(len(okc), np.int64)
            np.cumsum(okc[:-1], out=offsets[1:])
        cs = np.cumsum(buf[ops + 1], dtype=np.int64)
        # positions restart at each value: subtract the running sum before its first delta
        before = np.zeros(len(okc), np.int64)
        nonempty = okc > 0
        before[nonempty] = cs[offsets[nonempty]] - buf[ops[offsets[nonempty]] + 1]
        positions = cs - before[group]
        dd.append(ok_docs[group])
        pp.append(positions)
        slow = np.flatnonzero(~ok).tolist()
        decode = _decode_positions
    for i in slow:
        ps = decode(values[i])
        dd.append(np.full(len(ps), docs[i], np.int64))
        pp.append(np.array(ps, np.int64))
    keys = np.concatenate(dd) << 32 | np.concatenate(pp)
    keys.sort()
    return keys
