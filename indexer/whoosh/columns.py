"""Whoosh per-document columns and deletions read into numpy arrays in bulk.

Whoosh's column readers yield one value per Python call (unpacking, translating): reading the
category, kind and three date columns of 1,000,000 documents that way took about 15 s, which
the first search of every serving process paid. The columns' bytes are laid out plainly, so
they are read here with one slice each and decoded by numpy. A column stored any other way
is read through Whoosh as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from whoosh.columns import NumericColumn, VarBytesColumn

from indexer.whoosh.postings import Docs

_MAX_WIDTH = 256  # longest value decoded in bulk; longer ones are read one by one
_INTEGER_CODES = "bBhHiIqQ"  # struct and numpy agree on these sizes


def numeric_values(reader: Any, size: int) -> Docs:
    """Return every document's value of a numeric column (its default where none was set).

    :param reader: an untranslated Whoosh column reader (``translate=False``).
    :param size: the segment's document count.
    """
    if type(reader) is NumericColumn.Reader and reader._typecode in _INTEGER_CODES:
        count = min(reader._count, size)
        raw = reader._dbfile.get(reader._basepos, count * reader._fixedlen)
        values = np.full(size, reader._default, np.int64)
        values[:count] = np.frombuffer(raw, np.dtype(">" + reader._typecode))
        return values
    return np.fromiter((int(v) for v in reader), np.int64, size)


def byte_strings(reader: Any, size: int) -> npt.NDArray[np.bytes_]:
    """Return every document's value of a bytes column as a numpy bytes array.

    numpy compares bytes like Python does (a value with trailing NUL bytes aside), so sorting
    the array orders UTF-8 values as their text.

    :param reader: an untranslated Whoosh column reader (``translate=False``; a
        ``VarBytesColumn`` is read in bulk, others one value at a time).
    :param size: the segment's document count.
    """
    if type(reader) is VarBytesColumn.Reader and size:
        lengths = np.asarray(reader._lengths, np.int64)[:size]
        offsets = np.asarray(reader._offsets, np.int64)[:size]
        width = int(lengths.max())
        if len(lengths) == size and 0 < width <= _MAX_WIDTH:
            total = int((offsets + lengths).max())
            blob = np.frombuffer(reader._dbfile.get(reader._basepos, total) + b"\0", np.uint8)
            cols = np.arange(width)
            take = np.minimum(offsets[:, None] + cols, total)
            rows = np.where(cols < lengths[:, None], blob[take], 0).astype(np.uint8)
            return np.ascontiguousarray(rows).view(f"S{width}").reshape(size)
    return np.array([bytes(v) for v in reader], dtype=bytes)[:size]


def ordinals(reader: Any, size: int) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Return a text column's distinct values and each document's number among them.

    :param reader: an untranslated Whoosh column reader of UTF-8 values (``translate=False``).
    :param size: the segment's document count.
    """
    values = byte_strings(reader, size)
    if not len(values):
        return [], np.zeros(0, np.int32)
    uniq, inverse = np.unique(values, return_inverse=True)
    names = [v.decode("utf-8") for v in uniq.tolist()]
    return names, inverse.reshape(-1).astype(np.int32)


def live_docs(reader: Any) -> Docs:
    """Return the document numbers of a reader that are not deleted, in order."""
    parts: list[Docs] = []
    for leaf, base in reader.leaf_readers():
        n = leaf.doc_count_all()
        segment = leaf.segment() if hasattr(leaf, "segment") else None
        if segment is None or not hasattr(segment, "deleted_docs"):
            parts.append(np.fromiter((base + d for d in leaf.all_doc_ids()), np.int64))
            continue
        keep = np.ones(n, np.bool_)
        deleted = np.fromiter(segment.deleted_docs(), np.int64)
        keep[deleted[deleted < n]] = False
        parts.append(np.flatnonzero(keep).astype(np.int64) + base)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def live_docnums(leaf: Any, wanted: Iterable[bytes]) -> dict[bytes, list[int]]:
    """Return the segment-local numbers of the live documents whose id is wanted.

    One read of the id column and one vectorised membership test, instead of a term look-up
    per id: what a bulk restore's thousands of deletions need.

    :param leaf: a Whoosh segment reader whose schema has the sortable ``id`` field.
    :param wanted: UTF-8 encoded ids.
    """
    size = leaf.segment().doc_count_all()
    ids = byte_strings(leaf.column_reader("id", translate=False), size)
    targets = np.array(sorted(set(wanted)), dtype=bytes)
    if not size or not len(targets):
        return {}
    found: dict[bytes, list[int]] = {}
    for docnum in np.nonzero(np.isin(ids, targets))[0].tolist():
        if not leaf.is_deleted(docnum):
            found.setdefault(ids[docnum].tobytes().rstrip(b"\0"), []).append(docnum)
    return found
