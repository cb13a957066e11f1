"""The catalog's data keys and dictionaries: which key seals which frame, made when first needed.

Every function here runs inside the store's write lock and an open catalog transaction, except
`check_archive_key`, which only reads (it runs before anything is written).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from archive_store import compression
from archive_store.catalog import chunked, placeholders, transaction
from archive_store.codec import FrameCodec, dictionary_id
from archive_store.crypto import (
    KEY_ENV,
    KeyMissing,
    WrongKey,
    check_key,
    make_key,
    make_key_check,
    wrap_key,
)


@dataclass
class Sealing:
    """What new frames of one write are sealed and compressed with."""

    codec: FrameCodec
    shared_key: int  # records without a customer, events, redacted frames (0: not sealed)
    dict_id: int  # 0 until a dictionary is trained

    def key_for(self, customer_ids: dict[str, int], customer_id: str | None) -> int:
        """The data key of a record's frames.

        :param customer_ids: the keys `customer_keys` returned for this write
        :param customer_id: the record's customer, or None
        """
        if customer_id is None or not self.shared_key:
            return self.shared_key
        return customer_ids[customer_id]


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def check_archive_key(conn: sqlite3.Connection, codec: FrameCodec) -> None:
    """Refuse a missing or wrong archive key before the store writes anything.

    A catalog that has a key check needs the key that made it; one without (a new store, or one
    from before encryption at rest) is opened as it is.

    :param conn: a catalog connection (read only here)
    :param codec: the codec holding the key given, if any
    """
    if not _has_table(conn, "meta"):
        return
    stored = _meta(conn, "key_check")
    if stored is None:
        return
    if codec.archive is None:
        raise KeyMissing(f"this archive is encrypted: its key file or {KEY_ENV} is needed")
    check_key(codec.archive, bytes.fromhex(stored))


def rebind_empty_archive(conn: sqlite3.Connection, codec: FrameCodec) -> None:
    """Let an archive that holds no entry yet take the key it is given.

    `init` makes a key and binds the new catalog to it; a user who then puts the key of a
    backup in its place, to recover that backup, must not find the empty archive locked to the
    first key. Nothing was sealed with it but the catalog's key check and unused data keys,
    which are dropped; an archive with any entry keeps refusing another key.

    :param conn: a catalog connection, with the store's write lock held
    :param codec: the codec holding the key given
    """
    stored = _meta(conn, "key_check") if _has_table(conn, "meta") else None
    if codec.archive is None or stored is None or not _has_table(conn, "records"):
        return
    try:
        check_key(codec.archive, bytes.fromhex(stored))
        return
    except WrongKey:
        if holds_entries(conn):
            return  # (check_archive_key refuses it)
    with transaction(conn):
        conn.execute("DELETE FROM meta WHERE key IN ('key_check', 'shared_key_id', 'all_sealed')")
        conn.execute("DELETE FROM data_keys")
        conn.execute("DELETE FROM dictionaries")


def holds_entries(conn: sqlite3.Connection) -> bool:
    """Whether the catalog names any entry (every entry is a record's, and every record that
    has one has a `records` row; a catalog an earlier version wrote has an `entries` table).

    :param conn: a catalog connection
    """
    table = "entries" if _has_table(conn, "entries") else "records"
    return _has_table(conn, table) and conn.execute(
        f"SELECT 1 FROM {table} LIMIT 1"
    ).fetchone() is not None


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone() is not None


def load_sealing(conn: sqlite3.Connection, codec: FrameCodec) -> Sealing:
    """The shared key (made, with the key check, on the first write with a key) and the
    current dictionary.

    :param conn: a catalog connection in a write transaction
    :param codec: the store's codec
    """
    dict_id = int(_meta(conn, "dictionary_id") or 0)
    if codec.archive is None:
        return Sealing(codec, 0, dict_id)
    shared = _meta(conn, "shared_key_id")
    if shared is None:
        if _meta(conn, "key_check") is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?)",
                (make_key_check(codec.archive).hex(),),
            )
            if not holds_entries(conn):
                # encrypted from its first entry: `reseal` has nothing to do, ever
                conn.execute("INSERT INTO meta (key, value) VALUES ('all_sealed', '1')")
        cursor = conn.execute(
            "INSERT INTO data_keys (customer_id, wrapped) VALUES (NULL, ?)",
            (wrap_key(codec.archive, make_key()),),
        )
        shared = str(cursor.lastrowid)
        conn.execute("INSERT INTO meta (key, value) VALUES ('shared_key_id', ?)", (shared,))
    return Sealing(codec, int(shared), dict_id)


def customer_keys(
    conn: sqlite3.Connection, sealing: Sealing, customer_ids: Iterable[str]
) -> dict[str, int]:
    """The data key id of each customer, made for those who have none yet.

    :param conn: a catalog connection in a write transaction
    :param sealing: this write's sealing
    :param customer_ids: the customers of the records being written
    """
    archive = sealing.codec.archive
    if archive is None:
        return {}
    wanted = list(dict.fromkeys(customer_ids))
    found: dict[str, int] = {}
    for chunk in chunked(wanted):
        for row in conn.execute(
            "SELECT customer_id, key_id FROM data_keys "
            f"WHERE customer_id IN ({placeholders(len(chunk))})",
            chunk,
        ):
            found[row[0]] = row[1]
    for customer_id in wanted:
        if customer_id not in found:
            data_key = make_key()
            cursor = conn.execute(
                "INSERT INTO data_keys (customer_id, wrapped) VALUES (?, ?)",
                (customer_id, wrap_key(archive, data_key)),
            )
            assert cursor.lastrowid is not None
            found[customer_id] = cursor.lastrowid
            # (if the write rolls back, the store forgets every cached key)
            sealing.codec.add_key(cursor.lastrowid, data_key)
    return found


def train_if_due(
    conn: sqlite3.Connection, sealing: Sealing, samples: Sequence[tuple[str, bytes]]
) -> None:
    """Train the store's dictionary from a batch if it has none and the batch is big enough.

    :param conn: a catalog connection in a write transaction
    :param sealing: this write's sealing; its `dict_id` is set when a dictionary is made
    :param samples: `(owner, record bytes)` of the batch (see `compression.shared_runs`)
    """
    if sealing.dict_id or len(samples) < compression.MIN_TRAIN_RECORDS:
        return
    data = compression.train_dictionary(samples)
    if data is None:
        return
    dict_id = dictionary_id(data)
    conn.execute(
        "INSERT OR REPLACE INTO dictionaries (dict_id, data) VALUES (?, ?)",
        (dict_id, sealing.codec.seal_blob(data)),
    )
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('dictionary_id', ?)", (str(dict_id),)
    )
    compression.register_dictionary(dict_id, data)
    sealing.dict_id = dict_id


def destroy_customer_key(conn: sqlite3.Connection, customer_id: str) -> int | None:
    """Crypto-shred a customer's data key: the wrapped key and the customer's id leave the
    catalog (zeroed on disk by `secure_delete`); returns the key id, or None if there was none.

    :param conn: a catalog connection in a write transaction
    :param customer_id: the customer
    """
    row = conn.execute(
        "SELECT key_id FROM data_keys WHERE customer_id = ?", (customer_id,)
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE data_keys SET customer_id = NULL, wrapped = NULL WHERE key_id = ?", (row[0],)
    )
    return int(row[0])


def load_wrapped_key(conn: sqlite3.Connection, key_id: int) -> bytes | None:
    """The wrapped data key of an id, or None if it was destroyed or never made.

    :param conn: a catalog connection
    :param key_id: the key's id
    """
    row = conn.execute("SELECT wrapped FROM data_keys WHERE key_id = ?", (key_id,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def load_dictionary(conn: sqlite3.Connection, dict_id: int) -> bytes | None:
    """A dictionary's bytes as the catalog keeps them (sealed), or None.

    :param conn: a catalog connection
    :param dict_id: the dictionary's id
    """
    row = conn.execute("SELECT data FROM dictionaries WHERE dict_id = ?", (dict_id,)).fetchone()
    return None if row is None else bytes(row[0])
