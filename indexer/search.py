"""Search over time shards: SearchQuery -> SearchPage (hits, exact total, facets).

Parsing and cost limits happen before anything runs. Execution uses Whoosh for parsing and
its posting files, and evaluates queries with numpy over whole posting blocks; per-shard column
caches (category, kind, dates, sort order) serve filters, facets and date sorting, so that
totals and facets are exact at a cost of a few array operations per query rather than Python
work per match.

Relevance across shards: BM25 with collection statistics (document count, document frequency,
average field length) summed over *all* shards of the index, so a document scores the same as it
would in one index holding every record, whichever shards a query opens. Ties: higher score
first, then smaller id. Date sorts: ``oldest`` is (date, id) ascending, ``newest`` its exact
reverse.
"""

from __future__ import annotations

import heapq
import html
import io
import math
import pickle
import re
import struct
import time
import zlib
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from itertools import accumulate
from pickle import loads
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh import query as wq
from whoosh.codec.whoosh3 import (
    LENGTHS_COLUMN,
    WHOOSH3_HEADER_MAGIC,
    W3TermsReader,
    _lenfield,
)
from whoosh.qparser import MultifieldParser, QueryParserError
from whoosh.reading import TermNotFound
from whoosh.searching import Searcher
from whoosh.util.numeric import byte_to_length

from indexer.analysis import ArchivePositions, iter_tokens, normalize_query_text
from indexer.errors import BadQuery
from indexer.schema import DATE_FIELDS, TEXT_FIELDS, date_column

MAX_QUERY_CHARS = 1000
MAX_TERMS = 64
MAX_EXPANSION = 1000
MAX_SCAN = 20_000
MAX_PER_PAGE = 100
QUERY_FIELDS = frozenset({"subject", "body", "customer_id", "owner", "id"})
SORTS = ("relevance", "newest", "oldest")
SNIPPET_CHARS = 200

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_YEAR0 = 1900
_YEAR_STARTS = [
    int((datetime(y, 1, 1, tzinfo=UTC) - _EPOCH) / timedelta(microseconds=1))
    for y in range(_YEAR0, 2301)
]


@dataclass(frozen=True)
class SearchQuery:
    """A search request, as the contract's ``GET /api/v1/search`` parameters."""

    q: str = ""
    categories: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    customer_id: str | None = None
    owner: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    date_field: str = "created_at"
    sort: str | None = None
    page: int = 1
    per_page: int = 20


@dataclass(frozen=True)
class SearchHit:
    """One result row; timestamps in the contract's UTC format."""

    id: str
    kind: str
    category: str
    customer_id: str | None
    owner: str | None
    subject: str
    status: str
    created_at: str
    updated_at: str
    archived_at: str
    score: float
    snippet: str


@dataclass(frozen=True)
class SearchPage:
    """One page of results with the exact total and facet counts over all matches."""

    total: int
    page: int
    per_page: int
    took_ms: float
    hits: list[SearchHit]
    facets: dict[str, dict[str, int]] = field(default_factory=dict)


# --- small helpers -------------------------------------------------------------------------


