"""The active database: SQLAlchemy 2.x models, engine and sessions.

Besides the CRM's active records it holds Archivist's own operational tables (legal holds, job
runs, the worker's lease), so that one database URL configures everything.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Index,
    Integer,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from archivist.records import MAX_CHARS, RECORD_FIELDS, Record, record_from_json
from archivist.sqlite_writers import QueuedConnection, connection_factory


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no offset, so store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of every table in the active database."""


class ActiveRecord(Base):
    """A record that is live in the CRM (not archived)."""

    __tablename__ = "active_records"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(MAX_CHARS["kind"]))
    category: Mapped[str] = mapped_column(String(MAX_CHARS["category"]))
    customer_id: Mapped[str | None] = mapped_column(String(MAX_CHARS["customer_id"]))
    owner: Mapped[str | None] = mapped_column(String(MAX_CHARS["owner"]))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(MAX_CHARS["status"]))
    created_at: Mapped[str] = mapped_column(String(32))  # canonical text, as given back
    updated_at: Mapped[str] = mapped_column(String(32))
    updated_at_utc: Mapped[datetime] = mapped_column(UTCDateTime)  # for age comparisons
    attributes: Mapped[str | None] = mapped_column(Text)  # JSON text, kept verbatim
    parent_id: Mapped[str | None] = mapped_column(String(128))
    # Whether the record came with a `parent_id` field at all (null included), so that one
    # imported without it is given back without it.
    has_parent_id: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    __table_args__ = (
        Index("ix_active_category_updated", "category", "updated_at_utc"),
        Index("ix_active_updated", "updated_at_utc"),
        Index("ix_active_customer", "customer_id"),
        Index("ix_active_parent", "parent_id"),
    )

    def to_record(self) -> Record:
        """The Record this row holds."""
        return _row_to_record({c: getattr(self, c) for c in (*_RECORD_COLUMNS, *_EXTRA_COLUMNS)})


ACTIVE_TABLE = cast(Table, ActiveRecord.__table__)  # Core statements: no ORM objects per row


