"""Segment merging: which segments of a shard to merge on a commit, and merging them in bulk.

Every indexing batch writes a small segment into each shard it touches. Whoosh's default policy
(``MERGE_SMALL``) merges through ``add_reader``, which copies every posting through a chain of
Python generators: at 1,000,000 records that was two thirds of the archive job's indexing time.

Here segments are merged by size tier, as log-structured indexes do: a tier holds segments of
``MERGE_FLOOR * MERGE_FACTOR**t`` to ten times that many live documents, and once a tier has
``MERGE_FACTOR`` segments (a segment just written included) they are merged into one. Each
document is so rewritten about once per tier, and a shard keeps at most ``MERGE_FACTOR - 1``
segments per tier. No merge grows a segment past ``MERGE_MAX_DOCS`` (a full tier whose segments
would exceed it merges as many as fit), and segments over ``MERGE_KEEP_DOCS`` are left as they
are: merging them again would cost more than the few extra segments cost searches (a rebuild
writes its shards as a few such segments). A small segment that has lost a quarter of its
documents is merged at once.

A merge is written beside its shard without holding the shard's lock (see
``SearchIndex._merge_shard``), then swapped in, deletions made meanwhile carried over
(:class:`MergedSource`). Segments without deletions are stitched: each posting list
is the concatenation of its sources' blocks, each block renumbered by rewriting its first
document number, so no posting is decoded. Segments with deletions have their posting lists
read a block at a time, renumbered, and written again through ``index._MemoryPool``.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any

from whoosh.codec.whoosh3 import (
    LENGTHS_COLUMN,
    STORED_COLUMN,
    WHOOSH3_HEADER_MAGIC,
    W3TermsReader,
    _lenfield,
)
from whoosh.columns import CompressedBytesColumn, VarBytesColumn
from whoosh.util.numeric import byte_to_length

from indexer.whoosh.segment_format import (
    EXTENT,
    PACK_INT,
    SMALL_BLOCK,
    TERMINFO,
    TermTable,
    compress,
)

MERGE_FLOOR = 500  # documents; tier 0 holds segments under ten times this
MERGE_FACTOR = 10  # segments of one tier that are merged together
MERGE_MAX_DOCS = 50_000  # no merge grows a segment past this
MERGE_KEEP_DOCS = 10_000  # larger segments are never merged, so each document is merged ~once
DELETED_SHARE = 0.25  # a mergeable segment with this share of deleted documents is merged

_UNPACK_INT = struct.Struct("!i").unpack_from
_HASH_LENGTHS = struct.Struct("!ii")  # a term file entry's key and value lengths
_VarBytesReader = VarBytesColumn.Reader  # reads a compressed column's bytes undecompressed
_VarBytesWriter = VarBytesColumn.Writer


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
        if total - deleted <= MERGE_KEEP_DOCS
    }
    chosen = [i for i in mergeable if segments[i][1] >= max(1, DELETED_SHARE * segments[i][0])]
    size = new_docs + sum(mergeable[i] for i in chosen)
    rest = {i: live for i, live in mergeable.items() if i not in chosen}
    for t in range(tier(MERGE_KEEP_DOCS) + 1):
        members = sorted((i for i in rest if tier(rest[i]) == t), key=rest.__getitem__)
        own = 1 if size and tier(size) == t else 0
        if len(members) + own < MERGE_FACTOR:
            continue
        # a full tier: merge its smallest segments, as many as stay under the size limit
        peers: list[int] = []
        grown = size
        for i in members[: MERGE_FACTOR - own]:
            if grown + rest[i] > MERGE_MAX_DOCS:
                break
            peers.append(i)
            grown += rest[i]
        if len(peers) + own >= 2:
            chosen.extend(peers)
            size = grown
    return sorted(chosen)


@dataclass(frozen=True)
class MergedSource:
    """Where a source segment's documents went in a merged segment."""

    segid: str
    deleted: frozenset[int]  # the source's deleted documents when it was read (left out)
    base: int  # the merged number of its first document kept
    size: int  # its document count, deleted ones included

    def new_number(self, docnum: int) -> int:
        """The merged document number of a document not deleted when the source was read."""
        if not self.deleted:
            return self.base + docnum
        return self.base + docnum - sum(1 for d in self.deleted if d < docnum)


def write_merged(writer: Any, readers: Sequence[Any]) -> list[MergedSource]:
    """Write segments' live documents into an empty writer from ``index.open_writer``.

    Segments without deletions are stitched (:func:`stitch_segments`); otherwise each is
    appended, deleted documents left out. Returns where each source's documents went, so that
    deletions made in a source after it was read can be carried over to the merged segment.
    """
    sources = []
    base = 0
    for reader in readers:
        segment = reader.segment()
        deleted = frozenset(segment.deleted_docs()) if reader.has_deletions() else frozenset()
        size = reader.doc_count_all()
        sources.append(MergedSource(segment.segid, deleted, base, size))
        base += size - len(deleted)
    if not (writer.docnum == 0 and stitch_segments(writer, readers)):
        for reader in readers:
            append_segment(writer, reader)
    return sources


