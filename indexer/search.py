"""Search over time shards: SearchQuery -> SearchPage (hits, exact total, facets).

Parsing and cost limits happen before anything runs. Execution uses Whoosh for parsing,
postings and BM25 scoring, and per-shard column caches (category, kind, dates, sort order) for
filters, facets and date sorting, so that totals and facets are exact without scoring every
document.

Relevance across shards: BM25 with collection statistics (document count, document frequency,
average field length) summed over *all* shards of the index, so a document scores the same as it
would in one index holding every record, whichever shards a query opens. Ties: higher score
first, then smaller id. Date sorts: ``oldest`` is (date, id) ascending, ``newest`` its exact
reverse.
"""

from __future__ import annotations

import heapq
import html
import math
import re
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from itertools import accumulate
from pickle import loads
from typing import Any

from whoosh import query as wq
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, W3LeafMatcher, _lenfield
from whoosh.qparser import MultifieldParser, QueryParserError
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


class ShardCache:
    """Per-document values of one shard's searcher, read once and shared by every query."""

    def __init__(self, searcher: Searcher) -> None:
        reader = searcher.reader()
        self.searcher = searcher
        self.size = reader.doc_count_all()
        self.live = array("i", reader.all_doc_ids())
        self.cat_names, self.cat_ord = self._ordinals(reader, "category")
        self.kind_names, self.kind_ord = self._ordinals(reader, "kind")
        self.dates = {f: array("q", reader.column_reader(date_column(f))) for f in DATE_FIELDS}
        self._id_column = reader.column_reader("id")
        self._years: dict[str, array[int]] = {}
        self._orders: dict[str, tuple[array[int], array[int], array[int]]] = {}
        self._all_facets: dict[str, dict[str, dict[str, int]]] = {}
        self.deleted = (
            set(range(self.size)).difference(self.live) if self.size != len(self.live) else set()
        )
        self._lengths: dict[str, list[int]] = {}
        self._norms: dict[tuple[str, float], list[float]] = {}

    def lengths(self, fieldname: str) -> list[int]:
        """Return the length of a text field for every document number."""
        got = self._lengths.get(fieldname)
        if got is None:
            got = []
            table = _LEN_TABLE
            for leaf, _base in self.searcher.reader().leaf_readers():
                n = leaf.doc_count_all()
                col = leaf._perdoc._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
                got.extend([0] * n if col is None else map(table.__getitem__, col))
            self._lengths[fieldname] = got
        return got

    def norms(self, fieldname: str, avgfl: float) -> list[float]:
        """Return BM25's length normalisation ``K1 * (1 - B + B * len / avgfl)`` per document."""
        key = (fieldname, avgfl)
        got = self._norms.get(key)
        if got is None:
            a, b = _K1 * (1 - _B), _K1 * _B / avgfl
            got = [a + b * n for n in self.lengths(fieldname)]
            self._norms = {key: got, **{k: v for k, v in self._norms.items() if k[0] != fieldname}}
        return got

    @staticmethod
    def _ordinals(reader: Any, fieldname: str) -> tuple[list[str], array[int]]:
        names: list[str] = []
        index: dict[str, int] = {}
        ords = array("H")
        for value in reader.column_reader(fieldname):
            i = index.get(value)
            if i is None:
                i = index[value] = len(names)
                names.append(value)
            ords.append(i)
        return names, ords

    def record_id(self, docnum: int) -> str:
        """Return the record id of a document number."""
        value = self._id_column[docnum]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def years(self, date_field: str) -> array[int]:
        """Return the year of ``date_field`` for every document number."""
        ys = self._years.get(date_field)
        if ys is None:
            starts = _YEAR_STARTS
            ys = array("H", (bisect_right(starts, v) for v in self.dates[date_field]))
            self._years[date_field] = ys
        return ys

    def order(self, date_field: str) -> tuple[array[int], array[int], array[int]]:
        """Return live documents sorted by (date, id), their dates in that order, and ranks."""
        got = self._orders.get(date_field)
        if got is None:
            dates = self.dates[date_field]
            ids = list(self._id_column)
            order = array("i", sorted(self.live, key=lambda d: (dates[d], ids[d])))
            keys = array("q", (dates[d] for d in order))
            rank = array("i", [-1]) * self.size
            for i, d in enumerate(order):
                rank[d] = i
            got = self._orders[date_field] = (order, keys, rank)
        return got

    def facets(self, docs: Sequence[int] | None, date_field: str) -> dict[str, Counter[str]]:
        """Count category, kind and year over documents (None: every live document)."""
        if docs is None:
            cached = self._all_facets.get(date_field)
            if cached is None:
                cached = {k: dict(v) for k, v in self.facets(self.live, date_field).items()}
                self._all_facets[date_field] = cached
            return {k: Counter(v) for k, v in cached.items()}
        out: dict[str, Counter[str]] = {}
        for name, ords, names in (
            ("category", self.cat_ord, self.cat_names),
            ("kind", self.kind_ord, self.kind_names),
        ):
            counts = Counter(map(ords.__getitem__, docs))
            out[name] = Counter({names[i]: c for i, c in counts.items()})
        ycounts = Counter(map(self.years(date_field).__getitem__, docs))
        out["year"] = Counter({str(_YEAR0 + i - 1): c for i, c in ycounts.items()})
        return out


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
# evaluated here as dict/set algebra over postings read a whole block at a time, with BM25
# computed from cached per-document field lengths. A document's score is the sum of its
# matching terms' BM25 (as Whoosh's Or/And do); a phrase scores as the sum of its words.

