"""Columns and deletions read in bulk equal what Whoosh's own readers return, value by value."""

from __future__ import annotations

from pathlib import Path

from whoosh.codec.whoosh3 import LENGTHS_COLUMN, _lenfield

from indexer.columns import byte_strings, live_docs, numeric_values, ordinals
from indexer.index import SearchIndex
from indexer.schema import DATE_FIELDS, date_column
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
