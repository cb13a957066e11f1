"""Search engine internals against brute force: phrases, deleted documents, posting shapes."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from whoosh import index as windex

from indexer.errors import IndexUnavailable
from indexer.search import SearchQuery
from indexer.search.dates import parse_timestamp
from indexer.whoosh import matchsets
from indexer.whoosh.analysis import iter_tokens
from indexer.whoosh.documents import shard_key
from indexer.whoosh.evaluate import Evaluator
from indexer.whoosh.expansion import _SEGMENT_TERMS
from indexer.whoosh.index import SearchIndex
from indexer.whoosh.postings import POSTING_CACHE, PostingCache
from indexer.whoosh.query import CompiledQuery, compile_query
from indexer.whoosh.schema import PAIR_FIELDS, build_schema
from indexer.whoosh.shards import _SEGMENT_DF, TERM_CACHE, _alike_documents
from indexer.whoosh.snippets import make_long_snippet, make_snippet
from tests.test_search import (
    AND,
    AT,
    BY_ID,
    CORPUS,
    NOT,
    OR,
    Pred,
    all_pages,
    brute_facets,
    contains,
    micros,
    phrase,
    word,
)

PHRASES: list[tuple[str, Pred]] = [
    ('"refund request"', phrase("refund", "request")),
    ('"customer refund request"', phrase("customer", "refund", "request")),
    ('"refund refund"', phrase("refund", "refund")),
    (
        '"order delayed" OR "payment paid"',
        OR(phrase("order", "delayed"), phrase("payment", "paid")),
    ),
    ('"refund request" NOT invoice', AND(phrase("refund", "request"), NOT(word("invoice")))),
    ("开具发票", contains("开具发票")),
    ("退款单", contains("退款单")),
]


@pytest.fixture(scope="module")
def deleted_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchIndex, set[str]]:
    ix = SearchIndex.open(tmp_path_factory.mktemp("deleted"))
    for i in range(0, len(CORPUS), 500):
        ix.add(CORPUS[i : i + 500])
    gone = [rid for i, rid in enumerate(sorted(BY_ID)) if i % 7 == 3]
    ix.delete(gone)
    return ix, set(BY_ID) - set(gone)


def brute_ids(alive: set[str], pred: Pred | None) -> list[str]:
    rows = sorted((micros(BY_ID[rid][0]["created_at"]), rid) for rid in alive)
    return [rid for _d, rid in rows if pred is None or pred(rid)]


@pytest.mark.parametrize(("q", "pred"), PHRASES, ids=[p[0] for p in PHRASES])
def test_phrases_match_brute_force_with_deleted_documents(
    deleted_index: tuple[SearchIndex, set[str]], q: str, pred: Pred
) -> None:
    ix, alive = deleted_index
    expected = brute_ids(alive, pred)
    assert expected, f"{q} matches nothing; the corpus should exercise it"
    ids, pages = all_pages(ix, SearchQuery(q=q, per_page=100, sort="relevance"))
    assert sorted(ids) == sorted(expected)
    assert pages[0].total == len(expected)
    assert pages[0].facets == brute_facets(expected, "created_at")
    scored = [(h.score, h.id) for p in pages for h in p.hits]
    assert scored == sorted(scored, key=lambda s: (-s[0], s[1]))


@pytest.mark.parametrize(
    ("q", "pred"),
    [
        (None, None),
        ("refund", word("refund")),
        ("warranty OR repair", OR(word("warranty"), word("repair"))),
        ("refund NOT invoice", AND(word("refund"), NOT(word("invoice")))),
        ("NOT refund", NOT(word("refund"))),
        ("refu*", word("refund")),
        ("退款", contains("退款")),
    ],
)
@pytest.mark.parametrize("sort", ["relevance", "newest", "oldest"])
def test_deleted_documents_never_match(
    deleted_index: tuple[SearchIndex, set[str]], q: str | None, pred: Pred | None, sort: str
) -> None:
    ix, alive = deleted_index
    query = SearchQuery(q=q or "", sort=sort, per_page=100)
    expected = brute_ids(alive, pred)
    ids, pages = all_pages(ix, query)
    assert pages[0].total == len(expected)
    assert pages[0].facets == brute_facets(expected, "created_at")
    if sort == "relevance" and q:
        assert sorted(ids) == sorted(expected)
    else:
        assert ids == (expected if sort == "oldest" else expected[::-1])
    assert [h.id for h in ix.iter_hits(query)] == ids


def test_posting_lists_of_every_shape(tmp_path: Path) -> None:
    """Dense lists (one-byte gaps), sparse ones (wide gaps), short inlined ones, repeats."""
    base = CORPUS[0][0]
    docs = []
    for i in range(3000):
        words = ["alpha"]
        if i % 300 == 0:
            words.append("beta")  # gaps over 255 documents
        if i % 1000 == 7:
            words.append("gamma")  # a few postings, inlined in the term info
        if i % 3 == 0:
            words += ["alpha", "beta", "alpha"]  # several positions, a phrase inside
        body = " ".join(words)
        record = {**base, "id": f"S{i:05d}", "body": body, "created_at": "2021-03-01T00:00:00Z"}
        docs.append((record, AT))
    ix = SearchIndex.open(tmp_path)
    ix.add(docs[:1700])
    ix.add(docs[1700:])  # a second segment, so document numbers carry a base
    bodies = {r["id"]: r["body"].split() for r, _ in docs}

    def count(pred: Pred) -> int:
        return sum(1 for rid in bodies if pred(rid))

    def has(w: str) -> Pred:
        return lambda rid: w in bodies[rid]

    def adjacent(a: str, b: str) -> Pred:
        return lambda rid: any(
            pair == (a, b) for pair in zip(bodies[rid], bodies[rid][1:], strict=False)
        )

    assert ix.search(SearchQuery(q="alpha")).total == 3000
    assert ix.search(SearchQuery(q="beta")).total == count(has("beta"))
    assert ix.search(SearchQuery(q="gamma")).total == count(has("gamma"))
    assert ix.search(SearchQuery(q='"alpha beta"')).total == count(adjacent("alpha", "beta"))
    assert ix.search(SearchQuery(q='"beta alpha"')).total == count(adjacent("beta", "alpha"))
    assert ix.search(SearchQuery(q='"alpha gamma"')).total == count(adjacent("alpha", "gamma"))
    hits = ix.search(SearchQuery(q="alpha", per_page=100)).hits
    # three alphas outscore one alone; equal documents tie, by id
    assert all(int(h.id[1:]) % 3 == 0 for h in hits[:50])
    assert hits == sorted(hits, key=lambda h: (-h.score, h.id))


def test_snippet_of_a_long_body_stops_after_its_window() -> None:
    text = "a refund " + "filler " * 150_000 + "refund at the end"
    compiled = CompiledQuery(None, {"body": {"refund"}}, [])
    snippet = make_snippet(text, "body", compiled)
    assert snippet is not None
    assert snippet.startswith("a <mark>refund</mark> filler")
    assert snippet.endswith("…") and snippet.count("<mark>") == 1
    late = make_snippet("filler " * 1000 + "refund, refund", "body", compiled)
    assert late is not None and late.startswith("…") and late.count("<mark>") == 2


def test_a_snippet_keeps_the_words_before_its_match() -> None:
    compiled = CompiledQuery(None, {"body": {"xsstoken"}}, [])
    text = '<img src=x onerror=alert(1)>\n"><svg onload=alert(2)> javascript:alert(3) xsstoken'
    snippet = make_snippet(text, "body", compiled)
    # 50 characters and more before the match, from a word's start: not `…<mark>xsstoken…`
    assert snippet == ("…onerror=alert(1)&gt;\n&quot;&gt;&lt;svg onload=alert(2)&gt; "
                       "javascript:alert(3) <mark>xsstoken</mark>")
    short = make_snippet("one two three four five six seven eight nine ten eleven twelve "
                         "xsstoken", "body", compiled)
    assert short == "…three four five six seven eight nine ten eleven twelve <mark>xsstoken</mark>"
    head = 20_000
    far = make_long_snippet("filler " * 5000 + "the parcel was lost xsstoken", "body",
                            compiled, head)
    assert far is not None and "the parcel was lost <mark>xsstoken</mark>" in far


def test_deletions_reuse_column_caches_and_stay_exact(tmp_path: Path) -> None:
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:1500])
    alive = {r["id"] for r, _ in CORPUS[:1500]}
    query = SearchQuery(q="", sort="oldest", per_page=100)
    ix.search(query)  # build the shards' caches
    before = {v.name: v.cache for v in ix._current_snapshot().views}
    gone = sorted(alive)[::9]
    for rid in gone:  # one commit each, as restores do
        ix.delete([rid])
    alive -= set(gone)
    ids, pages = all_pages(ix, query)
    assert ids == brute_ids(alive, None)
    assert pages[0].total == len(alive)
    assert pages[0].facets == brute_facets(sorted(alive), "created_at")
    after = {v.name: v.cache for v in ix._current_snapshot().views}
    changed = [name for name in after if after[name] is not before[name]]
    assert changed, "the deletions should have given the shards new searchers"
    for name in changed:  # same segments: the per-document columns were taken over, not reread
        assert after[name].dates is before[name].dates
        assert after[name].cat_ord is before[name].cat_ord
    ix.close()


STACKED_BODIES = [
    "Li Wei sent INV-2023-004512 invoice to li.wei@example.com today",
    "li.wei@example.com wrote: refund request for SO-004512 please",
    "please update the invoice INV-2023-004512 invoice now, Li Wei",
    "Wei Li asked to update 2023 invoice records; please update them",
    "客户申请退款单，请尽快处理退款单 refund request",
    "退款 refund 退款单 please update",
    "update the records and update the invoice",  # the inner word twice, the phrase there
    "update the records, then the invoice update",  # both pairs, the inner word twice, no phrase
]
STACKED_PHRASES = [
    '"li wei"',  # both words are parts of the e-mail address too, at one position
    '"wei sent"',
    '"please update"',
    '"update the invoice"',
    '"2023 invoice"',  # a digit term: found from positions, not pairs
    '"invoice inv-2023-004512"',
    '"refund request"',
    '"退款 refund"',
    '"请尽快处理"',
    "退款单",
    '"please update" OR "refund request"',
]


def _stacked_corpus() -> list[tuple[dict[str, Any], datetime]]:
    base = CORPUS[0][0]
    extra = [
        ({**base, "id": f"P{i:04d}", "customer_id": f"C{i % 7}", "subject": "note", "body": body},
         AT)
        for i, body in enumerate(STACKED_BODIES * 3)
    ]
    return list(CORPUS[:1200]) + extra


@pytest.mark.parametrize("q", STACKED_PHRASES)
def test_phrases_over_stacked_tokens_match_brute_force(tmp_path: Path, q: str) -> None:
    docs = _stacked_corpus()
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(docs)
    bodies = {str(r["id"]): r for r, _ in docs}
    parsed = ix.search(SearchQuery(q=q, per_page=100))
    ids, _pages = all_pages(ix, SearchQuery(q=q, per_page=100))
    expected = sorted(rid for rid in bodies if _phrase_pred(q)(rid, bodies))
    assert expected, f"{q} matches nothing; the corpus should exercise it"
    assert sorted(ids) == expected
    assert parsed.total == len(expected)
    ix.close()


def _phrase_pred(q: str) -> Callable[[str, dict[str, dict[str, Any]]], bool]:
    """Brute force over iter_tokens positions for the phrase queries above."""
    alternatives = [a.strip().strip('"') for a in q.split(" OR ")]
    wanted = [[t for t, _p, _s, _e in iter_tokens(a, "query")] for a in alternatives]

    def match(rid: str, records: dict[str, dict[str, Any]]) -> bool:
        for f in ("subject", "body"):
            at: dict[str, set[int]] = {}
            for t, p, _s, _e in iter_tokens(str(records[rid][f] or "")):
                at.setdefault(t, set()).add(p)
            for terms in wanted:
                if any(
                    all(p + i in at.get(t, ()) for i, t in enumerate(terms))
                    for p in at.get(terms[0], ())
                ):
                    return True
        return False

    return match


def test_shards_without_word_pairs_answer_phrases_the_same(tmp_path: Path) -> None:
    """An index made before the word-pair fields: same matches and same scores, from positions."""
    docs = _stacked_corpus()
    with_pairs = SearchIndex.open(tmp_path / "new")
    with_pairs.add(docs)
    old = SearchIndex.open(tmp_path / "old")
    gen = old._current_gen()
    schema = build_schema()
    for name in PAIR_FIELDS:
        schema.remove(name)
    for name in {shard_key(parse_timestamp(str(r["created_at"])), "year") for r, _ in docs}:
        (gen / name).mkdir()
        windex.create_in(str(gen / name), schema)
    old.add(docs)
    chosen = with_pairs._chosen_pair_terms(with_pairs._current_gen())
    assert {b"pleas", b"updat", b"refund", b"request"} <= chosen
    assert any(
        ("body_pairs", b"pleas updat") in v.cache.searcher.reader()
        for v in with_pairs._current_snapshot().views
    )
    assert all(PAIR_FIELDS[0] not in v.cache.searcher.schema for v in old._current_snapshot().views)
    for q in [*STACKED_PHRASES, *(q for q, _pred in PHRASES)]:
        a = all_pages(with_pairs, SearchQuery(q=q, per_page=100))[1]
        b = all_pages(old, SearchQuery(q=q, per_page=100))[1]
        assert [(h.id, h.score) for p in a for h in p.hits] == [
            (h.id, h.score) for p in b for h in p.hits
        ], q
        assert a[0].total == b[0].total, q
        assert a[0].total or q not in STACKED_PHRASES, q
    with_pairs.close()
    old.close()


def test_added_documents_reread_only_new_segments(tmp_path: Path) -> None:
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:2000])
    query = SearchQuery(q="", sort="oldest", per_page=100)
    ix.search(SearchQuery(q="refund"))  # builds the caches, lengths included
    before = {v.name: v.cache for v in ix._current_snapshot().views}
    ix.add(CORPUS[2000:2040])  # one small batch, as the archive job's catch-up adds
    alive = {r["id"] for r, _ in CORPUS[:2040]}
    ids, pages = all_pages(ix, query)
    assert ids == brute_ids(alive, None)
    assert pages[0].facets == brute_facets(sorted(alive), "created_at")
    refund = all_pages(ix, SearchQuery(q="refund", per_page=100))[0]
    assert sorted(refund) == sorted(brute_ids(alive, word("refund")))
    after = {v.name: v.cache for v in ix._current_snapshot().views}
    reused = 0
    for name, cache in after.items():
        old = before.get(name)
        if old is None or cache is old:
            continue
        for key, part in cache._parts.items():
            if key in old._parts:
                assert part is old._parts[key]  # the columns were not read again
                reused += 1
        assert len(cache.cat_ord) == cache.size and len(cache.lengths("body")) == cache.size
    assert reused, "the batch should have left the shards' first segments in place"
    ix.close()


def test_cached_posting_lists_give_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queries answered from decoded posting lists kept in memory, before and after deletions."""
    monkeypatch.setattr(POSTING_CACHE, "min_postings", 1)
    POSTING_CACHE.clear()
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:1500])
    queries = ["refund", "refund NOT invoice", "warranty OR repair", "退款", '"refund request"']
    alive = {r["id"] for r, _ in CORPUS[:1500]}

    def answers() -> dict[str, list[tuple[str, float]]]:
        return {
            q: [
                (h.id, h.score)
                for p in all_pages(ix, SearchQuery(q=q, per_page=100))[1]
                for h in p.hits
            ]
            for q in queries
        }

    first = answers()
    assert POSTING_CACHE.used > 0
    assert answers() == first  # from the cache
    gone = sorted(alive)[::5]
    ix.delete(gone)
    alive -= set(gone)
    for q, pred in [("refund", word("refund")), ("退款", contains("退款"))]:
        ids, _pages = all_pages(ix, SearchQuery(q=q, per_page=100))
        assert sorted(ids) == sorted(brute_ids(alive, pred))
    small = PostingCache(budget_bytes=8192, min_postings=1)
    for n in range(50):
        postings = np.arange(n * 10, n * 10 + 100, dtype=np.int64)
        small.put(("seg", "body", str(n).encode()), postings, np.ones(100), 0)
    assert 0 < small.used <= 8192
    got = small.get(("seg", "body", b"49"), 7)
    assert got is not None and got[0].tolist() == list(range(497, 597))
    assert small.get(("seg", "body", b"0"), 0) is None  # the oldest were dropped
    POSTING_CACHE.clear()
    ix.close()


