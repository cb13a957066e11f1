"""Columns and deletions read in bulk equal what Whoosh's own readers return, value by value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, _lenfield

from indexer.search import SearchQuery
from indexer.search.types import DATE_FIELDS
from indexer.whoosh.columns import byte_strings, live_docs, numeric_values, ordinals
from indexer.whoosh.index import SearchIndex
from indexer.whoosh.schema import date_column
from indexer.whoosh.shards import _date_id_order, _merge_orders
from tests.test_search import CORPUS


def test_bulk_columns_equal_whoosh_readers(tmp_path: Path) -> None:
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:1200])
    ix.add(CORPUS[1200:1500])  # a second segment per shard
    ix.delete([r["id"] for r, _ in CORPUS[:1500:11]])
    checked = 0
    for view in ix._current_snapshot().views:
        reader = view.cache.searcher.reader()
        assert live_docs(reader).tolist() == list(reader.all_doc_ids())
        for leaf, _base in reader.leaf_readers():
            n = leaf.doc_count_all()
            for name in ("category", "kind", "id"):
                names, ords = ordinals(leaf.column_reader(name, translate=False), n)
                assert [names[o] for o in ords] == list(leaf.column_reader(name))
                raw = byte_strings(leaf.column_reader(name, translate=False), n)
                assert [v.decode() for v in raw.tolist()] == list(leaf.column_reader(name))
            for field in DATE_FIELDS:
                column = date_column(field)
                values = numeric_values(leaf.column_reader(column, translate=False), n)
                assert values.tolist() == list(leaf.column_reader(column))
            lengths = leaf._perdoc._cached_reader(_lenfield("body"), LENGTHS_COLUMN)
            assert numeric_values(lengths, n).tolist() == list(lengths)
            checked += 1
    assert checked >= 4
    ix.close()


def test_date_order_breaks_ties_by_record_id_like_a_full_sort() -> None:
    """Sorting by date alone, then by id only where dates tie, gives the (date, id) order."""
    rng = np.random.default_rng(3)
    for size, distinct_dates in [(0, 1), (1, 1), (500, 1), (2000, 40), (5000, 5000)]:
        dates = rng.integers(0, distinct_dates, size=size).astype(np.int64) * 1_000_000
        ids = np.array([f"R-{n:05d}".encode() for n in rng.permutation(size)], dtype="S7")
        docs = np.sort(rng.choice(size * 2 or 1, size=size, replace=False)).astype(np.int64)
        by_doc = np.zeros(size * 2 or 1, dtype="S7")
        by_doc[docs] = ids
        got = _date_id_order(docs, dates, by_doc)
        expected = sorted(range(size), key=lambda i: (dates[i], ids[i]))
        assert got.tolist() == docs[expected].tolist()


def test_merging_two_date_orders_gives_the_full_sort() -> None:
    rng = np.random.default_rng(5)
    for size, distinct_dates in [(10, 1), (3000, 30), (3000, 3000)]:
        dates = rng.integers(0, distinct_dates, size=size).astype(np.int64)
        ids = np.array([f"R-{n:05d}".encode() for n in rng.permutation(size)], dtype="S7")
        docs = np.arange(size, dtype=np.int64)
        split = rng.random(size) < 0.1
        old = _date_id_order(docs[~split], dates[~split], ids)
        new = _date_id_order(docs[split], dates[split], ids)
        merged = _merge_orders(old, new, dates, ids)
        assert merged.tolist() == _date_id_order(docs, dates, ids).tolist()


def test_date_sorts_after_a_batch_match_a_freshly_opened_index(tmp_path: Path) -> None:
    """A shard whose date orders were merged from the previous ones after a batch sorts
    exactly like one opened afresh."""
    ix = SearchIndex.open(tmp_path / "ix")
    ix.add(CORPUS[:600])
    queries = [
        SearchQuery(sort=sort, date_field=field, per_page=100, page=page)
        for sort in ("oldest", "newest")
        for field in DATE_FIELDS
        for page in (1, 3)
    ]
    for q in queries:
        ix.search(q)  # the orders exist before the batch
    ix.add(CORPUS[600:900], merge=False)
    ix.delete([r["id"] for r, _ in CORPUS[:600:9]])
    fresh = SearchIndex.open(tmp_path / "ix")
    for q in queries:
        assert [h.id for h in ix.search(q).hits] == [h.id for h in fresh.search(q).hits]
    ix.close()
    fresh.close()
