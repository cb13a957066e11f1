"""Writing one Whoosh segment: postings buffered per term in memory, then written a field at a
time in Whoosh 3's format (new documents, or the documents of merged segments)."""

from __future__ import annotations

import operator
import pickle
from array import array
from pathlib import Path
from typing import Any

from whoosh import index as windex
from whoosh.analysis import IDTokenizer
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, WHOOSH3_HEADER_MAGIC, _lenfield
from whoosh.formats import Existence
from whoosh.reading import SegmentReader
from whoosh.writing import SegmentWriter

from indexer.whoosh.analysis import (
    SINGLE_POSITION_VALUES,
    ArchivePositions,
    PairTokenizer,
    index_term_positions,
    pair_postings,
)
from indexer.whoosh.merging import MergedSource, write_merged
from indexer.whoosh.segment_format import (
    EXTENT,
    PACK_INT,
    SMALL_BLOCK,
    TERMINFO,
    TermTable,
    compress,
)


class _MemoryPool:
    """The postings of the segment being written, grouped by field and term in memory.

    Stands in for Whoosh's PostingPool, which pickles every posting into sorted run files and
    merges them back through a heap: that, and the generic per-posting path around it, was
    over half of indexing time. Postings of one term arrive in increasing document order
    (documents are numbered as they are added, merged segments after them), so nothing needs
    sorting but the terms, once, when the segment is flushed.
    """

    def __init__(self) -> None:
        self.fields: dict[str, dict[bytes, tuple[array[int], array[float], list[bytes]]]] = {}

    def terms(self, fieldname: str) -> dict[bytes, tuple[array[int], array[float], list[bytes]]]:
        """Return the term table of a field."""
        terms = self.fields.get(fieldname)
        if terms is None:
            terms = self.fields[fieldname] = {}
        return terms

    def postings(
        self, fieldname: str, btext: bytes
    ) -> tuple[array[int], array[float], list[bytes]]:
        """Return a term's buffered document numbers, weights and values, made if new."""
        terms = self.terms(fieldname)
        entry = terms.get(btext)
        if entry is None:
            entry = terms[btext] = (array("I"), array("f"), [])
        return entry

    def add(self, item: tuple[str, bytes, int, float, bytes | None]) -> None:
        """Add one ``(fieldname, btext, docnum, weight, value)`` posting (Whoosh merges)."""
        fieldname, btext, docnum, weight, value = item
        entry = self.postings(fieldname, btext)
        entry[0].append(docnum)
        entry[1].append(weight)
        if value:
            entry[2].append(value)

    def cleanup(self) -> None:
        """Drop the buffered postings."""
        self.fields.clear()