_K1 = 1.2
_B = 0.75
_LEN_TABLE = [byte_to_length(b) for b in range(256)]

Scores = dict[int, float]


def _leaf_postings(
    leaf: Any, fieldname: str, btext: bytes, values: list[bytes] | None = None
) -> tuple[list[int], list[float]]:
    m = leaf.postings(fieldname, btext)
    if isinstance(m, W3LeafMatcher):
        ids: list[int] = []
        weights: list[float] = []
        while True:
            m._read_data()
            raw, w = m._data[0], m._data[1]
            n = m._blocklength
            ids.extend(raw if m._byteids else accumulate(raw))
            if w is None:
                weights.extend([1.0] * n)
            elif isinstance(w, float):
                weights.extend([w] * n)
            else:
                weights.extend(w)
            if values is not None:
                m._read_values()
                values.extend(m._values)
            if m._lastblock:
                break
            m._goto(m._nextoffset)
        return ids, weights
    ids, weights = [], []
    while m.is_active():
        ids.append(m.id())
        weights.append(m.weight())
        if values is not None:
            values.append(m.value())
        m.next()
    return ids, weights


def _decode_positions(value: bytes) -> list[int]:
    # A Positions value is a 4-byte count, then a pickled list of deltas without the final
    # STOP opcode (whoosh.formats.Positions.encode); inlined, ~2x faster than decode_positions.
    return list(accumulate(loads(value[4:] + b".")))