def to_micros(value: datetime) -> int:
    """Return an aware datetime as integer microseconds since the epoch.

    :param value: an aware datetime.
    """
    return (value - _EPOCH) // timedelta(microseconds=1)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp with offset or ``Z`` into an aware UTC datetime.

    :param text: the timestamp.
    """
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return value.astimezone(UTC)


def parse_bound(text: str, end: bool) -> datetime:
    """Parse a ``from``/``to`` bound: an ISO date or datetime, as aware UTC.

    A date alone means its first microsecond, or with ``end`` its last one, so that an inclusive
    ``to`` covers the whole day. A datetime without offset is taken as UTC.

    :param text: the ISO date or datetime.
    :param end: True for the upper (``to``) bound.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            t = dtime.max if end else dtime.min
            return datetime.combine(d, t, tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError as e:
        raise BadQuery(f"not an ISO date or datetime: {text[:40]!r}") from e
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def year_of_micros(us: int) -> int:
    """Return the UTC year of an epoch-microsecond value (1900-2300).

    :param us: microseconds since the epoch.
    """
    return _YEAR0 + bisect_right(_YEAR_STARTS, us) - 1


# --- parsing and cost limits ------------------------------------------------------------------


@dataclass
class CompiledQuery:
    """A parsed, checked text query and what snippets need to highlight it."""

    query: wq.Query | None
    terms: dict[str, set[str]]
    prefixes: list[tuple[str, re.Pattern[str]]]


_HIDDEN_FIELD = re.compile(
    r"(?<![\w.])(kind|category|created_at|updated_at|archived_at|created_us|updated_us|"
    r"archived_us|stored|status):"
)
_BAD_WILDCARD = re.compile(r"(?:^|[\s(:])[*?]")


def _check_syntax(q: str) -> None:
    depth = 0
    in_quote = False
    for ch in q:
        if ch == '"':
            in_quote = not in_quote
        elif not in_quote:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise BadQuery("unbalanced parenthesis")
    if in_quote:
        raise BadQuery("unbalanced quote")
    if depth:
        raise BadQuery("unbalanced parenthesis")
    if _BAD_WILDCARD.search(q):
        raise BadQuery("a wildcard cannot start a term")


def make_parser(schema: Any) -> MultifieldParser:
    """Build the query parser: subject and body by default, AND between words.

    :param schema: the shard schema; only the fields a query may name are given to the parser.
    """
    from whoosh.fields import Schema

    visible = Schema(**{name: schema[name] for name in sorted(QUERY_FIELDS)})
    return MultifieldParser(list(TEXT_FIELDS), visible)


def _leaves(q: wq.Query) -> Iterable[wq.Query]:
    if q.is_leaf():
        yield q
    else:
        for child in q.children():
            yield from _leaves(child)


def compile_query(text: str, parser: MultifieldParser, readers: Sequence[Any]) -> CompiledQuery:
    """Parse a query string and refuse it before running when unparseable or too costly.

    :param text: the ``q`` parameter.
    :param parser: the parser from :func:`make_parser`.
    :param readers: one Whoosh reader per shard, to count wildcard and range expansions.
    """
    if len(text) > MAX_QUERY_CHARS:
        raise BadQuery(f"query longer than {MAX_QUERY_CHARS} characters")
    text = text.strip()
    if not text:
        return CompiledQuery(None, {}, [])
    if text.count("*") + text.count("?") > 20:
        raise BadQuery("too many wildcards")
    _check_syntax(text)
    hidden = _HIDDEN_FIELD.search(text)
    if hidden:
        raise BadQuery(f"{hidden.group(1)} cannot be searched in q; use the filters")
    text = normalize_query_text(text)
    try:
        parsed = parser.parse(text)
    except QueryParserError as e:  # pragma: no cover - the parser rarely raises
        raise BadQuery(f"cannot parse query: {e}") from e
    parsed = parsed.normalize()
    terms: dict[str, set[str]] = {}
    prefixes: list[tuple[str, re.Pattern[str]]] = []
    nterms = 0
    for leaf in _leaves(parsed):
        if getattr(leaf, "error", None):
            raise BadQuery(f"cannot parse query: {leaf.error}")
        if leaf is wq.NullQuery or isinstance(leaf, wq.qcore._NullQuery):
            continue
        fieldname = leaf.field() if hasattr(leaf, "field") else None
        if isinstance(leaf, wq.Every):
            raise BadQuery("a query matching everything: leave q empty instead")
        if fieldname is not None and fieldname not in QUERY_FIELDS:
            raise BadQuery(f"unknown field {fieldname!r}")
        if isinstance(leaf, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.TermRange, wq.Regex)):
            _check_expansion(leaf, readers)
            if fieldname in TEXT_FIELDS:
                prefixes.append((fieldname, _pattern_of(leaf)))
            nterms += 1
        elif isinstance(leaf, (wq.NumericRange, wq.DateRange)):
            raise BadQuery("ranges are given with from/to")
        elif isinstance(leaf, wq.Phrase):
            nterms += len(leaf.words)
            terms.setdefault(leaf.fieldname, set()).update(leaf.words)
        elif isinstance(leaf, wq.Term):
            nterms += 1
            terms.setdefault(leaf.fieldname, set()).add(leaf.text)
        else:
            raise BadQuery(f"unsupported query part: {type(leaf).__name__}")
    if nterms > MAX_TERMS:
        raise BadQuery(f"more than {MAX_TERMS} terms")
    if nterms == 0:
        # e.g. only punctuation or only operators: nothing can match.
        return CompiledQuery(wq.NullQuery, terms, prefixes)
    return CompiledQuery(parsed, terms, prefixes)


def _pattern_of(leaf: wq.Query) -> re.Pattern[str]:
    if isinstance(leaf, wq.Prefix):
        return re.compile(re.escape(leaf.text) + ".*")
    if isinstance(leaf, wq.Wildcard):
        parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in leaf.text]
        return re.compile("".join(parts))
    return re.compile("(?!)")


def _literal_prefix(leaf: wq.Query) -> str:
    if isinstance(leaf, wq.Prefix):
        return str(leaf.text)
    if isinstance(leaf, wq.Wildcard):
        return str(re.split(r"[*?]", leaf.text, maxsplit=1)[0])
    if isinstance(leaf, wq.FuzzyTerm):
        return str(leaf.text[: leaf.prefixlength])
    return ""


def _check_expansion(leaf: wq.Query, readers: Sequence[Any]) -> None:
    """Refuse a multi-term query whose expansion would pass the limits, reading few terms."""
    fieldname = leaf.field()
    prefix = _literal_prefix(leaf)
    if isinstance(leaf, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.Regex)) and not prefix:
        raise BadQuery("a wildcard cannot start a term")
    pattern = _pattern_of(leaf) if isinstance(leaf, wq.Wildcard) else None
    found: set[bytes] = set()
    scanned = 0
    for reader in readers:
        if isinstance(leaf, wq.TermRange):
            source: Iterable[Any] = leaf._btexts(reader)
        else:
            source = reader.expand_prefix(fieldname, prefix)
        for btext in source:
            scanned += 1
            if scanned > MAX_SCAN:
                raise BadQuery(f"{leaf} scans too many terms")
            if isinstance(btext, str):
                btext = btext.encode("utf-8")
            if pattern is None or pattern.fullmatch(btext.decode("utf-8")):
                found.add(btext)
                if len(found) > MAX_EXPANSION:
                    raise BadQuery(f"{leaf} expands to more than {MAX_EXPANSION} terms")