def stitch_segments(writer: Any, readers: Sequence[Any]) -> bool:
    """Write segments into an empty writer by copying their posting blocks, renumbered in place.

    A block's document numbers are deltas after one absolute first number, so renumbering a
    segment by a constant only rewrites that first number and the block's header: no posting
    is decoded. Returns False, having written nothing, unless every segment is stitchable (no
    deletions, the Whoosh 3 codec, no inlined posting lists, no term vectors).
    """
    schema = writer.schema
    if not readers or any(schema[name].vector for name in schema.names()):
        return False
    fields: dict[str, dict[bytes, list[tuple[int, bytes]]]] = {}
    for k, reader in enumerate(readers):
        terms_reader = getattr(reader, "_terms", None)
        if reader.has_deletions() or not isinstance(terms_reader, W3TermsReader):
            return False
        unmap = terms_reader._fieldunmap
        for key, value in _term_entries(terms_reader._tindex):
            if value[0] & 1:  # postings inlined in the term info (Whoosh's own writer)
                return False
            table = fields.get(unmap[key[0] << 8 | key[1]])
            if table is None:
                table = fields[unmap[key[0] << 8 | key[1]]] = {}
            parts = table.get(key[2:])
            if parts is None:
                table[key[2:]] = [(k, value)]
            else:
                parts.append((k, value))
    bases = []
    for reader in readers:
        bases.append(writer.docnum)
        size = reader.doc_count_all()
        _append_documents(writer, reader, range(size), size)
    writer.merged_ids = frozenset(fields.get("id", ()))
    postfiles = [reader._terms._postfile for reader in readers]
    fw = writer.fieldwriter
    for fieldname in sorted(fields):
        if fieldname not in schema:
            continue
        fw.start_field(fieldname, schema[fieldname])
        _write_stitched_field(fw, fields.pop(fieldname), postfiles, bases)
        fw.finish_field()
    writer._added = True
    return True


def _term_entries(tindex: Any) -> Iterator[tuple[bytes, bytes]]:
    """Yield a term file's ``(key, value)`` entries in order, read in one piece.

    The same entries as ``OrderedHashReader.items()``, which reads each one with three calls.
    """
    start, end = tindex.startofdata, tindex.endofdata
    buf = tindex.dbfile.get(start, end - start)
    unpack = _HASH_LENGTHS.unpack_from
    pos = 0
    size = len(buf)
    while pos < size:
        keylen, datalen = unpack(buf, pos)
        keyend = pos + 8 + keylen
        yield buf[pos + 8 : keyend], buf[keyend : keyend + datalen]
        pos = keyend + datalen


def _write_stitched_field(
    fw: Any,
    terms: dict[bytes, list[tuple[int, bytes]]],
    postfiles: Sequence[Any],
    bases: Sequence[int],
) -> None:
    """Write one field's terms, each posting list the blocks of its source lists in order."""
    postfile = fw._postfile
    table = TermTable(fw)
    out: list[bytes] = []
    offset = postfile.tell()
    unpack_info = TERMINFO.unpack_from
    unpack_extent = EXTENT.unpack_from
    info_size = TERMINFO.size
    for btext in sorted(terms):
        parts = terms[btext]
        start = offset
        blocks: list[bytes] = []
        weight = 0.0
        df = 0
        minlength = maxlength = 0
        maxweight = 0.0
        first = last = 0
        for j, (k, value) in enumerate(parts):
            _flags, w, n, lmin, lmax, mw, minid, maxid = unpack_info(value)
            poff, plen = unpack_extent(value, info_size)
            shift = bases[k]
            _shifted_blocks(postfiles[k].get(poff, plen), shift, blocks)
            weight += w
            df += n
            if lmin and (not minlength or lmin < minlength):
                minlength = lmin
            maxlength = max(maxlength, lmax)
            maxweight = max(maxweight, mw)
            if j == 0:
                first = minid + shift
            last = maxid + shift
        out.append(WHOOSH3_HEADER_MAGIC)
        offset += 4
        final = len(blocks) - 1
        for i, block in enumerate(blocks):
            out.append(PACK_INT(-len(block) if i == final else len(block)))
            out.append(block)
            offset += 4 + len(block)
        table.add(
            btext,
            TERMINFO.pack(False, weight, df, minlength, maxlength, maxweight, first, last)
            + EXTENT.pack(start, offset - start),
        )
        if len(out) > 65_536:
            postfile.write(b"".join(out))
            out.clear()
    postfile.write(b"".join(out))
    table.flush()


