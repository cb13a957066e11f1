"""The catalog: `catalog.db`, a SQLite file mapping records to their entries in the segments.

A write to the store is visible only once its catalog transaction commits: that commit is the
store's commit point. WAL mode lets readers in other threads and processes carry on meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from archive_store.errors import CatalogUnavailable
from archive_store.faults import crash_point
from archive_store.models import CatalogEntry

SCHEMA_VERSION = "3"
IN_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's variable limit
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A record's state as the catalog keeps it: a number, its place here (0 and 1, the usual
# ones, take no bytes at all in a row or an index entry). SQL names them with these constants;
# `RECORD_SELECT` and `state_name` give the text back.
STATES = ("archived", "restored", "purged", "erased")
ARCHIVED, RESTORED, PURGED, ERASED = range(len(STATES))
GONE = f"({PURGED}, {ERASED})"  # for `state IN {GONE}`: the states with no content left

# One row per record, naming the frame of its current version; the rest of its life (earlier
# versions, restores, disposal, erasure) is one `history` row per entry. The hashes of entries
# and the chain live in the frames alone (`verify` reads them there); the meta table keeps the
# chain's head. Times are microseconds since 1970 (UTC).
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    segment_id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    sealed INTEGER NOT NULL DEFAULT 0,
    end_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    -- keyed by the entry of its current version (a `redacted` one once gone): each index then
    -- holds that small integer, not the id, and rows are added at the end of the table
    seq INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 3),  -- see STATES
    version INTEGER NOT NULL,
    segment_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,  -- (the record's sha256 is in its frame: see `ArchiveStore.hashes`)
    archived_at INTEGER NOT NULL,
    archived_by INTEGER NOT NULL,  -- a `names` id
    restored_at INTEGER,
    purged_at INTEGER,
    category INTEGER NOT NULL,  -- a `names` id
    customer_id TEXT,
    parent_id TEXT,  -- the record's `parent_id`: processes are looked up without reading segments
    updated_at INTEGER NOT NULL,  -- (the record's created_at decides nothing: only its frame)
    pending TEXT CHECK (pending IS NULL OR pending IN ('delete_active', 'insert_active')),
    indexed INTEGER NOT NULL DEFAULT 0,
    -- seq of the entry that set the current state, or NULL when that is `seq` (an archived
    -- record's is the entry that archived it): a row then holds it in no bytes at all
    state_seq INTEGER
);
CREATE INDEX IF NOT EXISTS records_state ON records (state);  -- (then by seq, the key)
CREATE INDEX IF NOT EXISTS records_unindexed ON records (indexed) WHERE indexed = 0;
CREATE INDEX IF NOT EXISTS records_pending ON records (record_id) WHERE pending IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_parent ON records (parent_id) WHERE parent_id IS NOT NULL;
-- The short texts many records share (categories, who archived them), each kept once.
CREATE TABLE IF NOT EXISTS names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    segment_id INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    type TEXT NOT NULL,  -- 'record' (an earlier version), 'redacted' (one gone) or 'event'
    record_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event TEXT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    reason TEXT  -- an event's reason (a restore's), as in its frame
);
CREATE INDEX IF NOT EXISTS history_record ON history (record_id, seq);
CREATE INDEX IF NOT EXISTS history_segment ON history (segment_id, seq);
CREATE TABLE IF NOT EXISTS data_keys (
    key_id INTEGER PRIMARY KEY,
    customer_id TEXT UNIQUE,           -- NULL: the shared key (meta shared_key_id)
    wrapped BLOB                       -- sealed with the archive key, NULL once erased
);
CREATE TABLE IF NOT EXISTS dictionaries (
    dict_id INTEGER PRIMARY KEY,       -- from the content (codec.dictionary_id)
    data BLOB NOT NULL                 -- sealed with the archive key
);
"""