# --- collection statistics (BM25 across shards) ----------------------------------------------


class GlobalStats:
    """Collection statistics summed over every shard, computed lazily per term."""

    def __init__(self, readers: Sequence[Any]) -> None:
        self._readers = readers
        self.doc_count = sum(r.doc_count_all() for r in readers) or 1
        self._avgfl: dict[str, float] = {}
        self._df: dict[tuple[str, bytes], int] = {}

    def avg_field_length(self, fieldname: str) -> float:
        """Return the average length of a field over all shards."""
        v = self._avgfl.get(fieldname)
        if v is None:
            total = sum(r.field_length(fieldname) for r in self._readers)
            v = self._avgfl[fieldname] = (total / self.doc_count) or 1.0
        return v

    def idf(self, fieldname: str, btext: bytes) -> float:
        """Return the BM25 idf of a term over all shards."""
        key = (fieldname, btext)
        df = self._df.get(key)
        if df is None:
            df = self._df[key] = sum(r.doc_frequency(fieldname, btext) for r in self._readers)
        n = self.doc_count
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


# --- per-shard caches -------------------------------------------------------------------------

Docs = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

_NO_DOCS: Docs = np.empty(0, np.int64)
_NO_SCORES: Floats = np.empty(0, np.float64)
_YEAR_STARTS_NP = np.array(_YEAR_STARTS, np.int64)


