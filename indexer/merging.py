"""Segment merging: which segments of a shard to merge on a commit, and merging them in bulk.

Every indexing batch writes a small segment into each shard it touches. Whoosh's default policy
(``MERGE_SMALL``) merges through ``add_reader``, which copies every posting through a chain of
Python generators: at 1,000,000 records that was two thirds of the archive job's indexing time.

Here segments are merged by size tier, as log-structured indexes do: a tier holds segments of
``MERGE_FLOOR * MERGE_FACTOR**t`` to ten times that many live documents, and once a tier has
``MERGE_FACTOR`` segments (the one being written included) they are merged into the new
segment. Each document is so rewritten about once per tier, and a shard keeps at most
``MERGE_FACTOR - 1`` segments per tier. Segments above ``MERGE_MAX_DOCS`` are left as they are
(the rebuild writes its shards as a few such segments): merging them would hold the index lock
for many seconds. A small segment that has lost a quarter of its documents is merged at once.

The merge itself reads each term's posting list a whole block at a time and appends it,
renumbered, to the writer's in-memory posting pool (``index._MemoryPool``), which then writes
the segment as for new documents.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate, repeat
from typing import Any

from whoosh.codec.whoosh3 import LENGTHS_COLUMN, WHOOSH3_HEADER_MAGIC, W3TermsReader, _lenfield
from whoosh.reading import SegmentReader
from whoosh.util.numeric import byte_to_length

MERGE_FLOOR = 500  # documents; tier 0 holds segments under ten times this
MERGE_FACTOR = 10  # segments of one tier that are merged together
MERGE_MAX_DOCS = 50_000  # no merge grows a segment past this; larger halves are never merged
DELETED_SHARE = 0.25  # a mergeable segment with this share of deleted documents is merged

_UNPACK_INT = struct.Struct("!i").unpack_from


def tier(live: int) -> int:
    """Return the size tier of a segment with ``live`` documents (0 below ten times the floor)."""
    t = 0
    bound = MERGE_FLOOR * MERGE_FACTOR
    while live >= bound:
        t += 1
        bound *= MERGE_FACTOR
    return t


def choose_merges(new_docs: int, segments: Sequence[tuple[int, int]]) -> list[int]:
    """Return the positions of the segments to merge into the segment being written.

    :param new_docs: documents in the segment being written.
    :param segments: ``(documents, deleted documents)`` of each existing segment.
    """
    mergeable = {
        i: total - deleted
        for i, (total, deleted) in enumerate(segments)
        if total - deleted <= MERGE_MAX_DOCS // 2
    }
    chosen = [i for i in mergeable if segments[i][1] >= max(1, DELETED_SHARE * segments[i][0])]
    size = new_docs + sum(mergeable[i] for i in chosen)
    rest = {i: live for i, live in mergeable.items() if i not in chosen}
    for t in range(tier(MERGE_MAX_DOCS // 2) + 1):
        peers: list[int] = []
        grown = size
        for i in sorted((i for i in rest if tier(rest[i]) == t), key=rest.__getitem__):
            if grown + rest[i] > MERGE_MAX_DOCS:
                break
            peers.append(i)
            grown += rest[i]
        own = 1 if tier(size) == t else 0
        if len(peers) + own >= MERGE_FACTOR:
            chosen.extend(peers)
            size = grown
    return sorted(chosen)


def tiered_merge(writer: Any, segments: list[Any]) -> list[Any]:
    """Whoosh ``mergetype`` callback: merge the segments :func:`choose_merges` picks.

    Returns the segments kept as they are, as Whoosh's merge policies do.
    """
    picks = set(
        choose_merges(writer.docnum, [(s.doc_count_all(), s.deleted_count()) for s in segments])
    )
    for i in sorted(picks):
        reader = SegmentReader(writer.storage, writer.schema, segments[i])
        try:
            append_segment(writer, reader)
        finally:
            reader.close()
    return [s for i, s in enumerate(segments) if i not in picks]


def append_segment(writer: Any, reader: Any) -> None:
    """Append a segment's live documents to a writer from ``index.open_writer``.

    The same result as Whoosh's ``writer.add_reader(reader)``: stored fields, field lengths
    and columns per document, then every posting renumbered, deleted documents left out.
    """
    schema = writer.schema
    terms_reader = getattr(reader, "_terms", None)
    if not isinstance(terms_reader, W3TermsReader) or any(
        schema[name].vector for name in schema.names()
    ):
        writer.add_reader(reader)  # another codec, or term vectors: Whoosh's own path
        return
    base = writer.docnum
    size = reader.doc_count_all()
    newnum: list[int] = [-1] * size
    live = [d for d in range(size) if not reader.is_deleted(d)] if reader.has_deletions() else None
    docs = live if live is not None else range(size)
    for i, d in enumerate(docs):
        newnum[d] = base + i
    _append_documents(writer, reader, docs, size)
    _append_postings(writer, terms_reader, newnum if live is not None else None, base)
    writer._added = True


def _append_documents(writer: Any, reader: Any, docs: Sequence[int], size: int) -> None:
    """Copy stored fields, lengths and column values of ``docs`` (Whoosh's write_per_doc).

    A field's total length (BM25's average) is carried over exactly: Whoosh's add_reader sums
    the documents' one-byte length approximations instead, so a merged shard would score
    differently from the same records written in one batch.
    """
    schema = writer.schema
    pdw = writer.perdocwriter
    perdoc = reader._perdoc
    lengths: list[tuple[str, bytes]] = []
    columns: list[tuple[str, Any, list[Any]]] = []
    for name in schema.names():
        field = schema[name]
        if field.scorable:
            lengths_col = perdoc._cached_reader(_lenfield(name), LENGTHS_COLUMN)
            if lengths_col is not None:
                values = bytes(lengths_col)
                lengths.append((_lenfield(name), values))
                total = reader.field_length(name)
                if len(docs) < size:
                    kept = set(docs)
                    total -= sum(
                        byte_to_length(b) for d, b in enumerate(values) if b and d not in kept
                    )
                pdw._fieldlengths[name] += max(total, 0)
        if field.column_type and reader.has_column(name):
            col = reader.column_reader(name, translate=False)
            columns.append((name, field.column_type, list(col)))  # raw values
    for d in docs:
        pdw.start_doc(writer.docnum)
        for name, value in reader.stored_fields(d).items():
            pdw.add_field(name, schema[name], value, 0)
        for lenname, values in lengths:
            if d < len(values) and values[d]:
                pdw.add_column_value(lenname, LENGTHS_COLUMN, values[d])
        for name, column_type, column in columns:
            pdw.add_column_value(name, column_type, column[d])
        pdw.finish_doc()
        writer.docnum += 1


def _append_postings(
    writer: Any, terms_reader: W3TermsReader, newnum: list[int] | None, base: int
) -> None:
    """Append every posting of a segment to the writer's pool, renumbered.

    :param newnum: each old document number's new one (-1 if deleted); None when nothing is
        deleted and new numbers are the old ones plus ``base``.
    """
    schema = writer.schema
    pool = writer.pool
    postfile = terms_reader._postfile
    sizes: dict[str, int] = {}  # a field's value size: -1 variable, 0 none
    for (fieldname, btext), info in terms_reader.items():
        if fieldname not in schema:
            continue
        size = sizes.get(fieldname, 0)
        if size == 0 and fieldname not in sizes:
            fixed = schema[fieldname].format.fixed_value_size()
            size = sizes[fieldname] = -1 if fixed is None else fixed
        packed = size != 0  # each posting has a value (see index._write_field)
        ids, weights, values = _read_postings(postfile, info, size)
        if newnum is None:
            ids = [d + base for d in ids]
        else:
            keep = [i for i, d in enumerate(ids) if newnum[d] >= 0]
            if len(keep) < len(ids):
                weights = [weights[i] for i in keep]
                values = [values[i] for i in keep] if packed else values
            ids = [newnum[ids[i]] for i in keep]
            if not ids:
                continue
        table = pool.terms(fieldname)
        entry = table.get(btext)
        if entry is None:
            entry = table[btext] = (array("I"), array("f"), [])
        entry[0].extend(ids)
        entry[1].extend(weights)
        if packed:
            entry[2].extend(values)


def _read_postings(postfile: Any, info: Any, size: int) -> tuple[list[int], list[float], list[Any]]:
    """Read a term's whole posting list: document numbers, weights and values, in order.

    :param size: the field format's value size (-1 for variable, 0 for no values).
    """
    if info.is_inlined():
        inline_ids, inline_weights, inline_values = info.inlined_postings()
        return list(inline_ids), list(inline_weights), list(inline_values)
    offset, extent = info.extent()
    extent = extent[0] if isinstance(extent, tuple) else extent
    buf = postfile.get(offset, extent)
    if buf[:4] != WHOOSH3_HEADER_MAGIC:
        raise ValueError("not a whoosh3 posting list")
    ids: list[int] = []
    weights: list[float] = []
    values: list[Any] = []
    pos = 4
    stream = io.BytesIO(buf)
    while True:
        (length,) = _UNPACK_INT(buf, pos)
        end = pos + 4 + abs(length)
        stream.seek(pos + 4)
        n, _maxid, _maxw, compression, _minl, _maxl = pickle.load(stream)
        data = buf[stream.tell() : end]
        if compression:
            data = zlib.decompress(data)
        deltas, ws, vs = pickle.loads(data)
        ids.extend(accumulate(deltas))
        if ws is None:
            weights.extend(repeat(1.0, n))
        elif isinstance(ws, (int, float)):
            weights.extend(repeat(float(ws), n))
        else:
            weights.extend(ws)
        if size > 0:  # fixed-size values, joined
            values.extend(vs[i : i + size] for i in range(0, n * size, size))
        elif size < 0:
            values.extend(vs)
        if length < 0:
            return ids, weights, values
        pos = end
