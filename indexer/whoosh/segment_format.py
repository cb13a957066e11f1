"""Byte layouts of Whoosh 3 segment files that the writers here produce directly."""

from __future__ import annotations

import struct
import zlib

TERMINFO = struct.Struct("!BfIBBfII")  # W3TermInfo: flags, weight, df, lengths, maxweight, ids
EXTENT = struct.Struct("!qi")  # a posting list's offset and length, after a TERMINFO
PACK_INT = struct.Struct("!i").pack
HASH_LENGTHS = struct.Struct("!ii").pack  # filetables._lengths: key and value length
SMALL_BLOCK = 256  # pickled block data shorter than this is stored uncompressed (~3% larger)


def compress(data: bytes, level: int) -> bytes:
    """zlib-compress a block with a window no larger than the block.

    zlib.compress sets up a 32 KiB window and a 64 KiB hash table for every call, which cost more
    than compressing a posting block of a few hundred bytes; a window covering the block compresses
    it the same, and zlib.decompress reads any window size.
    """
    wbits = min(15, max(9, len(data).bit_length()))
    c = zlib.compressobj(level, zlib.DEFLATED, wbits, max(1, wbits - 7))
    return c.compress(data) + c.flush()


class TermTable:
    """The term index of one field being written: W3FieldWriter's OrderedHashWriter, buffered.

    Add terms in increasing order with :meth:`add`, then :meth:`flush` once.
    """

    def __init__(self, fw: object) -> None:
        self.tindex = fw._tindex  # type: ignore[attr-defined]
        self.prefix = struct.pack("!H", fw._fieldid)  # type: ignore[attr-defined]
        self.hashfn = self.tindex.hashfn
        self.buckets = self.tindex.buckets
        self.keypos = self.tindex.index
        self.out: list[bytes] = []
        self.offset = self.tindex.dbfile.tell()
        self.key = b""

    def add(self, btext: bytes, value: bytes) -> None:
        """Add one term's TERMINFO + EXTENT bytes."""
        key = self.prefix + btext
        h = self.hashfn(key)
        self.buckets[h & 255].append((h, self.offset))
        self.keypos.append(self.offset)
        self.out.append(HASH_LENGTHS(len(key), len(value)))
        self.out.append(key)
        self.out.append(value)
        self.offset += 8 + len(key) + len(value)
        self.key = key

    def flush(self) -> None:
        """Write the buffered entries."""
        self.tindex.dbfile.write(b"".join(self.out))
        self.out.clear()
        if self.key:
            self.tindex.lastkey = self.key
