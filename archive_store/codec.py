"""How an entry becomes the payload of a sealed frame and back: compress, then encrypt.

A sealed frame's payload is `struct.pack("<II", key_id, dict_id)` and then, when `key_id` is not
0, AES-GCM (nonce, ciphertext, tag) of the zstd-compressed envelope (its hex hashes packed as
binary, or recomputed, see `pack_hashes`), with those 8 bytes as
associated data; `dict_id` 0 means compressed without a dictionary. Data keys and dictionaries
are looked up in the catalog the first time a process meets their id, then cached.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Callable

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from archive_store import compression
from archive_store.crypto import KeyDestroyed, seal, unseal, unwrap_key
from archive_store.errors import SegmentCorrupt

PAYLOAD_HEADER = struct.Struct("<II")


_PREV = b'"prev":"'
_SHA = b',"sha256":"'
_RECORD = b'"record":'
_RECORD_END = b',"record_id":"'

# What follows the flag byte of a packed envelope:
_KEPT = b"\0"  # the envelope as it is
_BOTH = b"\1"  # prev and sha256 (64 bytes), then the envelope without them
_PREV_ONLY = b"\2"  # prev (32 bytes), then the envelope without either: sha256 is recomputed
_SHORT_BOTH = b"\3"  # as _BOTH, for a prev of 8 bytes (16 hex digits)
_SHORT_PREV_ONLY = b"\4"  # as _PREV_ONLY, for a prev of 8 bytes
_PREV_BYTES = {_BOTH: 32, _PREV_ONLY: 32, _SHORT_BOTH: 8, _SHORT_PREV_ONLY: 8}


def pack_hashes(envelope: bytes) -> bytes:
    """Move the envelope's two hex hashes (`prev` and `sha256`) out of the text: random hex is
    most of what a dictionary cannot compress in an envelope.

    The first `"prev":"` is the top-level member (keys are sorted and `prev` comes before the
    only nested object, `record`) and the last `,"sha256":"` is too (it comes after it); `prev`
    is 64 hex digits, or 16 in entries written since the chain links by the first 8 bytes of
    the hash. A record entry's `sha256` is the hash of its `record` member, so it is not stored
    at all but recomputed on the way back; the packed form is checked to give the very envelope
    back before it is used. Any other envelope keeps its hashes in binary in front, or is kept
    as it is.

    :param envelope: canonical JSON bytes of one envelope
    """
    p = envelope.find(_PREV) + len(_PREV)
    h = envelope.rfind(_SHA) + len(_SHA)
    if p < len(_PREV) or h < len(_SHA):
        return _KEPT + envelope
    width = 16 if envelope[p + 16 : p + 17] == b'"' else 64  # (a hex digit there otherwise)
    if h < p + width or envelope[p + width : p + width + 1] != b'"':
        return _KEPT + envelope
    prev, sha = envelope[p : p + width], envelope[h : h + 64]
    if envelope[h + 64 : h + 65] != b'"':
        return _KEPT + envelope
    try:
        binary = bytes.fromhex(prev.decode("ascii")) + bytes.fromhex(sha.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return _KEPT + envelope
    if binary.hex().encode() != prev + sha:  # only lowercase hex comes back as it was
        return _KEPT + envelope
    text = envelope[:p] + envelope[p + width : h] + envelope[h + 64 :]
    cut = width // 2
    sha_bytes = _record_sha(text)
    if sha_bytes == binary[cut:] and _insert_hashes(text, binary[:cut], sha_bytes) == envelope:
        return (_PREV_ONLY if width == 64 else _SHORT_PREV_ONLY) + binary[:cut] + text
    return (_BOTH if width == 64 else _SHORT_BOTH) + binary + text


def _record_sha(text: bytes) -> bytes | None:
    """The sha256 of the `record` member of an envelope text, or None if it has none.

    `record` sorts right before `record_id`, whose member is a string; the last unescaped
    `,"record_id":"` is the top-level one, as no member after it holds an object.
    """
    start = text.find(_RECORD)
    end = text.rfind(_RECORD_END)
    if start < 0 or end < start + len(_RECORD):
        return None
    return hashlib.sha256(text[start + len(_RECORD) : end]).digest()


def unpack_hashes(packed: bytes) -> bytes:
    """Undo `pack_hashes`.

    :param packed: what `pack_hashes` returned
    """
    flag = packed[:1]
    if flag == _KEPT:
        return packed[1:]
    cut = _PREV_BYTES.get(flag)
    if cut is None:
        raise SegmentCorrupt(f"sealed frame has an unknown hash packing {flag!r}")
    if flag in (_BOTH, _SHORT_BOTH) and len(packed) >= 1 + cut + 32:
        prev, sha, text = packed[1 : 1 + cut], packed[1 + cut : 33 + cut], packed[33 + cut :]
    elif flag in (_PREV_ONLY, _SHORT_PREV_ONLY) and len(packed) >= 1 + cut:
        prev, text = packed[1 : 1 + cut], packed[1 + cut :]
        recomputed = _record_sha(text)
        if recomputed is None:
            raise SegmentCorrupt("sealed frame lost its record member")
        sha = recomputed
    else:
        raise SegmentCorrupt("sealed frame is shorter than its packed hashes")
    return _insert_hashes(text, prev, sha)


def _insert_hashes(text: bytes, prev: bytes, sha: bytes) -> bytes:
    """Put the two hashes back, as hex, into an envelope text they were taken out of."""
    p = text.find(_PREV) + len(_PREV)
    h = text.rfind(_SHA) + len(_SHA)
    if p < len(_PREV) or h < len(_SHA) or h < p:
        raise SegmentCorrupt("sealed frame lost its hash members")
    return text[:p] + prev.hex().encode() + text[p:h] + sha.hex().encode() + text[h:]


def dictionary_id(data: bytes) -> int:
    """A dictionary's id: from its content, so an id always names the same bytes.

    :param data: the dictionary
    """
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "little") or 1


class FrameCodec:
    """Compresses and seals entries for one store; opens them again."""

    def __init__(
        self,
        archive_key: bytes | None,
        load_wrapped_key: Callable[[int], bytes | None],
        load_dictionary: Callable[[int], bytes | None],
    ) -> None:
        """
        :param archive_key: the archive key, or None for a store kept without encryption
        :param load_wrapped_key: key id -> the catalog's wrapped data key (None if destroyed)
        :param load_dictionary: dictionary id -> its bytes as the catalog keeps them, or None
        """
        self.archive = AESGCM(archive_key) if archive_key is not None else None
        self._load_wrapped_key = load_wrapped_key
        self._load_dictionary = load_dictionary
        self._keys: dict[int, AESGCM] = {}
        self._lock = threading.Lock()

    @property
    def encrypted(self) -> bool:
        """True when new frames are sealed (the store was opened with a key)."""
        return self.archive is not None

    def add_key(self, key_id: int, data_key: bytes) -> None:
        """Remember a data key (after the catalog committed it).

        :param key_id: its catalog id
        :param data_key: the unwrapped key
        """
        with self._lock:
            self._keys[key_id] = AESGCM(data_key)

    def forget_key(self, key_id: int) -> None:
        """Drop a destroyed data key from memory.

        :param key_id: its catalog id
        """
        with self._lock:
            self._keys.pop(key_id, None)

    def clear_keys(self) -> None:
        """Forget every cached data key (after a write that may have made keys rolled back)."""
        with self._lock:
            self._keys.clear()

    def _key(self, key_id: int) -> AESGCM:
        key = self._keys.get(key_id)
        if key is not None:
            return key
        if self.archive is None:
            raise KeyDestroyed("this frame is encrypted, and the store was opened without a key")
        wrapped = self._load_wrapped_key(key_id)
        if wrapped is None:
            raise KeyDestroyed(f"data key {key_id} was destroyed (erased)")
        key = AESGCM(unwrap_key(self.archive, wrapped))
        with self._lock:
            self._keys[key_id] = key
        return key

    def _dictionary(self, dict_id: int) -> None:
        if dict_id == 0 or compression.has_dictionary(dict_id):
            return
        stored = self._load_dictionary(dict_id)
        if stored is None:
            raise SegmentCorrupt(f"compression dictionary {dict_id} is not in the catalog")
        compression.register_dictionary(dict_id, self.open_blob(stored))

    def seal_blob(self, data: bytes) -> bytes:
        """Seal a catalog value with the archive key (as is without one).

        :param data: the plaintext
        """
        return data if self.archive is None else seal(self.archive, data, b"catalog")

    def open_blob(self, data: bytes) -> bytes:
        """Undo `seal_blob`.

        :param data: what `seal_blob` returned
        """
        if self.archive is None:
            return data
        try:
            return unseal(self.archive, data, b"catalog")
        except InvalidTag:
            raise SegmentCorrupt("a catalog value does not open with the archive key") from None

    def encode(self, envelope: bytes, key_id: int, dict_id: int) -> bytes:
        """The payload of a sealed frame for an envelope.

        :param envelope: the entry's canonical JSON bytes
        :param key_id: the data key to seal it with (0: not sealed)
        :param dict_id: the dictionary to compress with (0: none)
        """
        header = PAYLOAD_HEADER.pack(key_id, dict_id)
        self._dictionary(dict_id)
        body = compression.compress(pack_hashes(envelope), dict_id)
        if key_id:
            body = seal(self._key(key_id), body, header)
        return header + body

    def decode(self, payload: bytes) -> bytes:
        """The envelope in a sealed frame's payload.

        :param payload: the frame's payload (crc already checked)
        """
        if len(payload) < PAYLOAD_HEADER.size:
            raise SegmentCorrupt("sealed frame is shorter than its key and dictionary ids")
        key_id, dict_id = PAYLOAD_HEADER.unpack_from(payload)
        header, body = payload[: PAYLOAD_HEADER.size], payload[PAYLOAD_HEADER.size :]
        if key_id:
            try:
                body = unseal(self._key(key_id), body, header)
            except InvalidTag:
                raise SegmentCorrupt("frame does not decrypt (damaged, or not this key)") from None
        try:
            self._dictionary(dict_id)
            return unpack_hashes(compression.decompress(body, dict_id))
        except zstandard.ZstdError as e:
            raise SegmentCorrupt(f"frame does not decompress: {e}") from e