RECORD_COLUMNS = (
    "record_id, state, version, seq, segment_id, offset, length, archived_at, "
    "archived_by, restored_at, purged_at, category, customer_id, parent_id, updated_at, "
    "pending, indexed, state_seq"
)
HISTORY_COLUMNS = (
    "seq, segment_id, offset, length, type, record_id, version, event, at, actor, sha256, reason"
)
_NAMED = ("category", "archived_by")


def state_name(column: str) -> str:
    """SQL giving the name of the state in `column` (which holds its number).

    :param column: a column or expression holding a state's number
    """
    cases = " ".join(f"WHEN {code} THEN '{name}'" for code, name in enumerate(STATES))
    return f"CASE {column} {cases} END"


def state_code(name: str) -> int:
    """The number the catalog keeps for a state.

    :param name: one of `STATES`
    """
    return STATES.index(name)


# The columns of `records` as the code reads them, `names` ids turned back into their text and
# the state into its name; the table must be read as `records` (not under an alias) for the
# look-ups to find it.
RECORD_SELECT = ", ".join(
    f"(SELECT name FROM names WHERE id = records.{column}) AS {column}" if column in _NAMED
    else f"{state_name('records.state')} AS state" if column == "state"
    else f"records.{column}"
    for column in (c.strip() for c in RECORD_COLUMNS.split(","))
)
# Every entry of the store, whichever table names it, with the columns both have; `current`
# is 1 for a record's current entry (a `records` row), 0 for a `history` row.
ALL_ENTRIES = (
    f"SELECT seq, segment_id, offset, length, CASE WHEN state IN {GONE} "
    "THEN 'redacted' ELSE 'record' END AS type, record_id, version, NULL AS event, "
    "archived_at AS at, (SELECT name FROM names WHERE id = archived_by) AS actor, NULL AS sha256, "
    "NULL AS reason, 1 AS current "
    f"FROM records UNION ALL SELECT {HISTORY_COLUMNS}, 0 FROM history"
)

# Where the entry with a given seq is, in whichever table (bound twice: the seq).
ENTRY_AT = (
    "SELECT e.segment_id, e.offset, e.length, s.generation FROM (SELECT segment_id, offset, "
    "length FROM history WHERE seq = ? UNION ALL SELECT segment_id, offset, length FROM records "
    "WHERE seq = ?) e "
    "JOIN segments s USING (segment_id)"
)


def pack_hash(hex_text: str) -> bytes:
    """A SHA-256 as the catalog keeps it: 32 bytes, not 64 hex characters.

    :param hex_text: the hash in hex
    """
    return bytes.fromhex(hex_text)


def hash_hex(value: str | bytes) -> str:
    """A catalog hash as hex; catalogs written before hashes were binary hold hex text.

    :param value: what a hash column holds
    """
    return value.hex() if isinstance(value, bytes) else value