def test_a_search_on_a_snapshot_outlives_its_replacement(tmp_path: Path) -> None:
    """A search paused at a checkpoint (a restore's deletion goes first) or the freshener's
    warm-up runs on a snapshot that another step of the same process then replaces: the
    readers of a segment gone meanwhile stay open for it (they were closed under it, and the
    search failed with a 503)."""
    ix = SearchIndex.open(tmp_path / "ix")
    first, second = CORPUS[:400], CORPUS[400:800]
    ix.add(first, merge=False)
    ix.add(second, merge=False)
    query = SearchQuery(q="refund OR invoice", per_page=100)
    before = ix.search(query)
    paused = ix._current_snapshot()
    other = SearchIndex.open(tmp_path / "ix")  # another process: its segment goes away whole
    assert other.delete([r["id"] for r, _at in first]) == len(first)
    other.merge_segments()
    other.close()
    replacing = ix._current_snapshot()  # as the urgent step's own search would
    assert replacing is not paused
    page = ix._run(paused, query, 0.0)  # the paused search goes on, on what it had
    assert [h.id for h in page.hits] == [h.id for h in before.hits]
    assert page.total == before.total
    assert {h.id for h in ix.search(query).hits} <= {r["id"] for r, _at in second}
    ix.close()


def test_a_replaced_generations_readers_are_closed_once_their_grace_is_over(
    tmp_path: Path,
) -> None:
    """After a rebuild elsewhere, the old generation's files are deleted: the next searches
    close their readers once no search can still be on them, not at the next change only."""
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:300])
    query = SearchQuery(q="refund", per_page=5)
    ix.search(query)
    old_leaves = [leaf for v in ix._current_snapshot().views
                  for leaf, _base in v.cache.searcher.reader().leaf_readers()]
    other = SearchIndex.open(tmp_path / "ix")
    other.rebuild(CORPUS[:300])  # a new generation; the old one's folder is removed
    other.close()
    ix.search(query)
    assert ix._retired and not any(leaf.is_closed for leaf in old_leaves)  # in their grace
    ix._retired_grace = 0.0
    ix.search(query)
    assert ix._retired == [] and all(leaf.is_closed for leaf in old_leaves)
    ix.close()


