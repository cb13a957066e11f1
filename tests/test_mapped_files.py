"""MappedFile reads like io.BytesIO over the same bytes, without copying them first."""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from indexer.whoosh.mapped_files import MappedFile

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(-1, 40)),
        st.tuples(st.just("seek"), st.integers(0, 80), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("tell")),
    ),
    max_size=30,
)


@given(data=st.binary(max_size=64), ops=OPS)
def test_reads_seeks_and_tells_like_bytesio(data: bytes, ops: list[tuple[object, ...]]) -> None:
    ours, theirs = MappedFile(memoryview(data)), io.BytesIO(data)
    for op in ops:
        if op[0] == "read":
            assert ours.read(op[1]) == theirs.read(op[1])  # type: ignore[arg-type]
        elif op[0] == "seek":
            offset = op[1] if op[2] != os.SEEK_END else -min(op[1], len(data))  # type: ignore
            assert ours.seek(offset, op[2]) == theirs.seek(offset, op[2])  # type: ignore
        else:
            assert ours.tell() == theirs.tell()


def test_reads_a_memory_map_in_place(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789" * 1000)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)[100:200]
        f = MappedFile(view)
        assert f.read(5) == b"01234"
        f.seek(-3, os.SEEK_END)
        assert f.read() == b"789"
        buf = bytearray(4)
        f.seek(10)
        assert f.readinto(buf) == 4 and bytes(buf) == b"0123"
        del f, view
