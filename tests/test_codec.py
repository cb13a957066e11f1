"""How a sealed frame keeps an envelope's hashes: packed as binary, or recomputed."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archive_store import ArchiveItem, ArchiveStore, segment
from archive_store.codec import FrameCodec, pack_hashes, unpack_hashes
from archive_store.errors import SegmentCorrupt
from archive_store.segment import iter_frames

PREVIOUS = hashlib.sha256(b"previous entry").hexdigest()


def envelope_of(
    record: dict[str, Any], sha256: str | None = None, seq: int = 7, prev: str = PREVIOUS
) -> bytes:
    """A record entry's envelope as the store writes it (sha256 of the record unless given;
    `prev` whole, as entries were written before links were shortened, unless given)."""
    encoded = segment.canonical_json(record)
    return segment.canonical_object({
        "type": "record", "record_id": str(record.get("id", "r-1")), "version": 1,
        "at": "2026-01-02T03:04:05.000000Z", "actor": "archive-job",
        "sha256": sha256 if sha256 is not None else segment.sha256_hex(encoded),
        "seq": seq, "prev": prev,
    }, {"record": encoded})


RECORD = {
    "id": "m-1", "category": "communication", "subject": "Invoice INV-2024-0042",
    "body": "Refund approved, ,\"record_id\":\" and \"record\": in the text", "customer_id": "c-9",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["record_id", "record", "sha256", "prev", "x"]), inner,
                      max_size=3),
    max_leaves=12,
)


def test_a_record_entry_keeps_only_prev_and_recomputes_its_sha256() -> None:
    envelope = envelope_of(RECORD)
    packed = pack_hashes(envelope)
    assert packed[:1] == b"\2"
    sha = hashlib.sha256(segment.canonical_json(RECORD)).digest()
    assert sha not in packed and sha.hex().encode() not in packed
    assert hashlib.sha256(b"previous entry").digest() == packed[1:33]
    assert len(packed) == len(envelope) + 1 - 128 + 32
    assert unpack_hashes(packed) == envelope


def test_a_short_link_is_kept_as_its_8_bytes() -> None:
    """Entries link to the first 8 bytes of the previous entry's hash (`segment.link_to`)."""
    envelope = envelope_of(RECORD, prev=segment.link_to(PREVIOUS))
    packed = pack_hashes(envelope)
    assert packed[:1] == b"\4"
    assert packed[1:9] == bytes.fromhex(PREVIOUS)[:8]
    assert len(packed) == len(envelope) + 1 - 16 - 64 + 8
    assert unpack_hashes(packed) == envelope
    foreign = envelope_of(RECORD, sha256="ab" * 32, prev=segment.link_to(PREVIOUS))
    packed = pack_hashes(foreign)
    assert packed[:1] == b"\3" and packed[9:41] == bytes.fromhex("ab" * 32)
    assert unpack_hashes(packed) == foreign


def test_an_entry_whose_sha256_is_not_its_records_keeps_both_hashes() -> None:
    """A forged or foreign sha256 must come back as it was, so checks can see the mismatch."""
    envelope = envelope_of(RECORD, sha256="ab" * 32)
    packed = pack_hashes(envelope)
    assert packed[:1] == b"\1"
    assert bytes.fromhex("ab" * 32) == packed[33:65]
    assert unpack_hashes(packed) == envelope


def test_an_entry_with_uppercase_or_no_hashes_is_kept_as_it_is() -> None:
    upper = envelope_of(RECORD, sha256="AB" * 32)
    assert pack_hashes(upper) == b"\0" + upper
    assert unpack_hashes(pack_hashes(upper)) == upper
    plain = segment.canonical_json({"type": "event", "seq": 1})
    assert unpack_hashes(pack_hashes(plain)) == plain


@settings(max_examples=300, deadline=None)
@given(record=st.dictionaries(st.sampled_from(["id", "record_id", "record", "sha256", "body"]),
                              json_values, max_size=5))
def test_any_record_comes_back_byte_for_byte(record: dict[str, Any]) -> None:
    for prev in (PREVIOUS, segment.link_to(PREVIOUS)):
        envelope = envelope_of(record, prev=prev)
        assert unpack_hashes(pack_hashes(envelope)) == envelope


def test_frames_written_before_recomputed_hashes_still_decode() -> None:
    envelope = envelope_of(RECORD)
    p = envelope.find(b'"prev":"') + 8
    h = envelope.rfind(b',"sha256":"') + 11
    older = (b"\1" + bytes.fromhex(envelope[p : p + 64].decode())
             + bytes.fromhex(envelope[h : h + 64].decode())
             + envelope[:p] + envelope[p + 64 : h] + envelope[h + 64 :])
    assert unpack_hashes(older) == envelope


@pytest.mark.parametrize("packed", [b"\3{}", b"\2" + b"x" * 10, b"\1" + b"x" * 20,
                                    b"\2" + b"x" * 32 + b'{"prev":"","sha256":""}'])
def test_damaged_packing_is_named_as_corrupt(packed: bytes) -> None:
    with pytest.raises(SegmentCorrupt):
        unpack_hashes(packed)


def test_a_sealed_frame_is_32_bytes_smaller_and_opens_to_the_same_envelope() -> None:
    key = os.urandom(32)
    codec = FrameCodec(key, lambda key_id: None, lambda dict_id: None)
    codec.add_key(1, os.urandom(32))
    envelope = envelope_of(RECORD)
    frame = segment.build_frame(envelope, codec, 1, 0)
    forged = segment.build_frame(
        envelope_of(RECORD, sha256=hashlib.sha256(b"other").hexdigest()), codec, 1, 0
    )
    assert segment.decode_frame(frame, codec) == envelope
    assert len(forged) - len(frame) >= 30  # 32 bytes of hash, give or take compression


def test_a_store_reads_verifies_and_keeps_its_frames_sealed(tmp_path: Path) -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    store = ArchiveStore.open(tmp_path / "archive", key=os.urandom(32))
    records = [{**RECORD, "id": f"m-{i}", "body": f"message {i} " * 20} for i in range(40)]
    store.archive_batch([
        ArchiveItem(r["id"], r, "communication", "c-9", at) for r in records
    ], at, "archive-job")
    assert store.get_many([r["id"] for r in records]) == {r["id"]: r for r in records}
    assert store.get("m-3") == records[3]
    assert store.verify() == []
    (seg,) = (tmp_path / "archive" / "segments").glob("*.seg")
    with seg.open("rb") as f:
        frames = [frame for _, frame in iter_frames(f)]
    assert len(frames) == len(records) and all(segment.is_sealed(f) for f in frames)
    opened = b"".join(store.open_frame(f) for f in frames)
    for r in records:
        sha = segment.sha256_hex(segment.canonical_json(r))
        assert store.hashes([r["id"]]) == {r["id"]: sha}
        assert b'"sha256":"' + sha.encode() + b'"' in opened
    store.close()
