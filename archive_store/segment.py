"""One segment file: length- and crc-framed, compressed and sealed JSON envelopes.

A frame is `struct.pack("<4sII", magic, len(payload), crc32(payload))` followed by the payload.
Magic `ARC2` (a sealed frame): the payload is what `codec.FrameCodec.encode` makes, the envelope
compressed with the store's dictionary and encrypted with a data key. Magic `ARCH` (frames
written before encryption at rest, still read): the zstd-compressed canonical JSON of one
envelope. Frames are only ever appended, and every append is flushed and fsynced before the
caller commits the catalog that makes it visible.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import zstandard

from archive_store.codec import FrameCodec
from archive_store.errors import SegmentCorrupt

MAGIC = b"ARCH"
SEALED_MAGIC = b"ARC2"
HEADER = struct.Struct("<4sII")
ZERO_HASH = "0" * 64
# An entry's `prev` is the first 8 bytes (16 hex digits) of the previous entry's hash (entries
# written before that hold all 64 digits): a changed, missing or reordered frame still breaks
# the link, and the whole hash is one record's worth of incompressible bytes less per frame.
LINK_HEX = 16


def link_to(entry_hash: str) -> str:
    """The `prev` an entry written now carries after the entry with this hash.

    :param entry_hash: the previous entry's hash, hex
    """
    return entry_hash[:LINK_HEX]


def links_to(prev: object, entry_hash: str) -> bool:
    """Whether an entry's `prev` (whole, or its first 16 digits) names the entry before it.

    :param prev: the `prev` member of the entry
    :param entry_hash: the previous entry's hash, hex
    """
    if not isinstance(prev, str):
        return False
    return prev == entry_hash if len(prev) == 64 else prev == entry_hash[:LINK_HEX] != ""
# Measured on 1-2 KB record envelopes (English + Chinese): zstd-3 compresses at ~80-95 MB/s and
# decompresses at ~190-260 MB/s with ratio ~1.87; zlib-6 does ~22-27 and ~110 MB/s at ~1.95-2.08;
# zstd-1 is ~10% faster than zstd-3 for a slightly lower ratio. Reusing one (de)compressor per
# thread instead of one per frame is worth ~35% on compression.
ZSTD_LEVEL = 3
MAX_PAYLOAD = 256 * 2**20

_NAME = re.compile(r"^(\d{6,})\.(\d+)\.seg$")
_codecs = threading.local()  # zstd (de)compressor objects are not thread-safe; one per thread


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value canonically (sorted keys, no spaces, UTF-8).

    orjson does it ~3x faster than `json`; values it cannot encode (integers beyond 64 bits,
    lone surrogates) fall back to `json`, so the bytes depend only on the value.

    :param value: a JSON value; NaN and infinities are refused since JSON has no such numbers
    """
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return _canonical_json_slow(value)
    # orjson writes NaN and infinities as null: only then is a closer look needed.
    if b"null" in data and not _finite(value):
        raise ValueError("Out of range float values are not JSON compliant")
    return data


def _canonical_json_slow(value: Any) -> bytes:
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    # surrogatepass: a lone surrogate ("\\ud800" in the input JSON) survives; json.loads reads
    # such bytes back with the same error handler.
    return text.encode("utf-8", "surrogatepass")


def _finite(value: Any) -> bool:
    """False if a NaN or an infinity is anywhere in the value."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return kind is not float or math.isfinite(value)
    for item in items:
        kind = type(item)
        if kind is str or kind is int or item is None or kind is bool:
            continue
        if not _finite(item):
            return False
    return True


def canonical_object(fields: dict[str, Any], encoded: dict[str, bytes]) -> bytes:
    """`canonical_json` of an object some of whose values are already canonically encoded.

    JSON encoding composes, so splicing the canonical bytes of a value in gives exactly the
    bytes `canonical_json` would give for the whole object, without encoding that value twice.
    Each spliced member is first written as `null`; in canonical JSON an unescaped `"key":null`
    can only be that member (quotes inside strings are escaped).

    :param fields: the object's other members
    :param encoded: member name (plain ASCII) -> canonical JSON bytes of its value
    """
    data = canonical_json({**fields, **dict.fromkeys(encoded)})
    for key, value in encoded.items():
        data = data.replace(b'"' + key.encode() + b'":null', b'"' + key.encode() + b'":' + value, 1)
    return data


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of some bytes.

    :param data: the bytes to hash
    """
    return hashlib.sha256(data).hexdigest()