class ShardCache:
    """Per-document values of one shard's searcher, read once and shared by every query.

    Values are numpy arrays indexed by document number, so that filters, facets and sorting
    run over a query's matches without Python work per match.
    """

    def __init__(self, searcher: Searcher) -> None:
        reader = searcher.reader()
        self.searcher = searcher
        self.size = reader.doc_count_all()
        self.live = array("i", reader.all_doc_ids())
        self.live_docs: Docs = np.array(self.live, np.int64)
        # None when nothing is deleted (the usual case): no mask to apply.
        self.live_mask: npt.NDArray[np.bool_] | None = None
        if len(self.live) != self.size:
            self.live_mask = np.zeros(self.size, np.bool_)
            self.live_mask[self.live_docs] = True
        self.cat_names, self.cat_ord = self._ordinals(reader, "category")
        self.kind_names, self.kind_ord = self._ordinals(reader, "kind")
        self.dates: dict[str, npt.NDArray[np.int64]] = {
            f: np.array(array("q", reader.column_reader(date_column(f))), np.int64)
            for f in DATE_FIELDS
        }
        self._id_column = reader.column_reader("id")
        self._id_rank: npt.NDArray[np.int64] | None = None
        self._years: dict[str, npt.NDArray[np.int16]] = {}
        self._orders: dict[str, tuple[Docs, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        self._all_facets: dict[str, dict[str, dict[str, int]]] = {}
        self._lengths: dict[str, npt.NDArray[np.float64]] = {}
        self._norms: dict[tuple[str, float], Floats] = {}

    def lengths(self, fieldname: str) -> npt.NDArray[np.float64]:
        """Return the length of a text field for every document number."""
        got = self._lengths.get(fieldname)
        if got is None:
            parts = []
            for leaf, _base in self.searcher.reader().leaf_readers():
                n = leaf.doc_count_all()
                col = leaf._perdoc._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
                if col is None:
                    parts.append(np.zeros(n, np.float64))
                else:
                    parts.append(_LEN_TABLE_NP[np.fromiter(col, np.uint8, n)])
            got = np.concatenate(parts) if parts else np.zeros(0, np.float64)
            self._lengths[fieldname] = got
        return got

    def norms(self, fieldname: str, avgfl: float) -> Floats:
        """Return BM25's length normalisation ``K1 * (1 - B + B * len / avgfl)`` per document."""
        key = (fieldname, avgfl)
        got = self._norms.get(key)
        if got is None:
            a, b = _K1 * (1 - _B), _K1 * _B / avgfl
            got = a + b * self.lengths(fieldname)
            self._norms = {key: got, **{k: v for k, v in self._norms.items() if k[0] != fieldname}}
        return got

    @staticmethod
    def _ordinals(reader: Any, fieldname: str) -> tuple[list[str], npt.NDArray[np.int32]]:
        names: list[str] = []
        index: dict[str, int] = {}
        ords = array("H")
        for value in reader.column_reader(fieldname):
            i = index.get(value)
            if i is None:
                i = index[value] = len(names)
                names.append(value)
            ords.append(i)
        return names, np.array(ords, np.int32)

    def record_id(self, docnum: int) -> str:
        """Return the record id of a document number."""
        value = self._id_column[docnum]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def id_rank(self) -> npt.NDArray[np.int64]:
        """Return every document's rank in record id order (for ties)."""
        if self._id_rank is None:
            ids = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in self._id_column]
            rank = np.empty(self.size, np.int64)
            rank[np.argsort(np.array(ids, dtype=str), kind="stable")] = np.arange(self.size)
            self._id_rank = rank
        return self._id_rank

    def years(self, date_field: str) -> npt.NDArray[np.int16]:
        """Return the year of ``date_field`` for every document number, as an offset."""
        ys = self._years.get(date_field)
        if ys is None:
            starts = _YEAR_STARTS_NP
            ys = np.searchsorted(starts, self.dates[date_field], side="right").astype(np.int16)
            self._years[date_field] = ys
        return ys

    def order(self, date_field: str) -> tuple[Docs, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return live documents sorted by (date, id), their dates in that order, and ranks."""
        got = self._orders.get(date_field)
        if got is None:
            dates = self.dates[date_field]
            live = self.live_docs
            order = live[np.lexsort((self.id_rank()[live], dates[live]))]
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
        out: dict[str, Counter[str]] = {}
        for name, ords, names in (
            ("category", self.cat_ord, self.cat_names),
            ("kind", self.kind_ord, self.kind_names),
        ):
            out[name] = _count(np.bincount(ords[docs]), names.__getitem__)
        ycounts = np.bincount(self.years(date_field)[docs])
        out["year"] = _count(ycounts, lambda i: str(_YEAR0 + i - 1))
        return out


def _count(counts: npt.NDArray[np.int64], name: Callable[[int], str]) -> Counter[str]:
    return Counter({name(i): int(counts[i]) for i in np.flatnonzero(counts).tolist()})


@dataclass
class ShardView:
    """One shard as a query sees it: searcher, caches and its ``created_at`` period."""

    name: str
    lo_us: int
    hi_us: int
    cache: ShardCache


# --- query evaluation on postings -------------------------------------------------------------
#
# Whoosh matchers cost ~20 us per posting in Python (scorer objects, per-document length column
# reads). For exact totals and facets every matching document is needed anyway, so queries are
# evaluated here as numpy set algebra over postings read a whole block at a time: a shard's
# matches are a sorted array of document numbers with an array of scores beside it, and BM25 is
# computed from cached per-document field lengths. A document's score is the sum of its
# matching terms' BM25 (as Whoosh's Or/And do), added in the same order as Whoosh would, so
# that equal documents get bit-equal scores; a phrase scores as the sum of its words.

_K1 = 1.2
_B = 0.75
_LEN_TABLE_NP = np.array([byte_to_length(b) for b in range(256)], np.float64)

# One posting block of a term: its document numbers, its values' source (the block's pickled
# data, unpickled only if a phrase needs its positions, or the values themselves), and whether
# that data is compressed.
_Block = tuple[Docs, Any, bool]


@dataclass
class Matches:
    """The matching documents of one shard (sorted, unique) and their scores."""

    docs: Docs
    scores: Floats

    def __len__(self) -> int:
        return len(self.docs)

    def take(self, keep: npt.NDArray[Any]) -> Matches:
        """Return the matches selected by a boolean mask or an index array."""
        return Matches(self.docs[keep], self.scores[keep])


def _empty() -> Matches:
    return Matches(_NO_DOCS, _NO_SCORES)


def _intersect(a: Docs, b: Docs) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return the indices in a and in b of the values both sorted arrays hold."""
    if len(a) > len(b):
        ib, ia = _intersect(b, a)
        return ia, ib
    if not len(a):
        return np.empty(0, np.intp), np.empty(0, np.intp)
    pos = np.searchsorted(b, a)
    pos[pos == len(b)] = 0
    hit = b[pos] == a
    return np.flatnonzero(hit), pos[hit]


def _member(a: Docs, b: Docs) -> npt.NDArray[np.bool_]:
    """Return which values of a (any order) are in the sorted array b."""
    if not len(b):
        return np.zeros(len(a), np.bool_)
    pos = np.searchsorted(b, a)
    pos[pos == len(b)] = 0
    hit: npt.NDArray[np.bool_] = b[pos] == a
    return hit


def _union(parts: Sequence[Matches], size: int) -> Matches:
    """Add up the scores of several match sets, in the given order of the parts.

    :param size: the shard's document count; large unions add up over dense arrays.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty()
    if len(parts) == 1:
        return parts[0]
    # a part has each document once, so fancy-index += adds each score once
    if sum(map(len, parts)) * 16 >= size:
        acc = np.zeros(size, np.float64)
        seen = np.zeros(size, np.bool_)
        for p in parts:
            acc[p.docs] += p.scores
            seen[p.docs] = True
        docs = np.flatnonzero(seen)
        return Matches(docs, acc[docs])
    docs = np.unique(np.concatenate([p.docs for p in parts]))
    scores = np.zeros(len(docs), np.float64)
    for p in parts:
        scores[np.searchsorted(docs, p.docs)] += p.scores
    return Matches(docs, scores)


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


def _leaf_postings(
    leaf: Any, fieldname: str, btext: bytes, base: int, blocks: list[_Block] | None
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
            return _NO_DOCS, _NO_SCORES
        return _matcher_postings(leaf.postings(fieldname, btext), base, blocks)
    try:
        info = terms.term_info(fieldname, btext)
    except TermNotFound:
        return _NO_DOCS, _NO_SCORES
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
                np.ones(n) if w is None else np.full(n, float(w)) if isinstance(w, (int, float))
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


def _matcher_postings(m: Any, base: int, blocks: list[_Block] | None) -> tuple[Docs, Floats]:
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


def _position_keys(
    values: list[bytes], docs: Docs, decode: Callable[[bytes], list[int]] | None
) -> Docs:
    """Return ``doc << 32 | position`` for every position of the given Positions values, sorted.

    The frequent shape (every delta under 256, so one BININT1 each) is decoded for all values
    at once with numpy; other values one at a time.
    """
    if not values:
        return _NO_DOCS
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


class Evaluator:
    """Evaluates a parsed Whoosh query on one shard into :class:`Matches`."""

    def __init__(self, cache: ShardCache, stats: GlobalStats | None, scored: bool) -> None:
        self.cache = cache
        self.reader = cache.searcher.reader()
        self.stats = stats
        self.scored = scored

    def run(self, q: wq.Query) -> Matches:
        """Return the matching live documents and their scores."""
        return self._eval(q)

    def _eval(self, q: wq.Query) -> Matches:
        if isinstance(q, wq.Term):
            return self._term(q.fieldname, q.text, q.boost)
        if isinstance(q, wq.Phrase):
            return self._phrase(q)
        if isinstance(q, wq.And):
            parts = sorted((self._eval(c) for c in q.subqueries), key=len)
            if not parts:
                return _empty()
            out = parts[0]
            for other in parts[1:]:
                ia, ib = _intersect(out.docs, other.docs)
                out = Matches(out.docs[ia], out.scores[ia] + other.scores[ib])
                if not len(out):
                    break
            return out
        if isinstance(q, (wq.Or, wq.DisjunctionMax)):
            parts = sorted((self._eval(c) for c in q.subqueries), key=len, reverse=True)
            return _union(parts, self.cache.size)
        if isinstance(q, wq.AndNot):
            pos = self._eval(q.a)
            if not len(pos):
                return pos
            neg = self._eval(q.b)
            return pos.take(~_member(pos.docs, neg.docs))
        if isinstance(q, wq.AndMaybe):
            pos = self._eval(q.a)
            opt = self._eval(q.b)
            ia, ib = _intersect(pos.docs, opt.docs)
            scores = pos.scores.copy()
            scores[ia] += opt.scores[ib]
            return Matches(pos.docs, scores)
        if isinstance(q, wq.Require):
            pos = self._eval(q.a)
            req = self._eval(q.b)
            return pos.take(_member(pos.docs, req.docs))
        if isinstance(q, wq.Not):
            neg = self._eval(q.query)
            live = self.cache.live_docs
            docs = live[~_member(live, neg.docs)]
            return Matches(docs, np.zeros(len(docs), np.float64))
        if isinstance(q, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.TermRange, wq.Regex)):
            terms = [self._term(q.field(), bt, q.boost) for bt in q._btexts(self.reader)]
            return _union(terms, self.cache.size)
        if q is wq.NullQuery or isinstance(q, wq.qcore._NullQuery):
            return _empty()
        raise BadQuery(f"unsupported query part: {type(q).__name__}")

    def _term(
        self,
        fieldname: str,
        text: str | bytes,
        boost: float = 1.0,
        blocks: list[_Block] | None = None,
    ) -> Matches:
        btext = text.encode("utf-8") if isinstance(text, str) else text
        ids_parts: list[Docs] = []
        w_parts: list[Floats] = []
        for leaf, base in self.reader.leaf_readers():
            lids, lw = _leaf_postings(leaf, fieldname, btext, base, blocks)
            if len(lids):
                ids_parts.append(lids)
                w_parts.append(lw)
        if not ids_parts:
            return _empty()
        ids = ids_parts[0] if len(ids_parts) == 1 else np.concatenate(ids_parts)
        if not self.scored or fieldname not in TEXT_FIELDS:
            scores = np.full(len(ids), 1.0 * boost if self.scored else 0.0, np.float64)
        else:
            assert self.stats is not None
            weights = w_parts[0] if len(w_parts) == 1 else np.concatenate(w_parts)
            idf = self.stats.idf(fieldname, btext) * boost * (_K1 + 1)
            norm = self.cache.norms(fieldname, self.stats.avg_field_length(fieldname))
            scores = idf * weights / (weights + norm[ids])
        out = Matches(ids, scores)
        if self.cache.live_mask is not None:
            out = out.take(self.cache.live_mask[ids])
        return out

    def _phrase(self, q: wq.Phrase) -> Matches:
        words = list(q.words)
        if len(words) == 1:
            return self._term(q.fieldname, words[0], q.boost)
        blocks: list[list[_Block]] = [[] for _ in words]
        per_word = [self._term(q.fieldname, w, q.boost, blocks[i]) for i, w in enumerate(words)]
        # Positions are decoded only for the documents holding every word.
        candidates = min(per_word, key=len).docs
        for sc in per_word:
            candidates = candidates[_member(candidates, sc.docs)]
            if not len(candidates):
                return _empty()
        fmt = self.cache.searcher.schema[q.fieldname].format
        decode = None if type(fmt) is ArchivePositions else fmt.decode_positions
        slop = q.slop
        if slop == 1:
            # An exact phrase starts at p where word i is at p + i for every i: the positions
            # of word i shifted back by i (plus a margin, so none is negative) all share p.
            # Rarer words first, so that the frequent ones are decoded for fewer documents.
            common: Docs | None = None
            for i in sorted(range(len(words)), key=lambda i: len(per_word[i])):
                keys = self._positions(blocks[i], candidates, decode) + (MAX_TERMS - i)
                common = keys if common is None else common[_member(common, keys)]
                if not len(common):
                    return _empty()
                candidates = np.unique(common >> 32)
        else:
            starts = _NO_DOCS
            for i in range(len(words)):
                keys = self._positions(blocks[i], candidates, decode)
                if i == 0:
                    starts = keys
                else:
                    # A start survives while every next word is found within slop after it.
                    ok = np.zeros(len(starts), np.bool_)
                    for k in range(slop):
                        ok |= _member(starts + (i + k), keys)
                    starts = starts[ok]
                if not len(starts):
                    return _empty()
                candidates = np.unique(starts >> 32)
        docs = candidates
        scores = np.zeros(len(docs), np.float64)
        for sc in per_word:
            scores += sc.scores[np.searchsorted(sc.docs, docs)]
        return Matches(docs, scores)

    def _positions(
        self, blocks: list[_Block], candidates: Docs, decode: Callable[[bytes], list[int]] | None
    ) -> Docs:
        """Return ``doc << 32 | position`` for a word's positions in the candidate documents."""
        if not blocks:
            return _NO_DOCS
        sizes = np.array([len(ids) for ids, _source, _compressed in blocks], np.int64)
        offsets = np.zeros(len(blocks) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        all_ids = np.concatenate([ids for ids, _source, _compressed in blocks])
        wanted = _member(all_ids, candidates)
        running = np.zeros(len(all_ids) + 1, np.int64)
        np.cumsum(wanted, out=running[1:])
        used = running[offsets[1:]] - running[offsets[:-1]] > 0
        # the values of the blocks that hold a candidate, in one list; unpickled once a query
        values_all: list[bytes] = []
        starts = np.zeros(len(blocks), np.int64)
        for i in np.flatnonzero(used).tolist():
            ids, source, compressed = blocks[i]
            if isinstance(source, bytes):
                source = loads(zlib.decompress(source) if compressed else source)[2]
                blocks[i] = (ids, source, False)
            starts[i] = len(values_all)
            values_all.extend(source)
        hits = np.flatnonzero(wanted)
        block_of = np.searchsorted(offsets, hits, side="right") - 1
        picks = (hits - offsets[block_of] + starts[block_of]).tolist()
        values = [values_all[j] for j in picks]
        return _position_keys(values, all_ids[hits], decode)


# --- execution ------------------------------------------------------------------------------


def _bounds(query: SearchQuery) -> tuple[int | None, int | None]:
    lo = to_micros(query.date_from) if query.date_from is not None else None
    hi = to_micros(query.date_to) if query.date_to is not None else None
    return lo, hi


def validate(query: SearchQuery) -> str:
    """Check a query's parameters and return its effective sort.

    :param query: the query.
    """
    if query.date_field not in DATE_FIELDS:
        raise BadQuery(f"date_field must be one of {', '.join(DATE_FIELDS)}")
    sort = query.sort or ("relevance" if query.q.strip() else "newest")
    if sort not in SORTS:
        raise BadQuery(f"sort must be one of {', '.join(SORTS)}")
    if query.page < 1:
        raise BadQuery("page must be 1 or more")
    if not 1 <= query.per_page <= MAX_PER_PAGE:
        raise BadQuery(f"per_page must be between 1 and {MAX_PER_PAGE}")
    for bound in (query.date_from, query.date_to):
        if bound is not None and bound.tzinfo is None:
            raise BadQuery("date bounds must be timezone-aware")
    return sort


def select_shards(views: Sequence[ShardView], query: SearchQuery) -> list[ShardView]:
    """Return the shards a query needs (a ``created_at`` range skips the others).

    :param views: every shard.
    :param query: the query.
    """
    if query.date_field != "created_at":
        return list(views)
    lo, hi = _bounds(query)
    return [v for v in views if (lo is None or v.hi_us >= lo) and (hi is None or v.lo_us <= hi)]


def _match_shard(
    view: ShardView,
    query: SearchQuery,
    compiled: CompiledQuery,
    stats: GlobalStats | None,
    sort: str,
) -> tuple[Docs, Floats | None, bool]:
    """Return the matching document numbers of one shard and their scores.

    The third item tells whether the documents are in (date_field, id) order rather than in
    document number order.
    """
    cache = view.cache
    lo, hi = _bounds(query)
    f = query.date_field
    date_needed = lo is not None or hi is not None
    if date_needed and f == "created_at":
        if (lo is None or lo <= view.lo_us) and (hi is None or hi >= view.hi_us):
            date_needed = False
    docs: Docs
    scores: Floats | None = None
    in_order = False
    if compiled.query is None:
        if date_needed:
            order, keys, _rank = cache.order(f)
            i = 0 if lo is None else int(np.searchsorted(keys, lo, "left"))
            j = len(keys) if hi is None else int(np.searchsorted(keys, hi, "right"))
            docs = order[i:j]
            in_order = True
        else:
            docs = cache.live_docs
        date_needed = False
    else:
        assert stats is not None
        result = Evaluator(cache, stats, scored=sort == "relevance").run(compiled.query)
        docs = result.docs
        if sort == "relevance":
            scores = result.scores
    keep: npt.NDArray[np.bool_] | None = None

    def narrow(mask: npt.NDArray[np.bool_]) -> None:
        nonlocal keep
        keep = mask if keep is None else keep & mask

    if date_needed:
        dates = cache.dates[f][docs]
        if lo is not None:
            narrow(dates >= lo)
        if hi is not None:
            narrow(dates <= hi)
    for fieldname, value in (("customer_id", query.customer_id), ("owner", query.owner)):
        if value is not None:
            allowed = Evaluator(cache, None, scored=False)._term(fieldname, value)
            narrow(_member(docs, allowed.docs))
    for values, names, ords in (
        (query.categories, cache.cat_names, cache.cat_ord),
        (query.kinds, cache.kind_names, cache.kind_ord),
    ):
        if values:
            wanted = [i for i, n in enumerate(names) if n in values]
            if len(wanted) == 1:
                narrow(ords[docs] == wanted[0])
            else:
                narrow(np.isin(ords[docs], wanted))
    if keep is not None:
        docs = docs[keep]
        if scores is not None:
            scores = scores[keep]
    return docs, scores, in_order


def _top_by_date(
    view: ShardView, docs: Docs, in_order: bool, f: str, k: int, newest: bool
) -> list[tuple[int, str, int]]:
    cache = view.cache
    _order, _keys, rank = cache.order(f)
    if in_order:
        picked = docs[::-1][:k] if newest else docs[:k]
    else:
        ranks = rank[docs]
        if len(docs) > k:
            cut = np.argpartition(ranks, len(docs) - k)[len(docs) - k :] if newest else (
                np.argpartition(ranks, k - 1)[:k]
            )
        else:
            cut = np.arange(len(docs))
        chosen = cut[np.argsort(ranks[cut])]
        picked = docs[chosen[::-1] if newest else chosen]
    dates = cache.dates[f][picked].tolist()
    record_id = cache.record_id
    return [(dt, record_id(d), d) for dt, d in zip(dates, picked.tolist(), strict=True)]


def _score_order(cache: ShardCache, docs: Docs, scores: Floats, k: int) -> npt.NDArray[np.intp]:
    """Return the indices of the k best matches, by score descending then record id."""
    n = len(docs)
    if n > k:
        kth = np.partition(scores, n - k)[n - k]
        sel = np.flatnonzero(scores >= kth)
    else:
        sel = np.arange(n)
    order = np.lexsort((cache.id_rank()[docs[sel]], -scores[sel]))
    return sel[order[:k]]


def _top_by_score(
    view: ShardView, docs: Docs, scores: Floats, k: int
) -> list[tuple[float, str, int]]:
    cache = view.cache
    best = _score_order(cache, docs, scores, k)
    record_id = cache.record_id
    return [
        (-s, record_id(d), d)
        for s, d in zip(scores[best].tolist(), docs[best].tolist(), strict=True)
    ]


def run_search(
    views: Sequence[ShardView],
    query: SearchQuery,
    compiled: CompiledQuery,
    stats: GlobalStats,
    load_hit: Callable[[ShardView, int, float, CompiledQuery], SearchHit],
    started: float | None = None,
) -> SearchPage:
    """Run a checked query over the shards it needs and build one page.

    :param views: every shard of the index.
    :param query: the query.
    :param compiled: the parsed query from :func:`compile_query`.
    :param stats: collection statistics over every shard.
    :param load_hit: turns a shard document into a hit (stored fields and snippet).
    :param started: ``time.perf_counter()`` at the start, for ``took_ms``.
    """
    started = time.perf_counter() if started is None else started
    sort = validate(query)
    if compiled.query is None and sort == "relevance":
        sort = "newest"
    k = query.page * query.per_page
    total = 0
    facets: dict[str, Counter[str]] = {"category": Counter(), "kind": Counter(), "year": Counter()}
    date_rows: list[tuple[int, str, int, ShardView]] = []
    score_rows: list[tuple[float, str, int, ShardView]] = []
    newest = sort == "newest"
    for view in select_shards(views, query):
        docs, scores, in_order = _match_shard(view, query, compiled, stats, sort)
        if not len(docs):
            continue
        total += len(docs)
        everything = docs is view.cache.live_docs
        for name, counts in view.cache.facets(
            None if everything else docs, query.date_field
        ).items():
            facets[name].update(counts)
        if sort == "relevance":
            assert scores is not None
            for s, rid, d in _top_by_score(view, docs, scores, k):
                score_rows.append((s, rid, d, view))
        else:
            for dt, rid, d in _top_by_date(view, docs, in_order, query.date_field, k, newest):
                date_rows.append((dt, rid, d, view))
    start = (query.page - 1) * query.per_page
    hits: list[SearchHit] = []
    if sort == "relevance":
        score_rows.sort(key=lambda r: (r[0], r[1]))
        for s, _rid, d, view in score_rows[start:k]:
            hits.append(load_hit(view, d, -s, compiled))
    else:
        date_rows.sort(key=lambda r: (r[0], r[1]), reverse=newest)
        for _dt, _rid, d, view in date_rows[start:k]:
            hits.append(load_hit(view, d, 0.0, compiled))
    return SearchPage(
        total=total,
        page=query.page,
        per_page=query.per_page,
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        hits=hits,
        facets={name: dict(sorted(c.items())) for name, c in facets.items()},
    )


@dataclass(frozen=True)
class MatchOrder:
    """Every match of a query in page order, compactly: ids, shard of each, scores if ranked."""

    shard_names: list[str]
    shards: array[int]  # index into shard_names, one per match
    record_ids: list[str]
    scores: array[float] | None  # None: date order (score 0)

    def __len__(self) -> int:
        return len(self.record_ids)


def order_matches(
    views: Sequence[ShardView],
    query: SearchQuery,
    compiled: CompiledQuery,
    stats: GlobalStats,
) -> MatchOrder:
    """Every match in the order a search would page them, for streaming exports.

    Only ids are kept (no tuples per match), so memory stays small however many records
    match; stored fields are loaded later, a chunk at a time. Date orders are merged lazily
    from each shard's matches sorted as compact arrays of document numbers.
    """
    sort = validate(query)
    if compiled.query is None and sort == "relevance":
        sort = "newest"
    names = [view.name for view in views]
    index_of = {name: i for i, name in enumerate(names)}
    shards, record_ids = array("H"), []
    if sort == "relevance":
        score_rows: list[tuple[float, str, int]] = []
        for view in select_shards(views, query):
            docs, scores, _ = _match_shard(view, query, compiled, stats, sort)
            if len(docs):
                assert scores is not None
                for s, rid, _d in _top_by_score(view, docs, scores, len(docs)):
                    score_rows.append((s, rid, index_of[view.name]))
        score_rows.sort(key=lambda r: (r[0], r[1]))
        ranked = array("d")
        for s, rid, shard in score_rows:
            shards.append(shard)
            record_ids.append(rid)
            ranked.append(-s)
        return MatchOrder(names, shards, record_ids, ranked)
    newest = sort == "newest"
    f = query.date_field
    streams = []
    for view in select_shards(views, query):
        docs, _, in_order = _match_shard(view, query, compiled, stats, sort)
        if not len(docs):
            continue
        rank = view.cache.order(f)[2]
        ordered = docs if in_order else docs[np.argsort(rank[docs])]
        streams.append(_date_stream(view, index_of[view.name], ordered, f, newest))
    for _dt, rid, shard in heapq.merge(*streams, reverse=newest):
        shards.append(shard)
        record_ids.append(rid)
    return MatchOrder(names, shards, record_ids, None)


def _date_stream(
    view: ShardView, shard: int, ordered: Docs, f: str, newest: bool
) -> Iterator[tuple[int, str, int]]:
    """One shard's matches as ``(date, id, shard)`` in (date, id) order (reversed for newest)."""
    if newest:
        ordered = ordered[::-1]
    dates, record_id = view.cache.dates[f][ordered].tolist(), view.cache.record_id
    for dt, d in zip(dates, ordered.tolist(), strict=True):
        yield dt, record_id(d), shard


# --- snippets -------------------------------------------------------------------------------


def _match_spans(text: str, terms: set[str], patterns: list[re.Pattern[str]]) -> list[list[int]]:
    spans: list[list[int]] = []
    for term, _pos, s, e in iter_tokens(text):
        if spans and s >= spans[0][0] + SNIPPET_CHARS:
            break  # past any snippet window (bodies run to 1 MiB)
        if term in terms or any(p.fullmatch(term) for p in patterns):
            if spans and s <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], e)
            else:
                spans.append([s, e])
    return spans


def make_snippet(text: str, fieldname: str, compiled: CompiledQuery) -> str | None:
    """Return an HTML-escaped excerpt of text with matches in ``<mark>``, or None if none match.

    :param text: the stored text.
    :param fieldname: ``subject`` or ``body``.
    :param compiled: the query, for its terms.
    """
    terms = compiled.terms.get(fieldname, set())
    patterns = [p for f, p in compiled.prefixes if f == fieldname]
    if not terms and not patterns:
        return None
    spans = _match_spans(text, terms, patterns)
    if not spans:
        return None
    first = spans[0][0]
    begin = max(0, first - SNIPPET_CHARS // 4)
    if begin:
        space = text.rfind(" ", begin - 20, first)
        begin = space + 1 if space >= 0 else begin
    end = min(len(text), begin + SNIPPET_CHARS)
    out = ["…" if begin else ""]
    cur = begin
    for s, e in spans:
        if s >= end:
            break
        e = min(e, end)
        out.append(html.escape(text[cur:s]))
        out.append("<mark>" + html.escape(text[s:e]) + "</mark>")
        cur = e
    out.append(html.escape(text[cur:end]))
    if end < len(text):
        out.append("…")
    return "".join(out)


def plain_snippet(text: str) -> str:
    """Return the HTML-escaped start of a text.

    :param text: the stored text.
    """
    if len(text) <= SNIPPET_CHARS:
        return html.escape(text)
    return html.escape(text[:SNIPPET_CHARS]) + "…"