class Evaluator:
    """Evaluates a parsed Whoosh query on one shard into {docnum: score}."""

    def __init__(self, cache: ShardCache, stats: GlobalStats, scored: bool) -> None:
        self.cache = cache
        self.reader = cache.searcher.reader()
        self.stats = stats
        self.scored = scored

    def run(self, q: wq.Query) -> Scores:
        """Return the matching live documents and their scores."""
        return self._eval(q)

    def _eval(self, q: wq.Query) -> Scores:
        if isinstance(q, wq.Term):
            return self._term(q.fieldname, q.text, q.boost)
        if isinstance(q, wq.Phrase):
            return self._phrase(q)
        if isinstance(q, wq.And):
            parts = sorted((self._eval(c) for c in q.subqueries), key=len)
            if not parts:
                return {}
            out = dict(parts[0])
            for other in parts[1:]:
                out = {d: s + other[d] for d, s in out.items() if d in other}
                if not out:
                    break
            return out
        if isinstance(q, (wq.Or, wq.DisjunctionMax)):
            parts = sorted((self._eval(c) for c in q.subqueries), key=len, reverse=True)
            if not parts:
                return {}
            out = parts[0]  # a fresh dict from _term or a compound: safe to extend
            get = out.get
            for other in parts[1:]:
                for d, sc in other.items():
                    out[d] = get(d, 0.0) + sc
            return out
        if isinstance(q, wq.AndNot):
            pos = self._eval(q.a)
            if not pos:
                return pos
            neg = self._eval(q.b)
            return {d: sc for d, sc in pos.items() if d not in neg}
        if isinstance(q, wq.AndMaybe):
            pos = self._eval(q.a)
            opt = self._eval(q.b)
            return {d: sc + opt.get(d, 0.0) for d, sc in pos.items()}
        if isinstance(q, wq.Require):
            pos = self._eval(q.a)
            req = self._eval(q.b)
            return {d: sc for d, sc in pos.items() if d in req}
        if isinstance(q, wq.Not):
            neg = self._eval(q.query)
            return {d: 0.0 for d in self.cache.live if d not in neg}
        if isinstance(q, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.TermRange, wq.Regex)):
            out = {}
            for btext in q._btexts(self.reader):
                for d, sc in self._term(q.field(), btext, q.boost).items():
                    out[d] = out.get(d, 0.0) + sc
            return out
        if q is wq.NullQuery or isinstance(q, wq.qcore._NullQuery):
            return {}
        raise BadQuery(f"unsupported query part: {type(q).__name__}")

    def _term(
        self,
        fieldname: str,
        text: str | bytes,
        boost: float = 1.0,
        values_out: dict[int, bytes] | None = None,
    ) -> Scores:
        btext = text.encode("utf-8") if isinstance(text, str) else text
        ids: list[int] = []
        weights: list[float] = []
        for leaf, base in self.reader.leaf_readers():
            if (fieldname, btext) not in leaf:
                continue
            values: list[bytes] | None = None if values_out is None else []
            lids, lw = _leaf_postings(leaf, fieldname, btext, values)
            if base:
                lids = [d + base for d in lids]
            if values_out is not None and values is not None:
                values_out.update(zip(lids, values, strict=True))
            ids.extend(lids)
            weights.extend(lw)
        if not ids:
            return {}
        dead = self.cache.deleted
        if not self.scored or fieldname not in TEXT_FIELDS:
            out = dict.fromkeys(ids, 1.0 * boost if self.scored else 0.0)
        else:
            idf = self.stats.idf(fieldname, btext) * boost * (_K1 + 1)
            norm = self.cache.norms(fieldname, self.stats.avg_field_length(fieldname))
            out = {d: idf * w / (w + norm[d]) for d, w in zip(ids, weights, strict=True)}
        if dead:
            for d in dead.intersection(out):
                del out[d]
        return out

    def _phrase(self, q: wq.Phrase) -> Scores:
        words = list(q.words)
        if len(words) == 1:
            return self._term(q.fieldname, words[0], q.boost)
        raw: list[dict[int, bytes]] = [{} for _ in words]
        per_word = [self._term(q.fieldname, w, q.boost, raw[i]) for i, w in enumerate(words)]
        smallest: Scores = min(per_word, key=len)
        candidates = set(smallest)
        for sc in per_word:
            candidates.intersection_update(sc)
            if not candidates:
                return {}
        fmt = self.cache.searcher.schema[q.fieldname].format
        decode = _decode_positions if type(fmt) is ArchivePositions else fmt.decode_positions
        out: Scores = {}
        slop = q.slop
        # A start position survives while every next word is found right after it; later
        # words are decoded only for documents that still qualify.
        for d in sorted(candidates):
            starts = decode(raw[0][d])
            for i in range(1, len(words)):
                at = set(decode(raw[i][d]))
                starts = [p for p in starts if any(p + i + k in at for k in range(slop))]
                if not starts:
                    break
            if starts:
                out[d] = sum(sc[d] for sc in per_word)
        return out


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


def _term_docs(searcher: Searcher, fieldname: str, value: str) -> set[int]:
    return set(searcher.docs_for_query(wq.Term(fieldname, value)))