def add_record(writer: Any, doc: dict[str, Any]) -> None:
    """SegmentWriter.add_document for our schema, straight into the writer's _MemoryPool.

    Same segment content as ``add_document(**doc)``: each text is analysed by
    :func:`index_term_positions` once (its word-pair field reuses the result), and ID fields
    (one whole term each) skip the analyzer. Fields the shard's schema lacks are skipped: a
    shard made before the word-pair fields existed keeps its schema.
    """
    schema = writer.schema
    pool: _MemoryPool = writer.pool
    docnum = writer.docnum
    # Analyse first: a failure here leaves neither the pool nor the per-document writer touched.
    entries: list[tuple[str, Any, Any, Any]] = []
    analysed: dict[str, dict[bytes, list[int]]] = {}
    for fieldname in sorted(doc):
        value = doc[fieldname]
        if value is None or fieldname not in schema:
            continue
        field = schema[fieldname]
        postings: Any = None
        if field.indexed:
            fmt = field.format
            if type(fmt) is ArchivePositions:
                postings = analysed[value] = index_term_positions(value)
            elif type(field.analyzer) is PairTokenizer:
                positions = analysed.get(value)
                if positions is None:
                    positions = index_term_positions(value)
                postings = pair_postings(positions, writer.pair_terms)
            elif type(fmt) is Existence and type(field.analyzer) is IDTokenizer:
                postings = ((value.encode("utf-8"), 1, fmt.field_boost, b""),)
            else:
                postings = list(field.index(value))
        entries.append((fieldname, field, value, postings))
    pdw = writer.perdocwriter
    columns = pdw._colwriters
    pdw.start_doc(docnum)
    single = SINGLE_POSITION_VALUES
    nsingle = len(single)
    for fieldname, field, value, postings in entries:
        length = 0
        if postings is not None:
            terms = pool.terms(fieldname)
            if type(postings) is dict:
                encode = field.format.encode
                for btext, poslist in postings.items():
                    entry = terms.get(btext)
                    if entry is None:
                        entry = terms[btext] = (array("I"), array("f"), [])
                    n = len(poslist)
                    entry[0].append(docnum)
                    entry[1].append(n)
                    p = poslist[0]
                    entry[2].append(single[p] if n == 1 and p < nsingle else encode(poslist))
                    length += n
                if not field.scorable:
                    length = 0
            else:
                scorable = field.scorable
                for btext, freq, weight, vbytes in postings:
                    entry = terms.get(btext)
                    if entry is None:
                        entry = terms[btext] = (array("I"), array("f"), [])
                    entry[0].append(docnum)
                    entry[1].append(weight)
                    if vbytes:
                        entry[2].append(vbytes)
                    if scorable:
                        length += freq
        pdw.add_field(fieldname, field, value if field.stored else None, length)
        column = field.column_type
        if column:
            cw = columns.get(fieldname)
            if cw is None:
                pdw.add_column_value(fieldname, column, field.to_column_value(value))
            else:
                cw.add(docnum, field.to_column_value(value))
    pdw.finish_doc()
    writer._added = True
    writer.docnum += 1


def _doc_length_bytes(pdr: Any, fieldname: str, doccount: int) -> bytes | None:
    """Return a field's length byte per document of a new segment (Whoosh's lengths column).

    The bytes order like the lengths they stand for, and Whoosh's block and term statistics
    store lengths as these bytes, so they are used as they are.
    """
    reader = pdr._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
    if reader is None:
        return None
    got = bytes(reader)
    return got + bytes(doccount - len(got))


def _write_field(
    fw: Any,
    terms: dict[bytes, tuple[array[int], array[float], list[bytes]]],
    lengths: bytes | None,
) -> None:
    """Write one field's posting lists and term infos as W3FieldWriter would, a field at a time.

    The bytes are those of Whoosh's W3PostingsWriter and OrderedHashWriter, except for
    compression: a block whose pickled data is under SMALL_BLOCK bytes is stored uncompressed
    (flag 0 in its header, which the reader honours; zlib would not make it smaller), others
    through :func:`segment_format.compress`. Output is gathered in memory and written once per
    field.
    """
    postfile = fw._postfile
    table = TermTable(fw)
    limit = fw._codec._blocklimit
    comp = fw._codec._compression
    fixed = fw._format.fixed_value_size()
    pack_values = fixed is None or fixed < 0
    dumps = pickle.dumps
    pack_int = PACK_INT
    out: list[bytes] = []
    offset = postfile.tell()
    for btext in sorted(terms):
        docs, weights, values = terms[btext]
        start = offset
        out.append(WHOOSH3_HEADER_MAGIC)
        offset += 4
        total = 0.0
        maxweight = 0.0
        minlength = 0  # length bytes, 0 for none
        maxlength = 0
        n = len(docs)
        for i in range(0, n, limit):
            ids = docs[i : i + limit] if n > limit else docs
            ws = weights[i : i + limit] if n > limit else weights
            count = len(ids)
            first = ws[0]
            if count == 1:
                deltas: tuple[int, ...] = (ids[0],)
                miniw: Any = None if first == 1.0 else first
                bmax = first
                bsum = first
            else:
                deltas = tuple([ids[0], *map(operator.sub, ids[1:], ids)])
                if first == 1.0 and ws.count(1.0) == count:
                    miniw = None
                elif ws.count(first) == count:
                    miniw = first
                else:
                    miniw = tuple(ws)
                bmax = max(ws)
                bsum = sum(ws)
            if pack_values:
                miniv: Any = tuple(values[i : i + limit])
            elif fixed == 0:
                miniv = None
            else:
                miniv = b"".join(values[i : i + limit])
            data = dumps((deltas, miniw, miniv), 2)
            bcomp = comp if len(data) >= SMALL_BLOCK else 0
            if bcomp:
                data = compress(data, bcomp)
            bmin = bmaxlen = 0
            if lengths is not None:
                if count == 1:
                    bmin = bmaxlen = lengths[ids[0]]
                else:
                    ls = [x for x in map(lengths.__getitem__, ids) if x]
                    if ls:
                        bmin = min(ls)
                        bmaxlen = max(ls)
            info = dumps((count, ids[-1], bmax, bcomp, bmin, bmaxlen), 2)
            size = len(info) + len(data)
            out.append(pack_int(-size if i + limit >= n else size))
            out.append(info)
            out.append(data)
            offset += 4 + size
            total += bsum
            if bmin and (not minlength or bmin < minlength):
                minlength = bmin
            if bmaxlen > maxlength:
                maxlength = bmaxlen
            if bmax > maxweight:
                maxweight = bmax
        value = TERMINFO.pack(
            False,
            total,
            n,
            minlength,
            maxlength,
            maxweight,
            docs[0],
            docs[-1],
        ) + EXTENT.pack(start, offset - start)
        table.add(btext, value)
    postfile.write(b"".join(out))
    table.flush()


