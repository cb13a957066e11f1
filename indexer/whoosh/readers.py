"""Searchers that reopen a shard sharing the open files of the segments it still has.

A restore marks one document deleted; an indexing batch adds a segment. Whoosh's
``Index.searcher()`` then opens every segment of the shard again (term tables, column offsets:
a few milliseconds each, in every server process), and its ``reader(reuse=...)`` keeps readers
of merged-away segments and the old deletions. Here a segment the shard still has keeps its
open files; only its deletions, which live in the table of contents, are taken afresh.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

from whoosh import index as windex
from whoosh.reading import EmptyReader, MultiReader, SegmentReader
from whoosh.searching import Searcher


def open_searcher(ix: windex.FileIndex, previous: Searcher | None = None) -> Searcher:
    """Return a searcher on the index's current state.

    :param previous: a searcher of the same index whose segment readers may be shared; close it
        with :func:`close_replaced`, not ``close()``, once the new one is in use.
    """
    for attempt in range(10):
        try:
            toc = _read_toc(ix)
            old = _leaves_by_segment(previous)
            readers = []
            for segment in toc.segments:
                prev = old.get(segment.segid)
                if prev is None:
                    readers.append(
                        SegmentReader(ix.storage, toc.schema, segment, generation=toc.generation)
                    )
                else:
                    readers.append(_with_segment(prev, segment, toc.generation))
            break
        except OSError:
            # a writer removed a merged-away segment's files as we opened them (as Whoosh does)
            if attempt == 9:
                raise
            time.sleep(0.05)
    return _searcher(ix, toc, readers)


def open_without_additions(ix: windex.FileIndex, previous: Searcher) -> Searcher | None:
    """Return a searcher on the segments ``previous`` has, with their current deletions, but
    not on segments added since; None if nothing was added or a merge removed one of them.

    A server process warms an indexing batch's new segments up before its searches use them
    (see ``SearchIndex.keep_fresh``); meanwhile a restore's deletion must still show at once.
    """
    toc = _read_toc(ix)
    leaves = [leaf for leaf, _base in previous.reader().leaf_readers()]
    if not leaves or not all(isinstance(leaf, SegmentReader) for leaf in leaves):
        return None
    current = {segment.segid: segment for segment in toc.segments}
    kept = [leaf.segment().segid for leaf in leaves]
    if len(current) == len(kept) or not set(kept) <= set(current):
        return None
    readers = [
        _with_segment(leaf, current[segid], toc.generation)
        for leaf, segid in zip(leaves, kept, strict=True)
    ]
    return _searcher(ix, toc, readers)


def _read_toc(ix: windex.FileIndex) -> Any:
    """The index's latest table of contents. A writer in another process that commits between
    Whoosh's listing of the tables and its reading of the latest removes that one: read the
    next latest then (it failed the search with a 503)."""
    for attempt in range(10):
        try:
            return ix._read_toc()
        except FileNotFoundError:
            if attempt == 9:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def _searcher(ix: windex.FileIndex, toc: Any, readers: list[SegmentReader]) -> Searcher:
    """A searcher over the segment readers of one table of contents, in its order."""
    reader: Any
    if not readers:
        reader = EmptyReader(toc.schema)
    elif len(readers) == 1:
        reader = readers[0]
    else:
        reader = MultiReader(readers, generation=toc.generation)
    return Searcher(reader, fromindex=ix)


def close_all(searchers: Iterable[Searcher]) -> None:
    """Close these searchers, each segment's readers once: readers of one segment in several
    of them share their open files (see ``_with_segment``)."""
    for searcher in searchers:
        for leaf in _leaves_by_segment(searcher).values():
            _close_leaf(leaf)
        searcher.is_closed = True


def _close_leaf(leaf: SegmentReader) -> None:
    """Close a segment's reader, unless a reader sharing its files (see ``_with_segment``)
    closed them before: then it is only marked closed (Whoosh refuses to close a file twice)."""
    if leaf.is_closed:
        return
    term_table = getattr(getattr(leaf, "_terms", None), "_tindex", None)
    if getattr(term_table, "is_closed", False):
        leaf.is_closed = True
        return
    leaf.close()


def segment_ids(searcher: Searcher | None) -> set[str]:
    """The ids of the segments a searcher reads."""
    return set(_leaves_by_segment(searcher))


def replaced_segments(old: Searcher, new: Searcher | None) -> set[str]:
    """The segments whose readers :func:`close_replaced` would close."""
    return segment_ids(old) - segment_ids(new)


def close_replaced(old: Searcher, new: Searcher | None) -> None:
    """Close what a replaced searcher holds that its successor does not share."""
    kept = set(_leaves_by_segment(new)) if new is not None else set()
    for segid, leaf in _leaves_by_segment(old).items():
        if segid not in kept:
            _close_leaf(leaf)
    old.is_closed = True


def _leaves_by_segment(searcher: Searcher | None) -> dict[str, SegmentReader]:
    if searcher is None:
        return {}
    out = {}
    for leaf, _base in searcher.reader().leaf_readers():
        if isinstance(leaf, SegmentReader):
            out[leaf.segment().segid] = leaf
    return out


def _with_segment(reader: SegmentReader, segment: Any, generation: int) -> SegmentReader:
    """A reader sharing ``reader``'s open files, for the same segment with current deletions."""
    if reader.segment() is segment and reader._gen == generation:
        return reader
    fresh = copy.copy(reader)
    fresh.__dict__.pop("deleted_docs_set", None)  # a cached property: the old deletions
    fresh._segment = segment
    fresh._gen = generation
    fresh._perdoc = copy.copy(reader._perdoc)
    fresh._perdoc._segment = segment
    return fresh
