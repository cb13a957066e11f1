"""Read Whoosh segment files straight from their memory map, without copying them.

Whoosh opens every file inside a segment's compound file as a ``BufferFile`` over a slice of
the file's memory map, and ``BufferFile`` wraps that slice in ``io.BytesIO``, which copies it.
Opening a searcher on one year shard of 1,000,000 records therefore copied ~250 MB and took
~70 ms, and every process serving searches held a private copy of the whole index. Each
restore and each indexing batch reopens a shard, so the copying was paid over and over.

:func:`install` gives ``BufferFile`` a file object that reads from the slice in place: a
searcher opens in ~9 ms and the index stays in the shared page cache.
"""

from __future__ import annotations

import io
import os
from typing import Any

from whoosh.filedb import structfile


class MappedFile(io.RawIOBase):
    """A read-only, seekable file over a buffer (a memoryview of a memory map), without a copy."""

    def __init__(self, buf: Any) -> None:
        super().__init__()
        self._buf = memoryview(buf)
        self._pos = 0

    def readable(self) -> bool:  # noqa: D102
        return True

    def seekable(self) -> bool:  # noqa: D102
        return True

    def tell(self) -> int:  # noqa: D102
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:  # noqa: D102
        if whence == os.SEEK_CUR:
            pos += self._pos
        elif whence == os.SEEK_END:
            pos += len(self._buf)
        self._pos = max(0, pos)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:  # noqa: D102
        start = self._pos
        end = len(self._buf) if size is None or size < 0 else min(len(self._buf), start + size)
        self._pos = max(start, end)
        return bytes(self._buf[start:end])

    def readinto(self, b: Any) -> int:  # noqa: D102
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _buffer_file_init(
    self: structfile.BufferFile, buf: Any, name: str | None = None, onclose: Any = None
) -> None:
    self._buf = buf
    self._name = name
    self.file = MappedFile(buf)
    self.onclose = onclose
    self.is_real = False
    self.is_closed = False


def install() -> None:
    """Make Whoosh's ``BufferFile`` read its buffer in place (idempotent)."""
    structfile.BufferFile.__init__ = _buffer_file_init