def _flush_pool(writer: Any) -> None:
    """SegmentWriter._flush_segment from a _MemoryPool, a whole field at a time."""
    writer.perdocwriter.close()
    pdr = writer.per_document_reader()
    doccount = writer.docnum
    fw = writer.fieldwriter
    pool: _MemoryPool = writer.pool
    schema = writer.schema
    writer.segment_ids = frozenset(pool.fields.get("id", ())) | getattr(
        writer, "merged_ids", frozenset()
    )
    try:
        for fieldname in sorted(pool.fields):
            if fieldname not in schema:
                continue
            fw.start_field(fieldname, schema[fieldname])
            lengths = _doc_length_bytes(pdr, fieldname, doccount)
            _write_field(fw, pool.fields[fieldname], lengths)
            fw.finish_field()
            pool.fields[fieldname] = {}
    finally:
        pdr.close()
    fw.close()


class PoolWriter(SegmentWriter):
    """Whoosh's SegmentWriter with its postings buffered in a :class:`_MemoryPool` and flushed a
    field at a time (``_flush_segment`` is the one method of Whoosh's writer replaced here).

    Add documents with :func:`add_record`; Whoosh's own ``add_document`` would bypass the pool.
    """

    def __init__(self, ix: windex.Index, pair_terms: frozenset[bytes], **kwargs: Any) -> None:
        super().__init__(ix, **kwargs)
        self.pool = _MemoryPool()
        self.pair_terms = pair_terms

    def _flush_segment(self) -> None:
        _flush_pool(self)


def open_writer(ix: windex.Index, pair_terms: frozenset[bytes], **kwargs: Any) -> Any:
    """Open a :class:`PoolWriter` on a shard (Whoosh's writer lock and options as ``ix.writer``).

    :param ix: the shard index.
    :param pair_terms: the generation's pair terms (see ``analysis.choose_pair_terms``).
    """
    return PoolWriter(ix, pair_terms, **kwargs)


def write_merge(
    ix: windex.Index, segments: list[Any], folder: Path
) -> tuple[Any, list[MergedSource]]:
    """Write segments of a shard merged into one, as the only segment of a new index in
    ``folder``; returns that segment and where each source's documents went."""
    target = windex.create_in(str(folder), ix.schema)
    writer = open_writer(target, frozenset())  # a merge analyses nothing
    readers = [SegmentReader(ix.storage, ix.schema, segment) for segment in segments]
    try:
        sources = write_merged(writer, readers)
        writer.commit(merge=False)
    except BaseException:
        if not writer.is_closed:
            writer.cancel()
        raise
    finally:
        for reader in readers:
            reader.close()
    (merged,) = target._segments()
    target.close()
    return merged, sources