def _match_shard(
    view: ShardView,
    query: SearchQuery,
    compiled: CompiledQuery,
    stats: GlobalStats | None,
    sort: str,
) -> tuple[Sequence[int], dict[int, float] | None, bool]:
    """Return the matching document numbers of one shard and their scores.

    The third item tells whether the documents are already in (date_field, id) order.
    """
    cache = view.cache
    searcher = cache.searcher
    lo, hi = _bounds(query)
    f = query.date_field
    date_needed = lo is not None or hi is not None
    if date_needed and f == "created_at":
        if (lo is None or lo <= view.lo_us) and (hi is None or hi >= view.hi_us):
            date_needed = False
    docs: Sequence[int]
    scores: dict[int, float] | None = None
    in_order = False
    if compiled.query is None:
        if date_needed:
            order, keys, _rank = cache.order(f)
            i = 0 if lo is None else bisect_left(keys, lo)
            j = len(keys) if hi is None else bisect_right(keys, hi)
            docs = order[i:j]
            in_order = True
        else:
            docs = cache.live
        date_needed = False
    else:
        assert stats is not None
        result = Evaluator(cache, stats, scored=sort == "relevance").run(compiled.query)
        if sort == "relevance":
            scores = result
        docs = sorted(result)
    if date_needed:
        dates = cache.dates[f]
        lo_ = -(2**63) if lo is None else lo
        hi_ = 2**63 - 1 if hi is None else hi
        docs = [d for d in docs if lo_ <= dates[d] <= hi_]
    for fieldname, value in (("customer_id", query.customer_id), ("owner", query.owner)):
        if value is not None:
            allowed = _term_docs(searcher, fieldname, value)
            docs = [d for d in docs if d in allowed]
    for values, names, ords in (
        (query.categories, cache.cat_names, cache.cat_ord),
        (query.kinds, cache.kind_names, cache.kind_ord),
    ):
        if values:
            wanted = {i for i, n in enumerate(names) if n in values}
            if len(wanted) == 1:
                (w,) = wanted
                docs = [d for d in docs if ords[d] == w]
            else:
                docs = [d for d in docs if ords[d] in wanted]
    return docs, scores, in_order


def _top_by_date(
    view: ShardView, docs: Sequence[int], in_order: bool, f: str, k: int, newest: bool
) -> list[tuple[int, str, int]]:
    cache = view.cache
    order, _keys, rank = cache.order(f)
    if in_order:
        picked = list(docs[-k:])[::-1] if newest else list(docs[:k])
    elif newest:
        picked = heapq.nlargest(k, docs, key=rank.__getitem__)
    else:
        picked = heapq.nsmallest(k, docs, key=rank.__getitem__)
    dates = cache.dates[f]
    return [(dates[d], cache.record_id(d), d) for d in picked]


def _top_by_score(
    view: ShardView, docs: Sequence[int], scores: dict[int, float], k: int
) -> list[tuple[float, str, int]]:
    cache = view.cache
    if len(docs) <= k:
        picked = list(docs)
    else:
        kth = heapq.nlargest(k, (scores[d] for d in docs))[-1]
        picked = [d for d in docs if scores[d] >= kth]
    rows = [(-scores[d], cache.record_id(d), d) for d in picked]
    rows.sort()
    return rows[:k]


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
        if not docs:
            continue
        total += len(docs)
        everything = docs is view.cache.live
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
            if docs:
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
        if not docs:
            continue
        rank = view.cache.order(f)[2]
        ordered = array("i", docs if in_order else sorted(docs, key=rank.__getitem__))
        streams.append(_date_stream(view, index_of[view.name], ordered, f, newest))
    for _dt, rid, shard in heapq.merge(*streams, reverse=newest):
        shards.append(shard)
        record_ids.append(rid)
    return MatchOrder(names, shards, record_ids, None)


def _date_stream(
    view: ShardView, shard: int, ordered: array[int], f: str, newest: bool
) -> Iterator[tuple[int, str, int]]:
    """One shard's matches as ``(date, id, shard)`` in (date, id) order (reversed for newest)."""
    dates, record_id = view.cache.dates[f], view.cache.record_id
    for d in reversed(ordered) if newest else ordered:
        yield dates[d], record_id(d), shard


# --- snippets -------------------------------------------------------------------------------


def _match_spans(text: str, terms: set[str], patterns: list[re.Pattern[str]]) -> list[list[int]]:
    spans: list[list[int]] = []
    for term, _pos, s, e in iter_tokens(text):
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