def _compressor() -> zstandard.ZstdCompressor:
    codec = getattr(_codecs, "compressor", None)
    if codec is None:
        codec = _codecs.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return codec


def _decompressor() -> zstandard.ZstdDecompressor:
    codec = getattr(_codecs, "decompressor", None)
    if codec is None:
        codec = _codecs.decompressor = zstandard.ZstdDecompressor()
    return codec


def build_frame(
    envelope: bytes, codec: FrameCodec | None = None, key_id: int = 0, dict_id: int = 0
) -> bytes:
    """Compress (and seal) an envelope and wrap it in a frame header.

    :param envelope: the canonical JSON bytes of one envelope
    :param codec: the store's codec; None writes an unsealed `ARCH` frame
    :param key_id: the data key to seal with (0: not sealed)
    :param dict_id: the compression dictionary (0: none)
    """
    if codec is None:
        payload = _compressor().compress(envelope)
        return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
    payload = codec.encode(envelope, key_id, dict_id)
    return HEADER.pack(SEALED_MAGIC, len(payload), zlib.crc32(payload)) + payload


def is_sealed(frame: bytes) -> bool:
    """True if a frame is encrypted (a sealed frame with a data key).

    :param frame: header plus payload
    """
    return frame[:4] == SEALED_MAGIC and frame[HEADER.size : HEADER.size + 4] != b"\0\0\0\0"


def decode_frame(frame: bytes, codec: FrameCodec | None = None) -> bytes:
    """Check a whole frame's header and crc and return its decompressed envelope bytes.

    :param frame: header plus payload, exactly one frame
    :param codec: the store's codec (needed for sealed frames)
    """
    if len(frame) < HEADER.size:
        raise SegmentCorrupt(f"frame is {len(frame)} bytes, shorter than its header")
    magic, size, crc = HEADER.unpack_from(frame)
    if magic != MAGIC and magic != SEALED_MAGIC:
        raise SegmentCorrupt("frame header has a bad magic number")
    payload = frame[HEADER.size :]
    if size != len(payload):
        raise SegmentCorrupt(f"frame header says {size} payload bytes, found {len(payload)}")
    if zlib.crc32(payload) != crc:
        raise SegmentCorrupt("frame crc32 does not match its payload")
    if magic == SEALED_MAGIC:
        if codec is None:
            raise SegmentCorrupt("frame is sealed and no codec was given to open it")
        return codec.decode(payload)
    try:
        return _decompressor().decompress(payload, max_output_size=MAX_PAYLOAD)
    except zstandard.ZstdError as e:
        raise SegmentCorrupt(f"frame does not decompress: {e}") from e


