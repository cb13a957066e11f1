"""Per-shard column caches and collection statistics summed over all shards (BM25)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh.codec.whoosh3 import (
    LENGTHS_COLUMN,
    _lenfield,
)
from whoosh.searching import Searcher
from whoosh.util.numeric import byte_to_length

from indexer.search.types import DATE_FIELDS
from indexer.whoosh.columns import byte_strings, live_docs, numeric_values, ordinals
from indexer.whoosh.expansion import forget_segments
from indexer.whoosh.lru import SizedLru
from indexer.whoosh.postings import (
    NO_DOCS,
    NO_SCORES,
    POSTING_CACHE,
    Block,
    Docs,
    Floats,
    cached_leaf_postings,
)
from indexer.whoosh.schema import date_column


class GlobalStats:
    """Collection statistics summed over every shard, computed lazily per term.

    They count live documents only, as the index would hold them if it were built afresh:
    documents deleted (restored, disposed of, erased) but not yet merged away must not weigh
    in, or the same archive would score differently before and after a merge, a rebuild or a
    recovery from a backup.
    """

    def __init__(self, caches: Sequence[ShardCache]) -> None:
        self._caches = caches
        self.doc_count = sum(len(c.live_docs) for c in caches) or 1
        self._avgfl: dict[str, float] = {}
        self._df: dict[tuple[str, bytes], int] = {}

    def avg_field_length(self, fieldname: str) -> float:
        """Return the average length of a field over all shards' live documents."""
        v = self._avgfl.get(fieldname)
        if v is None:
            total = sum(c.live_length_total(fieldname) for c in self._caches)
            v = self._avgfl[fieldname] = (total / self.doc_count) or 1.0
        return v

    def idf(self, fieldname: str, btext: bytes) -> float:
        """Return the BM25 idf of a term over all shards' live documents."""
        key = (fieldname, btext)
        df = self._df.get(key)
        if df is None:
            df = self._df[key] = sum(
                c.live_doc_frequency(fieldname, btext) for c in self._caches
            )
        n = self.doc_count
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


_SEGMENT_DF: SizedLru[int] = SizedLru(200_000)


def _segment_doc_frequency(leaf: Any, fieldname: str, btext: bytes) -> int:
    """A term's document frequency in one segment (deleted documents included, as Whoosh
    counts them), kept per segment: a segment never changes, and every restore or indexing
    batch makes a new snapshot whose statistics would otherwise look each term up again in
    every segment of every shard."""
    segment = leaf.segment() if hasattr(leaf, "segment") else None
    if segment is None:
        return int(leaf.doc_frequency(fieldname, btext))
    return _SEGMENT_DF.get_or_make(
        (segment.segid, fieldname, btext), lambda: int(leaf.doc_frequency(fieldname, btext))
    )


# --- per-shard caches -------------------------------------------------------------------------

TERM_CACHE: SizedLru[tuple[npt.NDArray[Any], ...]] = SizedLru(
    192 << 20, lambda arrays: sum(a.nbytes for a in arrays) + 320
)
"""A term's live documents in a shard, their weights, and their BM25 scores, by shard cache.

A frequent word's postings sit in some ninety segments at 1,000,000 records: gathering them,
dropping deleted documents and scoring them was a third of a query's time, every time. Entries
are keyed by the :class:`ShardCache` they were computed for (new at every change of its
shard), so an entry is never stale: the next cache of the shard starts from them (see
``ShardCache._inherited``), and entries of replaced caches age out.
"""
_CACHE_NUMBERS = itertools.count()
_MAX_ANCESTORS = 8
_MAX_KEPT_FREQUENCIES = 100_000

BM25_K1 = 1.2
BM25_B = 0.75
_LENGTHS = np.array([byte_to_length(b) for b in range(256)], np.float64)  # byte -> field length
_LAST_YEAR = 9999  # a record's timestamps are years 1 to 9999, as Python's datetime
# The first microsecond of every year 1 to 9999 (epoch microseconds): the number of them at or
# before a time is its year.
_YEAR_STARTS_US = (
    np.arange("0001", "10000", dtype="datetime64[Y]").astype("datetime64[us]").astype(np.int64)
)


def _utc_years(micros: npt.NDArray[np.int64]) -> npt.NDArray[np.int16]:
    """Return the UTC years of epoch microseconds, over the whole range of a datetime, so that
    a timestamp far in the past or future is counted in its own year."""
    years = np.searchsorted(_YEAR_STARTS_US, micros, side="right")
    return np.clip(years, 1, _LAST_YEAR).astype(np.int16)


