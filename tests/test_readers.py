"""Reopened searchers share unchanged segments and see exactly what a fresh searcher sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whoosh import fields
from whoosh import index as windex
from whoosh.writing import CLEAR

from indexer.whoosh.readers import close_replaced, open_searcher

SCHEMA = fields.Schema(id=fields.ID(stored=True, unique=True), body=fields.TEXT(stored=True))


def add(ix: Any, ids: range, **commit: Any) -> None:
    writer = ix.writer()
    for i in ids:
        writer.add_document(id=f"R{i:03d}", body=f"statement number{i % 3}")
    writer.commit(**commit)


def delete(ix: Any, *ids: str) -> None:
    writer = ix.writer()
    for rid in ids:
        writer.delete_by_term("id", rid)
    writer.commit()


def view(searcher: Any) -> dict[str, Any]:
    """What a searcher answers: live ids, a term's postings, counts and stored fields."""
    reader = searcher.reader()
    live = sorted(reader.stored_fields(d)["id"] for d in reader.all_doc_ids())
    return {
        "live": live,
        "statement": sorted(searcher.document_numbers(body="statement")),
        "number1": sorted(searcher.document_numbers(body="number1")),
        "doc_count": reader.doc_count(),
        "lookups": {rid: searcher.document_number(id=rid) for rid in ("R001", "R004", "R013")},
        "segments": sorted(s.segid for s in searcher.reader().segments() or ()),
    }


def test_reopening_after_deletions_additions_and_merges_matches_a_fresh_searcher(
    tmp_path: Path,
) -> None:
    ix = windex.create_in(str(tmp_path), SCHEMA)
    add(ix, range(0, 10))
    add(ix, range(10, 20), merge=False)
    searcher = open_searcher(ix)
    assert len(searcher.reader().segments()) == 2
    steps = [
        lambda: delete(ix, "R004"),  # deletions in a kept segment
        lambda: add(ix, range(20, 25), merge=False),  # a new segment
        lambda: delete(ix, "R013", "R021"),
        lambda: add(ix, range(25, 27)),  # Whoosh's default policy merges the small ones
        lambda: ix.writer().commit(optimize=True),  # every segment merged into one
        lambda: add(ix, range(0, 0), mergetype=CLEAR),  # nothing left
    ]
    for step in steps:
        step()
        assert not searcher.up_to_date()
        fresh = open_searcher(ix, searcher)
        old_leaves = [leaf for leaf, _ in searcher.reader().leaf_readers()]
        close_replaced(searcher, fresh)
        # (an empty index has no generation to compare: Whoosh's searchers are never up to date)
        assert fresh.up_to_date() or not fresh.reader().segments()
        assert view(fresh)["segments"] or step is steps[-1]
        reference = ix.searcher()
        assert view(fresh) == view(reference)
        reference.close()
        kept = {s.segid for s in fresh.reader().segments() or ()}
        for leaf in old_leaves:
            if hasattr(leaf, "segment") and leaf.segment() is not None:
                # readers of segments the shard no longer has are closed; the others live on
                assert leaf.is_closed == (leaf.segment().segid not in kept)
        searcher = fresh
    assert view(searcher)["live"] == []
    close_replaced(searcher, None)


def test_a_reopened_reader_shares_the_open_files_of_a_kept_segment(tmp_path: Path) -> None:
    ix = windex.create_in(str(tmp_path), SCHEMA)
    add(ix, range(0, 10))
    first = open_searcher(ix)
    delete(ix, "R003")
    second = open_searcher(ix, first)
    old_leaf, new_leaf = first.reader(), second.reader()
    assert new_leaf is not old_leaf
    assert new_leaf._terms is old_leaf._terms  # the term table was not opened again
    assert not old_leaf.is_deleted(3) and new_leaf.is_deleted(3)
    close_replaced(first, second)
    assert not new_leaf.is_closed
    assert second.document_number(id="R003") is None
    assert second.document_number(id="R004") == 4
    close_replaced(second, None)


def test_two_replaced_searchers_sharing_a_segment_s_files_close_them_once(
    tmp_path: Path,
) -> None:
    """Two searchers retired one after another read one segment through readers sharing
    their files; once a merge drops the segment, each is closed without failing."""
    ix = windex.create_in(str(tmp_path), SCHEMA)
    add(ix, range(0, 10))
    first = open_searcher(ix)
    delete(ix, "R003")
    second = open_searcher(ix, first)  # the same segment, its files shared with `first`
    ix.writer().commit(optimize=True)  # merged away: a new segment
    third = open_searcher(ix, second)
    assert not set(s.segid for s in first.reader().segments()) & {
        s.segid for s in third.reader().segments()}

    close_replaced(first, third)
    close_replaced(second, third)  # its reader's files are already closed

    assert first.reader().is_closed and second.reader().is_closed
    assert third.document_number(id="R004") is not None
    close_replaced(third, None)