def test_term_cache_answers_repeats_and_follows_deletions(tmp_path: Path) -> None:
    """A term's gathered postings and scores are kept per shard cache: a repeated query takes
    them from the cache (shared, so read-only), and a deletion, which gives the shard a new
    cache, is seen by the next query."""
    TERM_CACHE.clear()
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:1500])
    query = SearchQuery(q="refund OR invoice", per_page=100)

    def scored() -> list[tuple[str, float]]:
        return [(h.id, h.score) for p in all_pages(ix, query)[1] for h in p.hits]

    first = scored()
    kept = len(TERM_CACHE)
    assert first and kept > 0
    assert scored() == first and len(TERM_CACHE) == kept  # nothing computed again
    view = next(v for v in ix._current_snapshot().views if v.cache.size)
    ids, weights = view.cache.term_postings(
        "body", b"refund", lambda: pytest.fail("read again although cached")
    )
    assert len(ids) and not ids.flags.writeable and not weights.flags.writeable
    gone = {rid for rid, _score in first[::3]}
    assert ix.delete(sorted(gone)) == len(gone)
    after = scored()
    assert {rid for rid, _ in after} == {rid for rid, _ in first} - gone
    # the statistics count the documents left, as an index built of them alone would
    left = SearchIndex.open(tmp_path / "left")
    left.add([(r, at) for r, at in CORPUS[:1500] if r["id"] not in gone])
    assert dict(after) == {h.id: h.score for p in all_pages(left, query)[1] for h in p.hits}
    assert dict(after) != {rid: s for rid, s in first if rid not in gone}
    left.close()
    # the shard's new cache took the former one's entries, less the deleted documents
    new = next(v for v in ix._current_snapshot().views if v.name == view.name)
    assert new.cache is not view.cache and new.cache.live_mask is not None
    inherited = new.cache.term_postings("body", b"refund", lambda: pytest.fail("read again"))
    fresh = new.cache.read_postings("body", b"refund", None)
    assert [a.tolist() for a in inherited] == [a.tolist() for a in fresh]
    assert len(fresh[0]) < len(ids)
    # a batch appends a segment: the former entries are kept, only the new segment is read
    ix.add(CORPUS[1500:1900], merge=False)
    grown = next(v for v in ix._current_snapshot().views if v.name == new.name)
    assert len(grown.cache.segments) > len(new.cache.segments), "no segment was added"
    assert grown.cache.segments[: len(new.cache.segments)] == new.cache.segments
    shard = grown.cache
    starts: list[int] = []

    def read(start: int) -> tuple[Any, Any]:
        starts.append(start)
        return shard.read_postings("body", b"refund", None, start)

    got = grown.cache.term_postings("body", b"refund", read)
    whole = shard.read_postings("body", b"refund", None)
    assert [a.tolist() for a in got] == [a.tolist() for a in whole]
    assert starts == [new.cache.size]
    # a merge replaces the shard's last segments: the entries of the segments before them stay
    year = [(r, at) for r, at in CORPUS[1900:] if r["created_at"].startswith(grown.name)]
    for n in range(10):  # ten small segments, a tier the policy merges
        batch = [({**r, "body": r["body"] + " refund"}, at) for r, at in year[n * 3 : n * 3 + 3]]
        ix.add(batch, merge=False)
    before = next(v for v in ix._current_snapshot().views if v.name == grown.name)
    kept = before.cache.live_postings("body", b"refund")
    assert ix.merge_segments()
    merged = next(v for v in ix._current_snapshot().views if v.name == grown.name)
    alike = _alike_documents(before.cache.segments, merged.cache.segments)
    assert 0 < alike < merged.cache.size and merged.cache.segments != before.cache.segments
    assert kept[0][-1] >= alike  # the former entry reaches into the segments merged away
    shard = merged.cache
    starts.clear()
    got = merged.cache.term_postings("body", b"refund", read)
    whole = shard.read_postings("body", b"refund", None)
    assert [a.tolist() for a in got] == [a.tolist() for a in whole]
    assert starts == [alike]
    TERM_CACHE.clear()
    ix.close()


