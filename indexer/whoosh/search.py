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
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.search.dates import to_micros
from indexer.search.types import SearchHit, SearchPage, SearchQuery, validate
from indexer.whoosh.evaluate import Evaluator
from indexer.whoosh.matchsets import member
from indexer.whoosh.postings import Docs, Floats
from indexer.whoosh.query import CompiledQuery
from indexer.whoosh.shards import GlobalStats, ShardCache, ShardView

# --- execution ------------------------------------------------------------------------------


def _bounds(query: SearchQuery) -> tuple[int | None, int | None]:
    lo = to_micros(query.date_from) if query.date_from is not None else None
    hi = to_micros(query.date_to) if query.date_to is not None else None
    return lo, hi


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
        scored = sort == "relevance"
        result = Evaluator(cache, stats, scored, view.pair_terms).run(compiled.query)
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
            narrow(member(docs, allowed.docs))
    roots = query.wanted_roots()
    if roots is not None:
        terms = Evaluator(cache, None, scored=False)
        in_roots = [terms._term("process_id", root).docs for root in roots]
        narrow(member(docs, np.unique(np.concatenate(in_roots)) if in_roots else docs[:0]))
    for values, names, ords in (
        (query.categories, cache.cat_names, cache.cat_ord),
        (query.kinds, cache.kind_names, cache.kind_ord),
    ):
        if values:
            # Case-insensitive (category=Billing finds billing): CRMs spell a category as
            # their users typed it, and a value that matches no record only in its case would
            # silently give nothing. Each record keeps its own spelling, as the facets show.
            folded = {v.casefold() for v in values}
            wanted = [i for i, n in enumerate(names) if n.casefold() in folded]
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
            cut = (
                np.argpartition(ranks, len(docs) - k)[len(docs) - k :]
                if newest
                else (np.argpartition(ranks, k - 1)[:k])
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
        sel = np.flatnonzero(scores > kth)  # fewer than k
        ties = np.flatnonzero(scores == kth)
        need = k - len(sel)
        if len(ties) > need:  # often all of them tie (phrases, filters): the first ids only
            ties = ties[cache.smallest_ids(docs[ties], need)]
        sel = np.concatenate([sel, ties])
    else:
        sel = np.arange(n)
    order = np.lexsort((cache.ids()[docs[sel]], -scores[sel]))
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
    checkpoint: Callable[[], None] = lambda: None,
) -> SearchPage:
    """Run a checked query over the shards it needs and build one page.

    :param views: every shard of the index.
    :param query: the query.
    :param compiled: the parsed query from :func:`compile_query`.
    :param stats: collection statistics over every shard.
    :param load_hit: turns a shard document into a hit (stored fields and snippet).
    :param started: ``time.perf_counter()`` at the start, for ``took_ms``.
    :param checkpoint: called between steps (shards, hits), where the search may pause.
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
        checkpoint()
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
        for i, (s, _rid, d, view) in enumerate(score_rows[start:k]):
            if i % 10 == 0:
                checkpoint()
            hits.append(load_hit(view, d, -s, compiled))
    else:
        date_rows.sort(key=lambda r: (r[0], r[1]), reverse=newest)
        for i, (_dt, _rid, d, view) in enumerate(date_rows[start:k]):
            if i % 10 == 0:
                checkpoint()
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
