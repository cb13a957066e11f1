"""Encryption at rest: the archive key, the data keys it wraps, and AES-GCM sealing.

The archive key (32 random bytes) lives outside the archive folder, in the key file named by
`[archive] key_file` or in `ARCHIVIST_ARCHIVE_KEY` (base64); it is never written into the
store, so a copy of the archive folder alone is unreadable. It wraps *data keys* kept in the
catalog: one per customer and one shared by records without a customer and by the store's own
events. Each frame is sealed with AES-256-GCM under one data key, so destroying a customer's
data key (crypto-shredding) leaves any copy of their frames, a backup's included, unreadable
with the keys that remain.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from archive_store.errors import ArchiveStoreError

logger = logging.getLogger(__name__)

KEY_ENV = "ARCHIVIST_ARCHIVE_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# Sealed with the archive key and kept in the catalog: opening the store with another key fails
# on this value at once, before anything is read or written.
KEY_CHECK = b"archivist archive key check v1"
_WRAP_AAD = b"archivist data key"


class KeyMissing(ArchiveStoreError):
    """The archive key is not available (no key file, no environment variable)."""

    code = "key_missing"


class WrongKey(ArchiveStoreError):
    """The archive key given does not open this archive (or is not a valid key)."""

    code = "wrong_key"


class KeyDestroyed(ArchiveStoreError):
    """A frame is sealed with a data key that erasure destroyed."""

    code = "key_destroyed"


def make_key() -> bytes:
    """A new random 256-bit key."""
    return os.urandom(KEY_BYTES)


def make_key_file(path: Path) -> bool:
    """Create the archive key file (mode 0600) if it is missing, else make it private again if
    others may read it; True if it was created.

    :param path: the key file (`[archive] key_file`)
    """
    path = Path(path)
    if path.exists():
        if stat.S_IMODE(path.stat().st_mode) & 0o077:  # copied with the umask's mode, say
            path.chmod(0o600)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(make_key()).decode() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False  # another process made it meanwhile: theirs is the key
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return True


def decode_key(text: str, source: str) -> bytes:
    """Decode a base64 archive key, refusing anything that is not exactly 32 bytes.

    :param text: the base64 text
    :param source: where it came from, for the error message
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WrongKey(f"the archive key in {source} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise WrongKey(f"the archive key in {source} is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def load_key(key_file: Path, env_value: str | None = None) -> bytes:
    """The archive key: `env_value` (from `ARCHIVIST_ARCHIVE_KEY`) if set, else the key file.

    :param key_file: the configured key file
    :param env_value: the environment variable's value, read by the caller at the edge
    """
    if env_value:
        return decode_key(env_value, KEY_ENV)
    try:
        text = Path(key_file).read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyMissing(
            f"archive key file {key_file} is missing: run `archivist init` to create it, "
            f"or set {KEY_ENV}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyMissing(f"cannot read archive key file {key_file}: {e}") from None
    key = decode_key(text, str(key_file))
    _warn_if_shared(Path(key_file))
    return key


def _warn_if_shared(key_file: Path) -> None:
    """Warn when others may read the key file. Not refused: a secret mounted by an
    orchestrator is often group- or world-readable inside its container by default."""
    try:
        mode = stat.S_IMODE(key_file.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        logger.warning(
            "archive key file %s may be read by other users (mode %04o): whoever reads it "
            "can open the archive; make it private with `chmod 600 %s`",
            key_file, mode, key_file,
        )


def seal(key: AESGCM, data: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate: a random nonce, then the ciphertext and its tag.

    :param key: the AES-GCM cipher of one key
    :param data: the plaintext
    :param aad: bytes authenticated with it but not encrypted (the frame's key and dictionary)
    """
    nonce = os.urandom(NONCE_BYTES)
    return nonce + key.encrypt(nonce, data, aad)


def unseal(key: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt what `seal` made; raises `InvalidTag` if the bytes or the key are wrong.

    :param key: the AES-GCM cipher of the key it was sealed with
    :param sealed: nonce, ciphertext and tag
    :param aad: the same associated data as when sealed
    """
    return key.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)


def wrap_key(archive_key: AESGCM, data_key: bytes) -> bytes:
    """Seal a data key with the archive key, for the catalog.

    :param archive_key: the archive key's cipher
    :param data_key: 32 random bytes
    """
    return seal(archive_key, data_key, _WRAP_AAD)


def unwrap_key(archive_key: AESGCM, wrapped: bytes) -> bytes:
    """Open a data key sealed by `wrap_key`.

    :param archive_key: the archive key's cipher
    :param wrapped: what `wrap_key` returned
    """
    try:
        return unseal(archive_key, wrapped, _WRAP_AAD)
    except InvalidTag:
        raise WrongKey("a data key in the catalog does not open with the archive key") from None


def make_key_check(archive_key: AESGCM) -> bytes:
    """The value that proves a key is this archive's, kept in the catalog.

    :param archive_key: the archive key's cipher
    """
    return seal(archive_key, KEY_CHECK, b"")


def check_key(archive_key: AESGCM, key_check: bytes) -> None:
    """Raise `WrongKey` unless `key_check` was made with this key.

    :param archive_key: the archive key's cipher
    :param key_check: the catalog's value
    """
    try:
        ok = unseal(archive_key, key_check, b"") == KEY_CHECK
    except InvalidTag:
        ok = False
    if not ok:
        raise WrongKey(
            "the archive key does not open this archive (wrong key file or "
            f"{KEY_ENV}); nothing was read or written"
        )