class LegalHold(Base):
    """A legal hold on one record, one customer's records or a whole category."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))  # record | customer | category
    value: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("scope", "value", name="uq_hold_scope_value"),)


class JobRun(Base):
    """One run of a worker job, for stats and the admin pages."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archived: Mapped[int] = mapped_column(Integer, default=0)
    purged: Mapped[int] = mapped_column(Integer, default=0)
    indexed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    runner: Mapped[str | None] = mapped_column(String(300))  # `host:pid` of its process
    # the moment it ran as (`--as-of`); NULL in runs recorded before it was kept
    as_of: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Lease(Base):
    """A named lease that lets one worker process at a time run a job."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


_RECORD_COLUMNS = RECORD_FIELDS
_EXTRA_COLUMNS = ("attributes", "parent_id", "has_parent_id")  # after them, in Record's order


def _postgresql_engine(url: str) -> Engine:
    """An engine whose sessions print dates as ISO 8601 whatever the server's or database's
    `DateStyle` (the driver reads no other), leaving the order it reads typed dates in."""
    engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET DateStyle TO ISO")
        dbapi_connection.commit()

    return engine


def sqlite_path(active_url: str) -> Path | None:
    """The file of a SQLite active database, or None for any other database.

    :param active_url: the `[active] url`
    """
    url = make_url(active_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def make_engine(url: str, *, create: bool = False) -> Engine:
    """Create an engine; SQLite gets WAL, full sync, a busy timeout and immediate transactions.

    :param create: make the SQLite file's folder if missing (`archivist init`); a command
        before `init` leaves no empty folder behind
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    connect_args: dict[str, Any] = {"timeout": 60}
    if parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database).absolute()
        if create:
            database.parent.mkdir(parents=True, exist_ok=True)
        connect_args["factory"] = connection_factory(database)
    engine = create_engine(url, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (see the SQLAlchemy
        # SQLite docs, "Serializable isolation / Savepoints / Transactional DDL").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
        # Checkpoint every ~40 MiB of WAL, not 4: an archive batch dirties index pages that
        # the next batches dirty again, so fewer checkpoints write each page fewer times.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA journal_size_limit=4194304")  # shrink the WAL after that
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction can then never
        # fail half-way with SQLITE_BUSY because another writer committed in between. A
        # read-only transaction reads WAL's last commit instead, without waiting for writers.
        # Writers first queue up (see archivist.sqlite_writers) rather than poll SQLite's lock.
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN")
            return
        dbapi_connection = connection.connection.dbapi_connection
        if isinstance(dbapi_connection, QueuedConnection):
            dbapi_connection.begin_write()
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_READ_ONLY = "archivist_read_only"


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to the engine; use `with sessions.begin() as session:`."""
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions for transactions that only read: on SQLite they do not wait for the write
    lock (an archive batch holds it for a while), and must not write."""
    return sessionmaker(engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)


def create_schema(engine: Engine) -> None:
    """Create every table that does not exist yet (idempotent)."""
    register_all_tables()
    Base.metadata.create_all(engine)
    upgrade_schema(engine)
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:":  # private: token hashes, the audit log
        for suffix in ("", "-wal", "-shm"):
            path = Path(database + suffix)
            with contextlib.suppress(OSError):  # (another owner's file is left as it is)
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)


def find_archive_traces(engine: Engine) -> str | None:
    """What the active database keeps of an archive's work, in words, or None: records its
    job runs archived, purged or indexed, CRM rows its ledger says left for the archive,
    disposals on record. An archive folder found without its catalog while any of these is
    there is not a new installation but one whose archive is away (deleted, not mounted)."""
    from archivist.crm_ledger import ArchivedProcessMember

    tables = set(inspect(engine).get_table_names())
    reader = engine.execution_options(**{_READ_ONLY: True})
    with reader.connect() as connection:
        if JobRun.__tablename__ in tables:
            archived = connection.scalar(
                select(func.coalesce(func.sum(JobRun.archived), 0)).where(JobRun.job == "archive")
            )
            if archived:
                return f"the active database's job runs archived {archived} records"
            worked = connection.scalar(select(func.count()).select_from(JobRun).where(
                (JobRun.archived > 0) | (JobRun.purged > 0) | (JobRun.indexed > 0)
            ))
            if worked:
                return f"the active database records {worked} job runs that moved records"
        if ArchivedProcessMember.__tablename__ in tables:
            members = connection.scalar(select(func.count()).select_from(ArchivedProcessMember))
            if members:
                return f"the active database's ledger holds {members} archived CRM rows"
        if Disposal.__tablename__ in tables:
            disposals = connection.scalar(select(func.count()).select_from(Disposal))
            if disposals:
                return f"the active database records {disposals} disposals"
    return None


def register_all_tables() -> None:
    """Make every table of Archivist's known to `Base.metadata`, including those declared beside
    the code that uses them (imported here, not at the top: they import this module)."""
    from archivist import archive_head, crm_ledger, web_sessions  # noqa: F401


def upgrade_schema(engine: Engine) -> None:
    """Add the columns and indexes a database made by an older version lacks (idempotent)."""
    inspector = inspect(engine)
    if not inspector.has_table(ACTIVE_TABLE.name):
        return
    _add_disposal_category_index(engine, inspector)
    from archivist.archive_head import add_archive_head

    with contextlib.suppress(OperationalError, IntegrityError):  # (read-only: a later start)
        add_archive_head(engine)
    from archivist.crm_ledger import add_seq_column

    add_seq_column(engine)
    run_columns = {column["name"] for column in inspector.get_columns("job_runs")}
    if "runner" not in run_columns:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE job_runs ADD COLUMN runner VARCHAR(300)")
    if "as_of" not in run_columns:
        time_type = DateTime().compile(dialect=engine.dialect)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE job_runs ADD COLUMN as_of {time_type}")
    present = {column["name"] for column in inspector.get_columns(ACTIVE_TABLE.name)}
    missing = [name for name in ("parent_id", "has_parent_id") if name not in present]
    if not missing:
        return
    with engine.begin() as connection:
        if "parent_id" in missing:
            connection.exec_driver_sql(
                f"ALTER TABLE {ACTIVE_TABLE.name} ADD COLUMN parent_id VARCHAR(128)"
            )
        if "has_parent_id" in missing:
            connection.exec_driver_sql(
                f"ALTER TABLE {ACTIVE_TABLE.name} "
                "ADD COLUMN has_parent_id BOOLEAN NOT NULL DEFAULT FALSE"
            )
        connection.exec_driver_sql(
            f"CREATE INDEX IF NOT EXISTS ix_active_parent ON {ACTIVE_TABLE.name} (parent_id)"
        )


def _add_disposal_category_index(engine: Engine, inspector: Any) -> None:
    """The disposal list's category index, in a database made before it (an optimisation:
    a database that cannot be written now gets it at a later start)."""
    if not inspector.has_table(Disposal.__tablename__):
        return
    if "ix_disposals_category" in {i["name"] for i in inspector.get_indexes("disposals")}:
        return
    with contextlib.suppress(OperationalError), engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_disposals_category ON disposals (category)"
        )


def record_row_values(record: Record) -> dict[str, Any]:
    """The column values of an `active_records` row holding this record."""
    values: dict[str, Any] = {name: getattr(record, name) for name in _RECORD_COLUMNS}
    values["updated_at_utc"] = record.updated
    values["attributes"] = (
        None
        if record.attributes is None
        else json.dumps(record.attributes, ensure_ascii=False, separators=(",", ":"))
    )
    values["parent_id"] = record.parent_id
    values["has_parent_id"] = record.has_parent_id or record.parent_id is not None
    return values


def upsert_records(session: Session, records: Sequence[Record]) -> None:
    """Insert the records, replacing any active record with the same id."""
    if not records:
        return
    rows = [record_row_values(r) for r in records]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # Core (not ORM) insert: one compiled statement run with executemany, not one per row.
    stmt = insert(ACTIVE_TABLE)
    columns = {name: stmt.excluded[name] for name in rows[0] if name != "id"}
    session.connection().execute(
        stmt.on_conflict_do_update(index_elements=["id"], set_=columns), rows
    )


def lock_active(session: Session, record_ids: Sequence[str]) -> None:
    """Hold these ids' active rows until the transaction ends, so that no archive batch can
    delete one between a caller's check and its write (on SQLite the write transaction's lock,
    taken at its first statement, already holds every row).

    Rows are locked in the order of their ids, as an archive batch locks its own (see
    `LOCK_ORDER`): two transactions that lock some of the same rows then never wait for each
    other at once.
    """
    ids = sorted(set(record_ids))
    for_update = session.get_bind().dialect.name == "postgresql"
    for start in range(0, len(ids), 500):
        query = select(ACTIVE_TABLE.c.id).where(ACTIVE_TABLE.c.id.in_(ids[start : start + 500]))
        if for_update:
            query = query.order_by(LOCK_ORDER).with_for_update()
        session.execute(query).all()


def take_turns(session: Session, key: int) -> None:
    """Wait until no other transaction holds `key`, then hold it until this one ends.

    PostgreSQL's transaction-scoped advisory lock; on SQLite the write transaction's lock
    already makes writers take turns.

    :param key: the turn's 64-bit name (each kind of turn has its own)
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


LOCK_ORDER = ACTIVE_TABLE.c.id
"""The order every transaction locks active rows in (`FOR UPDATE`), chunk after chunk: by id.
PostgreSQL locks a chunk's rows in its `ORDER BY` order."""


def insert_record(session: Session, record: Record) -> None:
    """Insert one record; fails with IntegrityError if its id is already active."""
    session.add(ActiveRecord(**record_row_values(record)))
    session.flush()