def test_caches_let_go_of_replaced_segments_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries that only a replaced segment or a shard's former cache could use are dropped at
    the change, not left to fill the caches: after many batches, merges, deletions and the
    same searches after each, every kept entry belongs to a live segment or cache."""
    monkeypatch.setattr(POSTING_CACHE, "min_postings", 1)
    for cache in (POSTING_CACHE._lru, _SEGMENT_DF, _SEGMENT_TERMS, TERM_CACHE):
        cache.clear()
    ix = SearchIndex.open(tmp_path / "ix")
    queries = [SearchQuery(q=q, per_page=20) for q in ("refund", "invoice OR 退款", "refu*")]
    ix.add(CORPUS[:600])
    merged = 0
    for n in range(12):
        batch = CORPUS[600 + n * 30 : 630 + n * 30]
        ix.add(batch, merge=False)
        for query in queries:
            ix.search(query)
        if n % 3 == 2:
            merged += ix.merge_segments()
        if n % 4 == 3:
            ix.delete([r["id"] for r, _at in batch[:5]])
        for query in queries:
            ix.search(query)
    assert merged, "no segment was merged away: the test would show nothing"
    caches = [view.cache for view in ix._current_snapshot().views]
    live = {key[0] for cache in caches for key in cache.segments}
    numbers = {n for c in caches for n in (c.number, *(a for a, _ in c._ancestors))}
    for cache in (POSTING_CACHE._lru, _SEGMENT_DF, _SEGMENT_TERMS):
        kept = {key[0] for key in cache._entries}
        assert kept and kept <= live
    kept_numbers = {key[0] for key in TERM_CACHE._entries}
    assert kept_numbers and kept_numbers <= numbers
    def answers() -> list[list[tuple[str, float]]]:
        return [[(h.id, h.score) for h in ix.search(query).hits] for query in queries]

    kept_answers = answers()  # what is kept answers as caches filled afresh do
    for cache in (POSTING_CACHE._lru, _SEGMENT_DF, _SEGMENT_TERMS, TERM_CACHE):
        cache.clear()
    assert kept_answers == answers() and all(kept_answers)
    ix.close()


def test_prefix_expansions_see_new_segments(tmp_path: Path) -> None:
    """Expansions are kept per segment: terms that a later batch brings are found at once."""
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:600])

    def found(q: str) -> list[str]:
        return sorted(all_pages(ix, SearchQuery(q=q, per_page=100))[0])

    assert found("zebraf*") == []  # expanded (to nothing) and kept
    warranty = found("warrant*")
    assert warranty
    new = [
        ({**record, "id": f"Z{i}", "body": f"{record['body']} zebrafish zebrafinch"}, at)
        for i, (record, at) in enumerate(CORPUS[600:640])
    ]
    ix.add(new)
    assert found("zebraf*") == sorted(f"Z{i}" for i in range(40))
    assert found("subject:zebraf*") == []
    assert set(found("warrant*")) >= set(warranty)
    ix.close()


def test_tied_scores_page_by_record_id(tmp_path: Path) -> None:
    """Where more matches tie than a page holds, pages take the smallest record ids first,
    whatever order the documents were indexed in."""
    ix = SearchIndex.open(tmp_path / "ix")
    record, at = CORPUS[0]
    for segment in range(3):  # ids spread over three segments
        ix.add(
            [
                ({**record, "id": f"T{i:04d}", "subject": "tie", "body": "exactly tied words"}, at)
                for i in range(300, 0, -1)
                if i % 3 == segment
            ],
            merge=False,
        )
    assert max(len(v.cache.segments) for v in ix._current_snapshot().views) == 3
    ids, pages = all_pages(ix, SearchQuery(q='"tied words"', per_page=7))
    assert ids == [f"T{i:04d}" for i in range(1, 301)]
    assert len({h.score for p in pages for h in p.hits}) == 1
    ix.close()


DENSE_QUERIES = [
    "refund",
    "refund invoice",
    "refund OR invoice OR warranty",
    "(refund OR invoice) customer",
    "refund NOT invoice",
    "NOT refund",
    "refund ANDMAYBE invoice",
    "refund ANDNOT (invoice OR warranty)",
    '"refund request" OR payment',
    "ref* customer",
    "退款 OR 发票",
]


def test_dense_and_sparse_evaluation_give_bit_equal_scores(
    deleted_index: tuple[SearchIndex, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every query gives the same documents and bit-equal scores whichever way its sets are
    held: all dense, all sparse, or as chosen by size."""
    ix, _alive = deleted_index
    snap = ix._current_snapshot()
    readers = [v.cache.searcher.reader() for v in snap.views]

    def evaluate(share: int) -> dict[tuple[str, str], tuple[list[int], bytes]]:
        monkeypatch.setattr(matchsets, "DENSE_SHARE", share)
        out = {}
        for q in DENSE_QUERIES:
            compiled = compile_query(q, ix._parser, readers)
            assert compiled.query is not None
            for view in snap.views:
                got = Evaluator(view.cache, snap.stats, True, view.pair_terms).run(compiled.query)
                out[q, view.name] = (got.docs.tolist(), got.scores.tobytes())
        return out

    chosen = evaluate(matchsets.DENSE_SHARE)
    assert any(docs for docs, _scores in chosen.values())
    assert evaluate(0) == chosen  # never dense
    assert evaluate(10**9) == chosen  # always dense


def test_a_shard_another_process_creates_is_found_by_deletes(tmp_path: Path) -> None:
    """Shard lists are kept until the generation's folder changes: a shard that another
    process's index creates (a record of a new year) is still found when deleting its records."""
    ix = SearchIndex.open(tmp_path / "ix")
    old_year = [(r, at) for r, at in CORPUS if r["created_at"].startswith("2021")][:50]
    ix.add(old_year)
    assert ix.delete([old_year[0][0]["id"]]) == 1  # lists the shards once
    other = SearchIndex.open(tmp_path / "ix")
    record, at = CORPUS[0]
    new = {**record, "id": "NEW-1", "created_at": "2031-05-01T00:00:00Z"}
    other.add([(new, at)])
    assert ix.delete(["NEW-1"]) == 1
    assert "NEW-1" not in set(other.iter_ids()) and "NEW-1" not in set(ix.iter_ids())
    ix.close()
    other.close()


# Whoosh leaves the damaged TOC's file for the garbage collector when it cannot read it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_search_engine_damaged_shard_raises_index_unavailable_not_whoosh_errors(
    tmp_path: Path,
) -> None:
    ix = SearchIndex.open(tmp_path)
    ix.add(CORPUS[:20])
    ix.close()
    for toc in tmp_path.rglob("*.toc"):
        toc.write_bytes(b"garbage")
    ix = SearchIndex.open(tmp_path)
    try:
        for call in (
            ix.check_readable,
            lambda: ix.search(SearchQuery(q="refund")),
            lambda: list(ix.iter_ids()),
            ix.doc_count,
        ):
            with pytest.raises(IndexUnavailable, match="search index failed") as raised:
                call()
            assert type(raised.value.__cause__).__module__.startswith("whoosh")
            del raised
    finally:
        ix.close()
        gc.collect()  # collect the leaked files here, where their warning is expected


def test_erasure_drops_the_erased_words_from_the_pair_terms(tmp_path: Path) -> None:
    """A generation whose pair terms list one customer's word (chosen before pair terms needed
    three customers) loses it when that customer's records are erased; phrases still match."""
    base = CORPUS[0][0]
    docs = [
        ({**base, "id": f"Z{i}", "customer_id": "C-Z", "subject": "note",
          "body": f"zorblax parcel refund {i}"}, AT) for i in range(30)
    ] + [
        ({**base, "id": f"K{i}", "customer_id": f"C{i}", "subject": "note",
          "body": f"parcel refund approved {i}"}, AT) for i in range(30)
    ]
    ix = SearchIndex.open(tmp_path / "ix")
    gen = ix._current_gen()
    meta = ix._load_meta(gen)
    meta["pair_terms"] = ["zorblax", "parcel", "refund"]  # as an older choice could be
    (gen / "META").write_text(json.dumps(meta))
    ix.add(docs)
    other = SearchIndex.open(tmp_path / "ix")  # another process, its pair terms read before
    assert other.search(SearchQuery(q='"parcel refund"')).total == 60
    assert b"zorblax" in other._chosen_pair_terms(gen)

    ix.erase([f"Z{i}" for i in range(30)])

    assert json.loads((gen / "META").read_text())["pair_terms"] == ["parcel", "refund"]
    files = [p for p in (tmp_path / "ix").rglob("*") if p.is_file()]
    assert [p for p in files if b"zorblax" in p.read_bytes()] == []
    for index in (ix, other):
        assert index._chosen_pair_terms(gen) == {b"parcel", b"refund"}
        assert index.search(SearchQuery(q='"parcel refund"')).total == 30
        assert index.search(SearchQuery(q="zorblax")).total == 0
    ix.add([({**base, "id": "Z99", "customer_id": "C-Y", "subject": "note",
              "body": "zorblax parcel again"}, AT)])
    for index in (ix, other):
        assert index.search(SearchQuery(q='"zorblax parcel"')).total == 1
    ix.close()
    other.close()


def test_an_index_written_before_the_engine_moved_packages_still_opens(tmp_path: Path) -> None:
    # Such an index's table of contents names the tokenizers' old module, `indexer.analysis`.
    index = SearchIndex.open(tmp_path / "index")
    index.add([(CORPUS[0][0], CORPUS[0][1])])
    index.close()
    tocs = list((tmp_path / "index").rglob("*.toc"))
    assert tocs
    for toc in tocs:
        toc.write_bytes(
            rename_schema_module(toc.read_bytes(), b"indexer.whoosh.analysis", b"indexer.analysis")
        )
    index = SearchIndex.open(tmp_path / "index")
    try:
        assert [h.id for h in index.search(SearchQuery(q=f"id:{CORPUS[0][0]['id']}")).hits] == [
            CORPUS[0][0]["id"]
        ]
    finally:
        index.close()


def rename_schema_module(toc: bytes, old: bytes, new: bytes) -> bytes:
    """A Whoosh table of contents whose pickled schema names module `new` instead of `old`."""
    start = 14  # three one-byte varints, two ints, three one-byte varints: then the schema
    length, shift, at = 0, 0, start
    while True:  # Whoosh's varint: 7 bits a byte, least significant first
        byte = toc[at]
        length |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            break
    schema = toc[at : at + length]
    assert schema.startswith(b"\x80") and b"c" + old + b"\n" in schema
    renamed = schema.replace(b"c" + old + b"\n", b"c" + new + b"\n")
    size, varint = len(renamed), b""
    while True:
        varint += bytes([(size & 0x7F) | (0x80 if size > 0x7F else 0)])
        size >>= 7
        if not size:
            break
    return toc[:start] + varint + renamed + toc[at + length :]