def format_time(value: datetime) -> str:
    """Format an aware datetime as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` in UTC.

    :param value: an aware datetime; naive ones are refused, their zone is unknown
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: archive store times must be aware")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat(): seconds always, `.ffffff` only when there are microseconds, then "+00:00".
    return value.isoformat()[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """Parse a time written by `format_time` back into an aware UTC datetime.

    :param text: `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`
    """
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is UTC else value.astimezone(UTC)  # skip the no-op conversion


def epoch_micros(value: datetime) -> int:
    """Microseconds since 1970-01-01 UTC; sortable where ISO strings with fractions are not.

    :param value: an aware datetime
    """
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: archive store times must be aware")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """Undo `epoch_micros`.

    :param value: microseconds since 1970-01-01 UTC
    """
    return _EPOCH + timedelta(microseconds=value)


# What SQLite says of the file or the disk under it, not of the statement: reported as the
# catalog's condition (`CatalogUnavailable`), naming the file.
_FILE_ERRORS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_PERM",
                "SQLITE_READONLY", "SQLITE_NOTADB", "SQLITE_CORRUPT")


def name_catalog_error(error: sqlite3.Error, path: Path) -> sqlite3.Error:
    """The error as `CatalogUnavailable` naming the catalog file if it is the file's or the
    disk's (full, unreadable, not a database), else the error itself.

    :param error: what sqlite3 raised
    :param path: the catalog file
    """
    if isinstance(error, CatalogUnavailable) or not str(
        getattr(error, "sqlite_errorname", "")
    ).startswith(_FILE_ERRORS):
        return error
    named = CatalogUnavailable(f"the archive catalog {path}: {error}")
    named.sqlite_errorcode, named.sqlite_errorname = error.sqlite_errorcode, error.sqlite_errorname
    return named


class CatalogConnection(sqlite3.Connection):
    """A catalog connection whose statements report a full disk, an I/O error or a file that
    cannot be opened as `CatalogUnavailable` naming the catalog (rows fetched later are read
    as from any connection: a statement has read its first page already)."""

    path: Path

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as e:
            raise name_catalog_error(e, self.path) from e

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.Error as e:
            raise name_catalog_error(e, self.path) from e

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as e:
            raise name_catalog_error(e, self.path) from e

    def commit(self) -> None:
        try:
            super().commit()
        except sqlite3.Error as e:
            raise name_catalog_error(e, self.path) from e


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open the catalog in autocommit mode; transactions are begun explicitly.

    :param path: the `catalog.db` file
    :param read_only: open it read-only, for a store on a folder we may not write
    :raises CatalogUnavailable: the file cannot be opened, or its first statements fail for
        want of space or a readable file (so do later statements: see `CatalogConnection`)
    """
    try:
        return _connect(path, read_only)
    except sqlite3.Error as e:
        raise name_catalog_error(e, path) from e


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    # check_same_thread=False only so that close() may run on another thread; each connection
    # is otherwise used by the one thread that opened it.
    if read_only:
        conn = _connect_read_only(path)
    else:
        if not path.exists():  # private (customer ids, sealed keys); its WAL alike
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        else:
            _make_private(path)
        conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False,
                               factory=CatalogConnection)
    assert isinstance(conn, CatalogConnection)
    conn.path = path
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the catalog indexes stay in memory
    conn.execute("PRAGMA wal_autocheckpoint=10000")  # checkpoint every ~40 MiB of WAL, not 4
    conn.execute("PRAGMA journal_size_limit=4194304")  # then shrink the WAL file to 4 MiB
    # Deleted rows are overwritten with zeros, not left in free pages: an erased customer's
    # id and data key must not survive in the file.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _make_private(path: Path) -> None:
    """Mode 0600 for a catalog made before it was private (an earlier version made it with
    the umask's mode), and for its WAL files; another owner's files are left as they are."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            private = Path(f"{path}{suffix}")
            if private.stat().st_mode & 0o077:
                private.chmod(0o600)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Read-only: WAL readers need the `-shm` file, which a read-only folder may lack once
    the last writer closed; then the file is read as immutable (nobody can write it here)."""
    uri = path.resolve().as_uri()
    for mode in ("mode=ro", "immutable=1"):
        conn = sqlite3.connect(
            f"{uri}?{mode}", uri=True, timeout=60, isolation_level=None, check_same_thread=False,
            factory=CatalogConnection,
        )
        conn.path = path
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            conn.close()
            if mode == "immutable=1":
                raise
            continue
        return conn
    raise AssertionError("unreachable")


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if missing and switch the file to WAL mode; idempotent. A catalog an
    earlier version made is rewritten into this shape once: one with a row per entry (and
    their hashes), or one whose `records` kept states as text and each record's `created_at`.

    :param conn: a catalog connection, with the store's write lock held
    """
    conn.execute("PRAGMA journal_mode=WAL")
    with transaction(conn):
        if _has_table(conn, "entries"):
            upgrade = _fill_from_entry_catalog
        elif "created_at" in _columns(conn, "records"):
            upgrade = _fill_from_text_states
        else:
            upgrade = None
        if upgrade is not None:
            _set_aside_records(conn)
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if upgrade is not None:
            upgrade(conn)
            crash_point("catalog.upgraded")
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (SCHEMA_VERSION,),
        )
    if upgrade is not None:  # the earlier tables' pages go back to the file system, and the log's
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone() is not None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _set_aside_records(conn: sqlite3.Connection) -> None:
    """Rename the `records` table of a catalog an earlier version made, and drop its indexes
    (and those of its `entries` table, if it has one), so that this version's tables can be
    made beside it."""
    conn.execute("ALTER TABLE records RENAME TO records_before")
    for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN "
        "('records_before', 'entries') AND sql IS NOT NULL"
    ).fetchall():
        conn.execute(f"DROP INDEX {row[0]}")


def _fill_from_entry_catalog(conn: sqlite3.Connection) -> None:
    """Copy a catalog with an `entries` table into this version's tables, then drop it.

    Each record's row takes the place of its current entry's; every other entry becomes a
    `history` row; the hashes are left to the frames, which hold them too, and the newest
    entry's becomes the chain's head.
    """
    conn.create_function("micros", 1, _text_micros, deterministic=True)
    conn.create_function("binary_hash", 1, _binary_hash, deterministic=True)
    parent = "r.parent_id" if "parent_id" in _columns(conn, "records_before") else "NULL"
    reason = "e.reason" if "reason" in _columns(conn, "entries") else "NULL"
    conn.execute(
        "INSERT OR IGNORE INTO names (name) SELECT category FROM records_before "
        "UNION SELECT actor FROM entries"
    )
    conn.execute(
        f"INSERT INTO records ({RECORD_COLUMNS}) SELECT r.record_id, {_code_of('r.state')}, "
        "r.version, r.seq, "
        "e.segment_id, e.offset, e.length, micros(r.archived_at), "
        "(SELECT id FROM names WHERE name = e.actor), micros(r.restored_at), "
        "micros(r.purged_at), (SELECT id FROM names WHERE name = r.category), r.customer_id, "
        f"{parent}, r.updated_at_us, r.pending, r.indexed, NULLIF(r.state_seq, r.seq) "
        "FROM records_before r JOIN entries e ON e.seq = r.seq"
    )
    conn.execute(
        f"INSERT INTO history ({HISTORY_COLUMNS}) SELECT e.seq, e.segment_id, e.offset, "
        "e.length, e.type, e.record_id, e.version, e.event, micros(e.at), e.actor, "
        f"binary_hash(e.sha256), {reason} FROM entries e "
        "LEFT JOIN records_before r ON r.record_id = e.record_id "
        "WHERE r.seq IS NULL OR r.seq != e.seq"
    )
    head = conn.execute("SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    if head is not None:
        set_head(conn, head["seq"], hash_hex(head["entry_hash"]))
    conn.execute("DROP TABLE entries")
    conn.execute("DROP TABLE records_before")


def _fill_from_text_states(conn: sqlite3.Connection) -> None:
    """Copy the `records` of a catalog that kept states as text (and each record's
    `created_at`, which its frame holds, and every `state_seq`) into this version's, then drop
    it."""
    columns = [c.strip() for c in RECORD_COLUMNS.split(",")]
    conn.execute(
        f"INSERT INTO records ({RECORD_COLUMNS}) SELECT "
        + ", ".join(
            _code_of("state") if c == "state" else "NULLIF(state_seq, seq)" if c == "state_seq"
            else c for c in columns
        )
        + " FROM records_before"
    )
    conn.execute("DROP TABLE records_before")


def _code_of(column: str) -> str:
    """SQL giving the number of the state named in `column`, as earlier versions kept it."""
    cases = " ".join(f"WHEN '{name}' THEN {code}" for code, name in enumerate(STATES))
    return f"CASE {column} {cases} END"


def _text_micros(text: str | None) -> int | None:
    return None if text is None else epoch_micros(parse_time(text))


def _binary_hash(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else pack_hash(value)


def name_id(conn: sqlite3.Connection, name: str) -> int:
    """The `names` id of a text, added if new (inside the caller's write transaction).

    :param conn: a catalog connection
    :param name: a category, or who archived a record
    """
    conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
    return int(conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()[0])


def get_head(conn: sqlite3.Connection) -> tuple[int, str]:
    """The seq and entry hash of the newest entry: `(0, ZERO_HASH)` for an empty store.

    :param conn: a catalog connection
    """
    rows = dict(conn.execute(
        "SELECT key, value FROM meta WHERE key IN ('head_seq', 'head_hash')"
    ).fetchall())
    if "head_seq" not in rows:
        return 0, "0" * 64
    return int(rows["head_seq"]), rows["head_hash"]


def set_head(conn: sqlite3.Connection, seq: int, entry_hash: str) -> None:
    """Record the newest entry (inside the write transaction that adds it).

    :param conn: a catalog connection
    :param seq: its seq
    :param entry_hash: its hash, hex
    """
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        (("head_seq", str(seq)), ("head_hash", entry_hash)),
    )


def is_current(conn: sqlite3.Connection) -> bool:
    """True when `create_schema` has nothing to change: a catalog an earlier version made lacks
    tables, columns or indexes this code reads, or keeps them in another form (its
    `schema_version` says which).

    :param conn: a catalog connection (read-only will do)
    """
    fresh = sqlite3.connect(":memory:")
    fresh.row_factory = sqlite3.Row
    try:
        create_schema(fresh)
        if not _shape(fresh) <= _shape(conn):
            return False
    finally:
        fresh.close()
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return version is not None and int(version[0]) >= int(SCHEMA_VERSION)


def upgraded_copy(path: Path, scratch: Path) -> Path:
    """The catalog at `path` if it is current, else a copy of it in `scratch`, upgraded (a
    backup an earlier version made is checked and read without being written to).

    :param path: a `catalog.db` file, not in use by a store
    :param scratch: an empty folder to copy it into
    """
    conn = connect(path, read_only=True)
    try:
        if is_current(conn):
            return path
    finally:
        conn.close()
    copy = scratch / path.name
    source = connect(path, read_only=True)
    try:  # (the backup API: what the file's write-ahead log holds is copied too)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    conn = connect(copy)
    try:
        create_schema(conn)
    finally:
        conn.close()
    return copy


def _shape(conn: sqlite3.Connection) -> set[tuple[str, str]]:
    """Each table's columns, as (table, column), and each index, as ("index", name)."""
    shape: set[tuple[str, str]] = set()
    for row in conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"):
        if row[0] == "table":
            shape.update((row[1], c[1]) for c in conn.execute(f"PRAGMA table_info({row[1]})"))
        elif row[0] == "index":
            shape.add(("index", row[1]))
    return shape


@contextmanager
def transaction(conn: sqlite3.Connection, durable: bool = True) -> Iterator[sqlite3.Connection]:
    """A write transaction: commit on success, roll back on any error.

    :param conn: a catalog connection
    :param durable: False skips the commit's fsync, for changes a crash may lose because they
        are redone anyway (WAL keeps the file consistent; the next durable commit syncs them)
    """
    if not durable:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        if not durable:
            conn.execute("PRAGMA synchronous=FULL")


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction, so that several queries see one committed state.

    :param conn: a catalog connection
    """
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def chunked(items: Iterable[str], size: int = IN_CHUNK) -> Iterator[list[str]]:
    """Split ids into lists of at most `size`.

    :param items: the ids
    :param size: the largest list to yield
    """
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def placeholders(n: int) -> str:
    """`?, ?, ...` for an `IN` list of n values.

    :param n: how many values
    """
    return ", ".join("?" * n)


def load_records(conn: sqlite3.Connection, record_ids: Iterable[str]) -> dict[str, sqlite3.Row]:
    """The `records` rows of the given ids that exist, by id.

    :param conn: a catalog connection
    :param record_ids: the ids to look up
    """
    found: dict[str, sqlite3.Row] = {}
    for chunk in chunked(dict.fromkeys(record_ids)):
        rows = conn.execute(
            f"SELECT {RECORD_SELECT} FROM records WHERE record_id IN ({placeholders(len(chunk))})",
            chunk,
        )
        for row in rows:
            found[row["record_id"]] = row
    return found


def reindex_descendants(conn: sqlite3.Connection, parent_ids: Iterable[str]) -> int:
    """Clear `indexed` on the indexed archived descendants of these records; returns how many.

    A record archived before its parent (the parent imported later) was indexed with itself, or
    its highest archived ancestor, as its process's root; archiving an ancestor changes that
    root, so the next catch-up indexes them again with the new one.

    :param conn: a catalog connection inside the write transaction that archives the parents
    :param parent_ids: the records just archived
    """
    seen = set(parent_ids)
    frontier = list(seen)
    cleared = 0
    while frontier:
        children: list[str] = []
        for chunk in chunked(frontier):
            children.extend(row[0] for row in conn.execute(
                f"SELECT record_id FROM records WHERE parent_id IN ({placeholders(len(chunk))})",
                chunk,
            ))
        frontier = [child for child in dict.fromkeys(children) if child not in seen]
        seen.update(frontier)
        for chunk in chunked(frontier):
            cleared += conn.execute(
                f"UPDATE records SET indexed = 0 WHERE state = {ARCHIVED} AND indexed = 1 "
                f"AND record_id IN ({placeholders(len(chunk))})",
                chunk,
            ).rowcount
    return cleared


def load_record(conn: sqlite3.Connection, record_id: str) -> sqlite3.Row | None:
    """The `records` row of one id, or None.

    :param conn: a catalog connection
    :param record_id: the id
    """
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {RECORD_SELECT} FROM records WHERE record_id = ?", (record_id,)
    ).fetchone()
    return row


def build_catalog_entry(row: sqlite3.Row) -> CatalogEntry:
    """Turn a `records` row into a `CatalogEntry`.

    :param row: a row selected with `RECORD_SELECT`
    """
    return CatalogEntry(
        record_id=row["record_id"],
        state=row["state"],
        version=row["version"],
        segment_id=row["segment_id"],
        archived_at=from_micros(row["archived_at"]),
        restored_at=None if row["restored_at"] is None else from_micros(row["restored_at"]),
        purged_at=None if row["purged_at"] is None else from_micros(row["purged_at"]),
        category=row["category"],
        customer_id=row["customer_id"],
        updated_at=from_micros(row["updated_at"]),
        pending=row["pending"],
        indexed=bool(row["indexed"]),
        parent_id=row["parent_id"],
        seq=row["seq"],
    )


def iter_keyset(
    conn: sqlite3.Connection,
    select: str,
    where: Sequence[str],
    params: Sequence[Any],
    key: str,
    page_size: int = 1000,
) -> Iterator[sqlite3.Row]:
    """Stream rows ordered by a unique text/integer `key`, one short query per page.

    Each page is a separate, fully fetched query, so no statement stays open while the caller
    works (it may write through the same connection) and no read snapshot pins the WAL.

    :param conn: a catalog connection
    :param select: `SELECT ... FROM ...` without WHERE/ORDER BY
    :param where: AND-ed conditions
    :param params: their parameters
    :param key: the unique column to order and page by
    :param page_size: rows per query
    """
    last: Any = None
    while True:
        conditions = list(where)
        values = list(params)
        if last is not None:
            conditions.append(f"{key} > ?")
            values.append(last)
        sql = select
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY {key} LIMIT {int(page_size)}"
        rows = conn.execute(sql, values).fetchall()
        yield from rows
        if len(rows) < page_size:
            return
        last = rows[-1][key.split(".")[-1]]