class ShardCache:
    """Per-document values of one shard's searcher, read once and shared by every query.

    Values are numpy arrays indexed by document number, so that filters, facets and sorting
    run over a query's matches without Python work per match.
    """

    cat_names: list[str]
    cat_ord: npt.NDArray[np.int32]
    kind_names: list[str]
    kind_ord: npt.NDArray[np.int32]
    dates: dict[str, npt.NDArray[np.int64]]
    _ids: npt.NDArray[np.bytes_] | None
    _facet_codes: dict[str, tuple[npt.NDArray[np.int32], tuple[int, int, int], list[str]]]
    _lengths: dict[str, npt.NDArray[np.float64]]
    _norms: dict[tuple[str, float], Floats]
    _parts: dict[tuple[Any, int], _SegmentColumns]

    def __init__(self, searcher: Searcher, previous: ShardCache | None = None) -> None:
        """Read the shard's columns, taking every unchanged segment's from ``previous``.

        A restore or a disposal only marks documents deleted in the same segments, and an
        indexing batch adds a small segment (merging only other small ones): reading every
        column of the shard again for that would cost each search after it hundreds of
        milliseconds. Columns are read per segment and kept for as long as the segment lives.

        :param previous: the cache of the shard's former searcher, if any.
        """
        reader = searcher.reader()
        self.searcher = searcher
        self.number = next(_CACHE_NUMBERS)  # names this cache's entries in TERM_CACHE
        # Former caches whose first segments are this one's first (an indexing batch adds
        # segments after them, a merge replaces the last ones), newest first, each with the
        # documents numbered alike (0 up to that): their TERM_CACHE entries for those
        # documents, less the ones deleted since, are the start of this cache's.
        self._ancestors: tuple[tuple[int, int], ...] = ()
        self.segments = _segments_of(reader)
        self.size = reader.doc_count_all()
        # document frequencies (deleted documents included), valid while the segments are
        # the same
        self._df: dict[tuple[str, bytes], int] = {}
        self._live_length_totals: dict[str, float] = {}
        self.live_docs: Docs = live_docs(reader)
        # None when nothing is deleted (the usual case): no mask to apply.
        self.live_mask: npt.NDArray[np.bool_] | None = None
        if len(self.live_docs) != self.size:
            self.live_mask = np.zeros(self.size, np.bool_)
            self.live_mask[self.live_docs] = True
        # What depends on the live documents is computed afresh in any case (date orders from
        # the previous ones, when the previous segments are all still here).
        self._orders: dict[str, tuple[Docs, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        self._former_orders: dict[str, Docs] = {}
        self._former_size = 0  # the documents the former orders cover: 0 up to this
        self._all_facets: dict[str, dict[str, dict[str, int]]] = {}
        kept = previous._parts if previous is not None else {}
        self._parts = {}
        for leaf, key in zip(_leaves(reader), self.segments, strict=True):
            part = kept.get(key)
            if part is None:
                part = _SegmentColumns(leaf)
            else:
                part.leaf = leaf  # the former searcher's readers may be closed
            self._parts[key] = part
        if previous is not None and previous.segments == self.segments[: len(previous.segments)]:
            # The same first segments (some documents newly deleted), maybe new ones after
            # them: the previous date orders only need the new documents merged in.
            self._former_size = previous.size
            self._former_orders = {
                **(previous._former_orders if previous._former_size == previous.size else {}),
                **{f: got[0] for f, got in previous._orders.items()},
            }
        alike = _alike_documents(previous.segments, self.segments) if previous else 0
        if previous is not None and alike:
            older = ((n, min(c, alike)) for n, c in previous._ancestors)
            self._ancestors = ((previous.number, alike), *older)[:_MAX_ANCESTORS]
        if previous is not None:
            _forget_replaced(previous, self)
        if previous is not None and previous.segments == self.segments:
            # Same documents, some newly deleted: per-document values are unchanged.
            self._df = previous._df
            self.cat_names, self.cat_ord = previous.cat_names, previous.cat_ord
            self.kind_names, self.kind_ord = previous.kind_names, previous.kind_ord
            self.dates = previous.dates
            self._ids = previous._ids
            self._facet_codes = previous._facet_codes
            self._lengths = previous._lengths
            self._norms = previous._norms
            return
        parts = list(self._parts.values())
        self.cat_names, self.cat_ord = _join_ordinals([p.category for p in parts])
        self.kind_names, self.kind_ord = _join_ordinals([p.kind for p in parts])
        self.dates = {f: _join([p.dates[f] for p in parts], np.int64) for f in DATE_FIELDS}
        self._ids = None
        self._facet_codes = {}
        self._lengths = {}
        self._norms = {}

    def lengths(self, fieldname: str) -> npt.NDArray[np.float64]:
        """Return the length of a text field for every document number."""
        got = self._lengths.get(fieldname)
        if got is None:
            got = _join([p.lengths(fieldname) for p in self._parts.values()], np.float64)
            self._lengths[fieldname] = got
        return got

    def norms(self, fieldname: str, avgfl: float) -> Floats:
        """Return BM25's length normalisation ``k1 * (1 - b + b * len / avgfl)`` per document."""
        key = (fieldname, avgfl)
        got = self._norms.get(key)
        if got is None:
            a, b = BM25_K1 * (1 - BM25_B), BM25_K1 * BM25_B / avgfl
            got = a + b * self.lengths(fieldname)
            self._norms = {key: got, **{k: v for k, v in self._norms.items() if k[0] != fieldname}}
        return got

    def doc_frequency(self, fieldname: str, btext: bytes) -> int:
        """Return how many of the shard's documents hold a term, deleted ones included (as
        Whoosh counts), kept while the shard's segments stay the same: statistics summed
        over the shards then look again only at the shards that changed."""
        key = (fieldname, btext)
        got = self._df.get(key)
        if got is None:
            got = sum(
                _segment_doc_frequency(leaf, fieldname, btext)
                for leaf, _base in self.searcher.reader().leaf_readers()
            )
            if len(self._df) >= _MAX_KEPT_FREQUENCIES:
                self._df.clear()
            self._df[key] = got
        return got

    def live_doc_frequency(self, fieldname: str, btext: bytes) -> int:
        """Return how many of the shard's live documents hold a term."""
        if self.live_mask is None:  # nothing deleted: the terms' own counts
            return self.doc_frequency(fieldname, btext)
        return len(self.live_postings(fieldname, btext)[0])

    def live_length_total(self, fieldname: str) -> float:
        """Return the summed length of a text field over the shard's live documents.

        From the per-document lengths (as BM25 normalises each document), whole numbers: the
        sum is exact in any order, so a rebuilt index sums to the same.
        """
        got = self._live_length_totals.get(fieldname)
        if got is None:
            lengths = self.lengths(fieldname)
            live = lengths if self.live_mask is None else lengths[self.live_docs]
            got = self._live_length_totals[fieldname] = float(live.sum())
        return got

    def live_postings(self, fieldname: str, btext: bytes) -> tuple[Docs, Floats]:
        """Return a term's live documents in this shard and their weights (term frequencies),
        kept in :data:`TERM_CACHE`."""
        return self.term_postings(
            fieldname, btext, lambda start: self.read_postings(fieldname, btext, None, start)
        )

    def read_postings(
        self, fieldname: str, btext: bytes, blocks: list[Block] | None, start: int = 0
    ) -> tuple[Docs, Floats]:
        """Return a term's live documents in this shard and their weights, read from its
        segments.

        :param blocks: where to also keep the postings' blocks (for positions), if anywhere
        :param start: read only the segments from this document number on.
        """
        ids_parts: list[Docs] = []
        w_parts: list[Floats] = []
        for leaf, base in self.searcher.reader().leaf_readers():
            if base < start:
                continue
            lids, lw = cached_leaf_postings(leaf, fieldname, btext, base, blocks)
            if len(lids):
                ids_parts.append(lids)
                w_parts.append(lw)
        if not ids_parts:
            return NO_DOCS, NO_SCORES
        ids = ids_parts[0] if len(ids_parts) == 1 else np.concatenate(ids_parts)
        weights = w_parts[0] if len(w_parts) == 1 else np.concatenate(w_parts)
        if self.live_mask is not None:
            live = self.live_mask[ids]
            ids, weights = ids[live], weights[live]
        return ids, weights

    def term_postings(
        self, fieldname: str, btext: bytes, read: Callable[[int], tuple[Docs, Floats]]
    ) -> tuple[Docs, Floats]:
        """Return a term's live documents and weights, from :data:`TERM_CACHE` or ``read``.

        The arrays are shared by every query and so made read-only.

        :param read: reads the live postings of the documents from a document number on.
        """
        got = TERM_CACHE.get_or_make(
            (self.number, fieldname, btext), lambda: self._gather(fieldname, btext, read)
        )
        return got[0], got[1]

    def _gather(
        self, fieldname: str, btext: bytes, read: Callable[[int], tuple[Docs, Floats]]
    ) -> tuple[npt.NDArray[Any], ...]:
        key = (fieldname, btext)
        inherited = self._inherited(key, key, complete=False)
        if inherited is None:
            return _frozen(read(0))
        (ids, weights), covered = inherited
        if covered < self.size:  # and the documents of the segments added since
            new_ids, new_weights = read(covered)
            ids = np.concatenate([ids, new_ids])
            weights = np.concatenate([weights, new_weights])
        return _frozen((ids, weights))

    def term_scores(
        self, fieldname: str, btext: bytes, inputs: tuple[float, ...], score: Callable[[], Floats]
    ) -> Floats:
        """Return a term's scores, from :data:`TERM_CACHE` or ``score()``.

        :param inputs: what the scores depend on besides the term (idf, average length).
        """
        key = ("scores", fieldname, btext, *inputs)

        def make() -> tuple[npt.NDArray[Any], ...]:
            inherited = self._inherited((fieldname, btext), key, complete=True)
            return _frozen(inherited[0] if inherited is not None else (score(),))

        return TERM_CACHE.get_or_make((self.number, *key), make)[0]

    def _inherited(
        self, postings_key: tuple[Any, ...], key: tuple[Any, ...], *, complete: bool
    ) -> tuple[tuple[npt.NDArray[Any], ...], int] | None:
        """Return a former cache's entry for the documents numbered alike, less the ones
        deleted since, and how many documents that covers (from 0; the later ones are in
        segments added since).

        :param complete: only from a former cache that covers every document.
        """
        for number, covered in self._ancestors:
            if complete and covered < self.size:
                continue
            postings = TERM_CACHE.get((number, *postings_key))
            entry = TERM_CACHE.get((number, *key))
            if postings is not None and entry is not None:
                ids = postings[0][: np.searchsorted(postings[0], covered)]
                if self.live_mask is None:  # nothing deleted
                    return tuple(a[: len(ids)] for a in entry), covered
                keep = self.live_mask[ids]
                return tuple(a[: len(ids)][keep] for a in entry), covered
        return None

    def record_id(self, docnum: int) -> str:
        """Return the record id of a document number."""
        value: bytes = self.ids()[docnum]
        return value.decode("utf-8")

    def ids(self) -> npt.NDArray[np.bytes_]:
        """Return every document's record id, UTF-8 encoded, by document number."""
        if self._ids is None:
            self._ids = _join([p.ids() for p in self._parts.values()], bytes)
        return self._ids

    def smallest_ids(self, docs: Docs, count: int) -> npt.NDArray[np.intp]:
        """Return the positions in ``docs`` (sorted document numbers) of the ``count``
        documents with the smallest record ids, in id order.

        Comparing byte strings is slow, and a page often has to pick among thousands of tied
        scores: in each segment the candidates are picked by the segment's integer id ranks,
        and only those few are compared as strings.
        """
        candidates = []
        start = 0
        for part in self._parts.values():
            end = start + part.size
            lo, hi = np.searchsorted(docs, [start, end])
            if hi - lo > count:
                local = part.id_ranks()[docs[lo:hi] - start]
                candidates.append(lo + np.argpartition(local, count - 1)[:count])
            elif hi > lo:
                candidates.append(np.arange(lo, hi))
            start = end
        if not candidates:
            return np.zeros(0, np.intp)
        picked = np.concatenate(candidates)
        chosen: npt.NDArray[np.intp] = picked[np.argsort(self.ids()[docs[picked]])[:count]]
        return chosen

    def facet_codes(
        self, date_field: str
    ) -> tuple[npt.NDArray[np.int32], tuple[int, int, int], list[str]]:
        """Return each document's category, kind and year as one number, so that one bincount
        counts all three facets; with the shape of those counts and the years' names."""
        got = self._facet_codes.get(date_field)
        if got is None:
            year_of = _join([p.year_of(date_field) for p in self._parts.values()], np.int16)
            present = np.flatnonzero(np.bincount(year_of, minlength=1))
            number = np.zeros(_LAST_YEAR + 1, np.int32)
            number[present] = np.arange(len(present), dtype=np.int32)
            years = number[year_of]
            shape = (len(self.cat_names), len(self.kind_names), len(present))
            codes = (self.cat_ord.astype(np.int32) * shape[1] + self.kind_ord) * shape[2]
            codes += years.reshape(-1).astype(np.int32)
            # four digits, as in the records' own timestamps (year 1 is "0001")
            names = [f"{int(y):04d}" for y in present.tolist()]
            got = self._facet_codes[date_field] = (codes, shape, names)
        return got

    def order(self, date_field: str) -> tuple[Docs, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return live documents sorted by (date, id), their dates in that order, and ranks."""
        got = self._orders.get(date_field)
        if got is None:
            dates = self.dates[date_field]
            former = self._former_orders.pop(date_field, None)
            if former is not None:  # the same documents, fewer of them live, maybe new ones
                order = former if self.live_mask is None else former[self.live_mask[former]]
                if self._former_size < self.size:
                    new = self.live_docs[self.live_docs >= self._former_size]
                    order = _merge_orders(
                        order, _date_id_order(new, dates[new], self.ids()), dates, self.ids()
                    )
            else:
                order = _date_id_order(self.live_docs, dates[self.live_docs], self.ids())
            rank = np.full(self.size, -1, np.int64)
            rank[order] = np.arange(len(order))
            got = self._orders[date_field] = (order, dates[order], rank)
        return got

    def facets(self, docs: Docs | None, date_field: str) -> dict[str, Counter[str]]:
        """Count category, kind and year over documents (None: every live document)."""
        if docs is None:
            cached = self._all_facets.get(date_field)
            if cached is None:
                counts = self.facets(self.live_docs, date_field)
                cached = {k: dict(v) for k, v in counts.items()}
                self._all_facets[date_field] = cached
            return {k: Counter(v) for k, v in cached.items()}
        codes, shape, year_names = self.facet_codes(date_field)
        table = np.bincount(codes[docs], minlength=shape[0] * shape[1] * shape[2]).reshape(shape)
        return {
            "category": _count(table.sum(axis=(1, 2)), self.cat_names.__getitem__),
            "kind": _count(table.sum(axis=(0, 2)), self.kind_names.__getitem__),
            "year": _count(table.sum(axis=(0, 1)), year_names.__getitem__),
        }


class _SegmentColumns:
    """The per-document values of one segment, read once for as long as the segment lives."""

    def __init__(self, leaf: Any) -> None:
        self.leaf = leaf
        self.size = leaf.doc_count_all()
        self.category = ordinals(leaf.column_reader("category", translate=False), self.size)
        self.kind = ordinals(leaf.column_reader("kind", translate=False), self.size)
        self.dates = {
            f: numeric_values(leaf.column_reader(date_column(f), translate=False), self.size)
            for f in DATE_FIELDS
        }
        self._lengths: dict[str, npt.NDArray[np.float64]] = {}
        self._ids: npt.NDArray[np.bytes_] | None = None
        self._id_ranks: npt.NDArray[np.int32] | None = None
        self._years: dict[str, npt.NDArray[np.int16]] = {}

    def ids(self) -> npt.NDArray[np.bytes_]:
        """Return the segment's record ids, UTF-8 encoded (read on first use)."""
        if self._ids is None:
            self._ids = byte_strings(self.leaf.column_reader("id", translate=False), self.size)
        return self._ids

    def year_of(self, date_field: str) -> npt.NDArray[np.int16]:
        """Return each document's UTC year, 1 to 9999 (on first use)."""
        got = self._years.get(date_field)
        if got is None:
            got = self._years[date_field] = _utc_years(self.dates[date_field])
        return got

    def id_ranks(self) -> npt.NDArray[np.int32]:
        """Return each document's place in the segment's record ids sorted (on first use)."""
        if self._id_ranks is None:
            ranks = np.empty(self.size, np.int32)
            ranks[np.argsort(self.ids(), kind="stable")] = np.arange(self.size, dtype=np.int32)
            self._id_ranks = ranks
        return self._id_ranks

    def lengths(self, fieldname: str) -> npt.NDArray[np.float64]:
        """Return a text field's length per document (read on first use)."""
        got = self._lengths.get(fieldname)
        if got is None:
            col = self.leaf._perdoc._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
            if col is None:
                got = np.zeros(self.size, np.float64)
            else:
                got = _LENGTHS[numeric_values(col, self.size)]
            self._lengths[fieldname] = got
        return got


def _date_id_order(docs: Docs, dates: npt.NDArray[np.int64], ids: Any) -> Docs:
    """Return documents sorted by (date, record id).

    Sorting integers is several times faster than sorting by a second key of strings, and
    documents sharing a date are few: only those are ordered by id, afterwards.
    """
    o = np.argsort(dates, kind="stable")
    ordered = dates[o]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(tied):
        # positions in date order that share their date with a neighbour: runs of equal dates
        at = np.union1d(tied, tied + 1)
        group = o[at]
        o[at] = group[np.lexsort((ids[docs[group]], dates[group]))]
    result: Docs = docs[o]
    return result


def _merge_orders(old: Docs, new: Docs, dates: npt.NDArray[np.int64], ids: Any) -> Docs:
    """Merge two lists of documents each sorted by (date, record id) into one."""
    old_dates = dates[old]
    new_dates = dates[new]
    at = np.searchsorted(old_dates, new_dates, "left")
    end = np.searchsorted(old_dates, new_dates, "right")
    for i in np.flatnonzero(end > at).tolist():  # a date an old document has too: by id
        tied = ids[old[at[i] : end[i]]]
        at[i] += int(np.searchsorted(tied, ids[new[i]], "left"))
    merged: Docs = np.insert(old, at, new)
    return merged


def _join_ordinals(
    parts: list[tuple[list[str], npt.NDArray[np.int32]]],
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Join segments' ordinals into the shard's, renumbered over one list of names."""
    names: list[str] = []
    index: dict[str, int] = {}
    out = []
    for seg_names, seg_ords in parts:
        mapping = np.array([index.setdefault(n, len(index)) for n in seg_names], np.int32)
        out.append(mapping[seg_ords] if len(seg_ords) else seg_ords)
    names = list(index)
    return names, _join(out, np.int32)


def _join(parts: list[Any], dtype: Any) -> Any:
    """Concatenate per-segment arrays (an empty array of the dtype for none)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _alike_documents(
    former: tuple[tuple[Any, int], ...], current: tuple[tuple[Any, int], ...]
) -> int:
    """Return how many documents two segment lists number alike: those of the segments the
    lists start with in common."""
    count = 0
    for a, b in zip(former, current, strict=False):
        if a != b:
            break
        count += a[1]
    return count


def _leaves(reader: Any) -> list[Any]:
    """A reader's segment readers. A shard left with no segment at all (its last documents
    erased, and merged away) is read through Whoosh's empty reader, which has no columns and
    no documents: it has no segment here."""
    return [leaf for leaf, _base in reader.leaf_readers() if leaf.doc_count_all()]


def _forget_replaced(previous: ShardCache, current: ShardCache) -> None:
    """Drop the process-wide cache entries that only a shard's former cache could use: those
    of its segments gone since (merged away, or all their documents deleted) and its former
    caches' term entries that the new one does not inherit. They would stay until evicted,
    so that every index change left the caches fuller (a server's memory grew to their caps).
    A search still running on the former cache only computes them again."""
    gone = {key[0] for key in previous.segments} - {key[0] for key in current.segments}
    if gone:
        POSTING_CACHE.forget(gone)
        _SEGMENT_DF.drop(lambda key: key[0] in gone)
        forget_segments(gone)
    lineage = {previous.number, *(number for number, _ in previous._ancestors)}
    lineage -= {number for number, _ in current._ancestors}
    if lineage:
        TERM_CACHE.drop(lambda key: key[0] in lineage)


def _segments_of(reader: Any) -> tuple[tuple[Any, int], ...]:
    """Identify a reader's segments and their document counts (deleted ones included)."""
    out = []
    for leaf in _leaves(reader):
        segment = leaf.segment() if hasattr(leaf, "segment") else None
        out.append((segment.segid if segment is not None else id(leaf), leaf.doc_count_all()))
    return tuple(out)


def _count(counts: npt.NDArray[np.int64], name: Callable[[int], str]) -> Counter[str]:
    return Counter({name(i): int(counts[i]) for i in np.flatnonzero(counts).tolist()})


@dataclass
class ShardView:
    """One shard as a query sees it: searcher, caches, its ``created_at`` period, and the terms
    its word-pair fields pair (``analysis.choose_pair_terms``)."""

    name: str
    lo_us: int
    hi_us: int
    cache: ShardCache
    pair_terms: frozenset[bytes] = frozenset()


def _frozen(arrays: tuple[npt.NDArray[Any], ...]) -> tuple[npt.NDArray[Any], ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays
