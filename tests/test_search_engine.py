"""Search engine internals against brute force: phrases, deleted documents, posting shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.index import SearchIndex
from indexer.query import CompiledQuery
from indexer.search import SearchQuery
from indexer.snippets import make_snippet
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