def find_active(session: Session, record_ids: Iterable[str]) -> dict[str, Record]:
    """The active records among these ids, by id."""
    found: dict[str, Record] = {}
    ids = list(record_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in session.scalars(select(ActiveRecord).where(ActiveRecord.id.in_(chunk))):
            found[row.id] = row.to_record()
    return found


def delete_records(session: Session, versions: Sequence[tuple[str, str]]) -> set[str]:
    """Delete rows matching (id, updated_at) pairs; returns the ids no longer active.

    Matching on `updated_at` too means a record the CRM changed meanwhile is not deleted.
    """
    if not versions:
        return set()
    connection = session.connection()
    dialect = connection.dialect
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    # executemany of a primary-key delete, straight to the driver: a row-value IN list would not
    # use the index, and SQLAlchemy's per-row parameter processing costs more than the delete.
    result = connection.exec_driver_sql(
        f"DELETE FROM {ACTIVE_TABLE.name} WHERE id = {mark} AND updated_at = {mark}",
        list(versions),
    )
    ids = [rid for rid, _ in versions]
    if dialect.supports_sane_multi_rowcount and result.rowcount == len(ids):
        return set(ids)
    return set(ids) - set(find_active_ids(session, ids))


def find_active_ids(session: Session, record_ids: Sequence[str]) -> list[str]:
    """Which of these ids are active."""
    found: list[str] = []
    for start in range(0, len(record_ids), 500):
        chunk = record_ids[start:start + 500]
        found.extend(session.scalars(select(ActiveRecord.id).where(ActiveRecord.id.in_(chunk))))
    return found


def record_columns() -> list[Any]:
    """The columns a Record is built from, in `Record`'s field order (for `select_records`)."""
    return [ACTIVE_TABLE.c[name] for name in (*_RECORD_COLUMNS, *_EXTRA_COLUMNS)]


def select_records(session: Session, stmt: Select[Any]) -> list[Record]:
    """Run a select of `record_columns()` and build Records without ORM objects."""
    records = []
    for row in session.execute(stmt):
        fields: list[Any] = list(row)
        if fields[-3] is not None:
            fields[-3] = json.loads(fields[-3])
        fields[-1] = bool(fields[-1])
        records.append(Record(*fields))
    return records


def _row_to_record(row: Any) -> Record:
    value: dict[str, Any] = {c: row[c] for c in _RECORD_COLUMNS}
    if row["attributes"] is not None:
        value["attributes"] = json.loads(row["attributes"])
    if row["has_parent_id"] or row["parent_id"] is not None:
        value["parent_id"] = row["parent_id"]
    return record_from_json(value)


def count_active(session: Session) -> int:
    """How many records are active."""
    return session.scalar(select(func.count()).select_from(ActiveRecord)) or 0


def utcnow() -> datetime:
    """The current time, aware UTC; read only at the edges (CLI, worker, server)."""
    return datetime.now(UTC)


class ApiToken(Base):
    """An API token of the HTTP server; only the SHA-256 of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One line of the append-only audit log; `entry_hash` chains it to the line before."""

    __tablename__ = "audit_log"

    # Not autoincrement: the appender picks last seq + 1, so two concurrent appenders that read
    # the same head collide on the primary key instead of forking the chain.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON text
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_actor_at", "actor", "at"),
        Index("ix_audit_action_at", "action", "at"),
    )


class Disposal(Base):
    """One record a disposal run purged: the proof an auditor reads (no content, its hash).

    A row is written before its record is purged (`purged_at` empty) and completed after the
    store's commit, so a crash in between is settled by the next run from the catalog.
    """

    __tablename__ = "disposals"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32))
    record_id: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(MAX_CHARS["category"]))
    policy: Mapped[str] = mapped_column(String(160))  # `default` or `category.<name>`
    keep_years: Mapped[int] = mapped_column(Integer)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))

    __table_args__ = (
        Index("ix_disposals_purged_at", "purged_at"),
        Index("ix_disposals_record", "record_id"),
        Index("ix_disposals_run", "run_id"),
        Index("ix_disposals_category", "category"),  # its spellings, for the category filter
    )


@dataclass(frozen=True)
class ActiveLink:
    """What process look-ups need of an active row: its place in the tree and its age."""

    id: str
    parent_id: str | None
    category: str
    customer_id: str | None
    updated_at: datetime


_LINK_COLUMNS = (
    ActiveRecord.id,
    ActiveRecord.parent_id,
    ActiveRecord.category,
    ActiveRecord.customer_id,
    ActiveRecord.updated_at_utc,
)


def find_links(session: Session, record_ids: Iterable[str]) -> dict[str, ActiveLink]:
    """The active rows among these ids, as links, by id."""
    found: dict[str, ActiveLink] = {}
    ids = list(dict.fromkeys(record_ids))
    for start in range(0, len(ids), 500):
        stmt = select(*_LINK_COLUMNS).where(ActiveRecord.id.in_(ids[start : start + 500]))
        for row in session.execute(stmt):
            found[row[0]] = ActiveLink(*row)
    return found


def find_child_links(session: Session, parent_ids: Iterable[str]) -> list[ActiveLink]:
    """The active rows whose `parent_id` is one of these ids."""
    found: list[ActiveLink] = []
    ids = list(dict.fromkeys(parent_ids))
    for start in range(0, len(ids), 500):
        stmt = select(*_LINK_COLUMNS).where(ActiveRecord.parent_id.in_(ids[start : start + 500]))
        found.extend(ActiveLink(*row) for row in session.execute(stmt))
    return found


def insert_records(session: Session, records: Sequence[Record]) -> None:
    """Insert records in one statement; fails with IntegrityError if an id is already active."""
    if records:
        session.connection().execute(
            ACTIVE_TABLE.insert(), [record_row_values(r) for r in records]
        )