def parse_envelope(envelope: bytes) -> dict[str, Any]:
    """Parse decompressed envelope bytes into a dict.

    :param envelope: canonical JSON bytes of one envelope
    """
    try:
        value = json.loads(envelope)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SegmentCorrupt(f"envelope is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise SegmentCorrupt("envelope is not a JSON object")
    return value


def entry_hash_of(envelope: bytes) -> str:
    """The hash an entry has in the chain: of its envelope, or, for a `redacted` frame (whose
    content is gone), the hash it carries from the entry it replaced.

    :param envelope: decompressed envelope bytes
    """
    if envelope.startswith(b'{"entry_hash":"'):  # canonical JSON: keys sorted, so only a
        value = parse_envelope(envelope)  # redacted envelope starts with this member
        if value.get("type") == "redacted" and isinstance(value.get("entry_hash"), str):
            return value["entry_hash"]
    return sha256_hex(envelope)


def entry_hashes(record_id: str, envelope: bytes, seq: int) -> tuple[str, str]:
    """The `prev` and `sha256` of a record or event entry, read without parsing it (a bulk
    restore, a disposal or an erasure wants thousands). In canonical JSON the first `"prev":"`
    is the top-level member (the strings before it cannot hold an unescaped quote), and the
    top-level `record_id`, `seq` and `sha256` follow each other after the record.

    :param record_id: the id the catalog expects
    :param envelope: decompressed envelope bytes
    :param seq: the entry's seq
    :raises SegmentCorrupt: the entry is not that one
    """
    p = envelope.find(b'"prev":"') + 8
    end = envelope.find(b'"', p)
    prev = envelope[p:end]
    marker = b',"record_id":' + canonical_json(record_id) + b',"seq":%d,"sha256":"' % seq
    start = envelope.rfind(marker) + len(marker)
    sha = envelope[start : start + 64]
    if (
        p < 8 or len(prev) not in (LINK_HEX, 64) or prev.strip(b"0123456789abcdef")
        or start < len(marker) or envelope[start + 64 : start + 65] != b'"'
        or len(sha) != 64 or sha.strip(b"0123456789abcdef")
    ):
        raise SegmentCorrupt(f"record {record_id}: entry {seq} does not match the catalog")
    return prev.decode("ascii"), sha.decode("ascii")


def read_frame(
    f: BinaryIO, offset: int, length: int, codec: FrameCodec | None = None
) -> bytes:
    """Read the frame at `offset` and return its decompressed envelope bytes.

    :param f: a segment file opened for binary reading
    :param offset: where the frame starts
    :param length: the frame's total length (header plus payload), as the catalog records it
    :param codec: the store's codec (needed for sealed frames)
    """
    f.seek(offset)
    frame = f.read(length)
    if len(frame) < length:
        raise SegmentCorrupt(
            f"segment ends inside the frame at offset {offset} ({len(frame)} of {length} bytes)"
        )
    return decode_frame(frame, codec)


def iter_frames(f: BinaryIO, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield `(offset, frame bytes)` for each frame from the start of a file, unchecked.

    Stops at `end`, at the end of the file, or at the first header that cannot be a frame.

    :param f: a segment file opened for binary reading
    :param end: stop at this offset (the catalog's end for the segment), or None for the whole file
    """
    offset = 0
    f.seek(0)
    while end is None or offset < end:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        magic, size, _ = HEADER.unpack(header)
        if magic != MAGIC and magic != SEALED_MAGIC:
            return
        payload = f.read(size)
        if len(payload) < size:
            return
        yield offset, header + payload
        offset += HEADER.size + size


def segment_path(segments_dir: Path, segment_id: int, generation: int) -> Path:
    """The file name of one generation of one segment.

    :param segments_dir: the store's `segments/` folder
    :param segment_id: the segment's number
    :param generation: bumped each time disposal compacts the segment
    """
    return segments_dir / f"{segment_id:06d}.{generation}.seg"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """`(segment_id, generation)` from a segment file name, or None if it is not one.

    :param name: a file name inside `segments/`
    """
    match = _NAME.match(name)
    return (int(match[1]), int(match[2])) if match else None


def append_frames(path: Path, start: int, frames: Iterable[bytes]) -> list[int]:
    """Append frames at `start` (the committed end), flush and fsync; return their offsets.

    :param path: the segment file; created if missing
    :param start: the offset the first frame goes to; the file must be exactly this long
    :param frames: the frames to write, in order
    """
    offsets: list[int] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with _naming(path), os.fdopen(fd, "wb", closefd=False) as f:
            f.seek(start)
            position = start
            for frame in frames:
                offsets.append(position)
                f.write(frame)
                position += len(frame)
            f.flush()
            os.fsync(fd)  # the frames must be on disk before the catalog commit names them
    finally:
        os.close(fd)
    return offsets


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A write's error (a full disk, a file-size limit) names the file it was writing: the
    error alone names none."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


def write_file(path: Path, frames: Iterable[bytes]) -> None:
    """Write a new segment file from scratch, then fsync it and its folder.

    :param path: the file to create; it must not exist
    :param frames: the frames, in order
    """
    with _naming(path), open(path, "xb") as f:
        for frame in frames:
            f.write(frame)
        f.flush()
        os.fsync(f.fileno())
    fsync_directory(path.parent)


def truncate(path: Path, size: int) -> None:
    """Cut a segment file back to `size` bytes and fsync it.

    :param path: the segment file
    :param size: the committed end offset
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    """Fsync a folder so that files created or removed in it stay so after a crash.

    :param path: the folder
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