def _block_spans(buf: bytes) -> Iterator[tuple[int, int]]:
    """Yield where each block of a posting list starts and ends (after its length prefix).

    A posting list is a magic number, then per block a signed length (negative for the last
    block), the block's pickled header ``(count, last id, max weight, compression, min length,
    max length)`` and its pickled data, maybe compressed.
    """
    if buf[:4] != WHOOSH3_HEADER_MAGIC:
        raise ValueError("not a whoosh3 posting list")
    pos = 4
    while True:
        (length,) = _UNPACK_INT(buf, pos)
        end = pos + 4 + abs(length)
        yield pos + 4, end
        if length < 0:
            return
        pos = end


def _block_header(stream: io.BytesIO, start: int) -> tuple[tuple[Any, ...], int]:
    """Unpickle the header of the block at ``start``; returns it and where its data starts."""
    stream.seek(start)
    header = pickle.load(stream)
    return header, stream.tell()


def _shifted_blocks(buf: bytes, shift: int, blocks: list[bytes]) -> None:
    """Append the blocks of one posting list (without its header) with ids moved by ``shift``."""
    stream = io.BytesIO(buf)
    for start, end in _block_spans(buf):
        if shift == 0:
            blocks.append(buf[start:end])
            continue
        header, data_start = _block_header(stream, start)
        count, maxid, maxweight, compression, minlength, maxlength = header
        data = buf[data_start:end]
        raw = _shift_first_id(zlib.decompress(data) if compression else data, shift)
        if compression and len(raw) >= SMALL_BLOCK:
            data = compress(raw, compression)
        else:
            data, compression = raw, 0
        header = (count, maxid + shift, maxweight, compression, minlength, maxlength)
        blocks.append(pickle.dumps(header, 2) + data)


def _shift_first_id(raw: bytes, shift: int) -> bytes:
    """Return a pickled block ``(ids, weights, values)`` with its first (absolute) id moved.

    The ids tuple is the first thing pickled: after PROTO, a MARK if it has four or more ids,
    then the first id as BININT1, BININT2 or BININT. Any other shape is unpickled and pickled
    again.
    """
    p = 3 if raw[2:3] == b"(" else 2
    op = raw[p]
    if op == 0x4B:
        value, width = raw[p + 1], 2
    elif op == 0x4D:
        value, width = raw[p + 1] | raw[p + 2] << 8, 3
    elif op == 0x4A:
        value, width = int.from_bytes(raw[p + 1 : p + 5], "little", signed=True), 5
    else:
        ids, weights, values = pickle.loads(raw)
        return pickle.dumps(((ids[0] + shift, *ids[1:]), weights, values), 2)
    value += shift
    if value < 256:
        new = b"K" + bytes((value,))
    elif value < 65536:
        new = b"M" + value.to_bytes(2, "little")
    else:
        new = b"J" + value.to_bytes(4, "little", signed=True)
    return raw[:p] + new + raw[p + width :]


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
    stored = _raw_stored(perdoc, pdw)
    for d in docs:
        pdw.start_doc(writer.docnum)
        if stored is not None:  # the compressed bytes as they are, not unpickled and redone
            source, target = stored
            raw = _VarBytesReader.__getitem__(source, d)
            if raw:
                _VarBytesWriter.add(target, writer.docnum, raw)
        else:
            for name, value in reader.stored_fields(d).items():
                pdw.add_field(name, schema[name], value, 0)
        for lenname, values in lengths:
            if d < len(values) and values[d]:
                pdw.add_column_value(lenname, LENGTHS_COLUMN, values[d])
        for name, column_type, column in columns:
            pdw.add_column_value(name, column_type, column[d])
        pdw.finish_doc()
        writer.docnum += 1


def _raw_stored(perdoc: Any, pdw: Any) -> tuple[Any, Any] | None:
    """Return the source and target compressed-bytes columns of stored fields, if both are."""
    source = perdoc._cached_reader("_stored", STORED_COLUMN)
    target = pdw._colwriters.get("_stored")
    source = getattr(source, "_child", None)
    target = getattr(target, "_child", None)
    if isinstance(source, CompressedBytesColumn.Reader) and isinstance(
        target, CompressedBytesColumn.Writer
    ):
        return source, target
    return None


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
        entry = pool.postings(fieldname, btext)
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
    ids: list[int] = []
    weights: list[float] = []
    values: list[Any] = []
    stream = io.BytesIO(buf)
    for start, end in _block_spans(buf):
        header, data_start = _block_header(stream, start)
        n, compression = header[0], header[3]
        data = buf[data_start:end]
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
    return ids, weights, values
