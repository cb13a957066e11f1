"""The CRM's own tables as active records: reflect the mapped tables, check the mapping against
them, and turn a row into a record and back, exactly.

A row becomes one record: the mapped columns fill the record's fields, every other column goes
into `attributes` with its type, so that a restore writes back the same primary key and every
column's value (`row_to_json` of the restored row equals the row before it left). The record's
`attributes` hold:

- `table`: the table the row came from (search and the UI show it);
- `columns`: the value of every column not mapped to a record field, as JSON: integers, booleans
  and text as such, numeric as exact text (its scale kept), floats as numbers, timestamps, dates
  and times in ISO 8601, uuid as text, bytea in base64, PostgreSQL's char(n) (`bpchar`) without
  the trailing spaces that pad it; arrays, json, jsonb and any other type in
  PostgreSQL's own text form (an array keeps its dimensions and bounds, json its exact text,
  jsonb its numbers' scale);
- `types`: every column's codec (`integer`, `numeric`, `text`, `bpchar`, `timestamptz`,
  `array:date`, `text:JSONB`, ...), mapped columns included;
- `fields`: which columns were mapped to which record field (the key to `id`, the parent column
  to `parent_id`);
- `nulls`: the columns that were SQL NULL (a NULL subject is restored as NULL, not as "");
- `stored` (a SQLite table's rows only): SQLite keeps any value in any column (a JSON column's
  text, `'yes'` in a BOOLEAN, text in a BLOB), so there every column but the key and the parent
  column is read as SQLite stored it and written back the same way, not through its declared
  type: `columns` holds those values (a blob as `{"blob": base64}`), and `stored` the mapped
  columns' own values wherever the record's field differs from them (a `DATETIME`'s text as
  written, an integer `customer_id`).
"""

from __future__ import annotations

import base64
import math
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    Text,
    bindparam,
    case,
    cast,
    func,
    inspect,
    null,
    or_,
    select,
    type_coerce,
    types,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, NoSuchTableError, SAWarning
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from archivist.crm_mapping import TableMapping
from archivist.errors import ConfigError
from archivist.records import format_utc

# Codecs a record field's column may have.
_FIELD_CODECS = {
    "kind": {"text", "bpchar"},
    "category": {"text", "bpchar"},
    "status": {"text", "bpchar"},
    "subject": {"text", "bpchar"},
    "body": {"text", "bpchar"},
    "customer_id": {"text", "bpchar", "integer", "uuid"},
    "owner": {"text", "bpchar", "integer", "uuid"},
    "created_at": {"timestamptz", "timestamp"},
    "updated_at": {"timestamptz", "timestamp"},
}
_KEY_CODECS = {"text", "bpchar", "integer", "uuid"}
_TEXT_FIELDS = ("kind", "category", "status", "subject", "body")


@dataclass(eq=False)  # one object per table: hashed and compared by identity
class CrmTable:
    """One mapped table, reflected from the live database."""

    mapping: TableMapping
    table: Table
    codecs: dict[str, str]  # column -> codec
    parent: CrmTable | None = None
    children: list[CrmTable] = field(default_factory=list)
    field_of: dict[str, str] = field(default_factory=dict)  # column -> the record field it fills
    dialect: str = "postgresql"  # the database's (SQLAlchemy's name for it)

    @property
    def name(self) -> str:
        """The table's name as the mapping gives it."""
        return self.mapping.name

    @property
    def key_column(self) -> Column[Any]:
        """The primary key column."""
        return self.table.c[self.mapping.key]

    @property
    def updated_column(self) -> Column[Any]:
        """The column `updated_at` comes from; a row's age is measured from it."""
        column = self.mapping.fields["updated_at"].column
        assert column is not None
        return self.table.c[column]

    @property
    def parent_column(self) -> Column[Any] | None:
        """The column naming the parent row, if the table has a parent."""
        name = self.mapping.parent_column
        return None if name is None else self.table.c[name]

    def record_id(self, key: Any) -> str:
        """The record id of the row with this key."""
        return self.mapping.id_prefix + _key_text(key, self.codecs[self.mapping.key])

    def key_of(self, record_id: str) -> Any:
        """The key value a record id of this table names."""
        text = record_id[len(self.mapping.id_prefix):]
        return _decode_key(text, self.codecs[self.mapping.key])

    def typed_columns(self) -> frozenset[str]:
        """The columns read and written through their declared type even on SQLite: the key
        and the parent column, which make record ids."""
        return frozenset(c for c in (self.mapping.key, self.mapping.parent_column) if c)

    def select_columns(self) -> list[ColumnElement[Any]]:
        """Every column, those kept as text cast to text (so json keeps its exact text).

        On PostgreSQL a date or timestamp may be `infinity`, BC or past year 9999 (in the
        session's time zone or in UTC), which Python cannot hold:
        such a value is read as NULL, and the row's `OUT_OF_RANGE` column says so (see
        `out_of_range`), so that the row is left where it is rather than failing the read.
        """
        columns: list[ColumnElement[Any]] = []
        unreadable = []
        typed = self.typed_columns()
        for c in self.table.columns:
            if self.dialect == "sqlite" and c.name not in typed:
                columns.append(type_coerce(c, types.NullType()).label(c.name))  # as stored
            elif self.codecs[c.name].startswith("text:"):
                columns.append(cast(c, Text).label(c.name))
            elif self.dialect == "postgresql" and self.codecs[c.name] in _DATE_CODECS:
                readable = func.isfinite(c) & func.extract("year", c).between(1, 9999)
                if self.codecs[c.name] == "timestamptz":  # read in the session's zone, via UTC
                    in_utc = func.timezone("UTC", c)
                    readable = readable & func.extract("year", in_utc).between(1, 9999)
                columns.append(case((readable, c), else_=null()).label(c.name))
                unreadable.append(c.isnot(None) & ~readable)
            else:
                columns.append(c)
        if unreadable:
            columns.append(or_(*unreadable).label(OUT_OF_RANGE))
        return columns


@dataclass
class CrmTables:
    """Every mapped table, checked against the live database."""

    tables: list[CrmTable]

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.tables}
        # longest prefix first, so that "case:" never claims a "case:msg:" id
        self._by_prefix = sorted(self.tables, key=lambda t: -len(t.mapping.id_prefix))

    def table_of(self, record_id: str) -> CrmTable | None:
        """The mapped table a record id belongs to, by its prefix."""
        for crm_table in self._by_prefix:
            if record_id.startswith(crm_table.mapping.id_prefix):
                return crm_table
        return None

    def delete_order(self) -> list[CrmTable]:
        """Children before parents: the order in which a process's rows are deleted."""
        return list(reversed(self.insert_order()))

    def insert_order(self) -> list[CrmTable]:
        """Parents before children: the order in which a process's rows are inserted."""
        ordered: list[CrmTable] = []
        seen: set[str] = set()

        def visit(crm_table: CrmTable) -> None:
            if crm_table.name in seen:
                return
            seen.add(crm_table.name)
            if crm_table.parent is not None:
                visit(crm_table.parent)
            ordered.append(crm_table)

        for crm_table in self.tables:
            visit(crm_table)
        return ordered


def out_of_range(values: Mapping[str, Any]) -> bool:
    """Whether a row read with `select_columns` held a date or time Python cannot (`infinity`,
    a BC year), read as NULL: such a row is not archived, its value could not come back."""
    return bool(values.get(OUT_OF_RANGE))


def count_crm_rows(session: Any, crm_tables: CrmTables) -> int:
    """How many rows the mapped tables hold: the active records, when tables are mapped."""
    return sum(
        session.scalar(select(func.count()).select_from(t.table)) or 0 for t in crm_tables.tables
    )


def keys_by_table(crm_tables: CrmTables, record_ids: Iterable[str]) -> dict[CrmTable, list[Any]]:
    """The keys of these records' rows, by the mapped table each belongs to (each id once;
    ids of no mapped table left out)."""
    keys: dict[CrmTable, list[Any]] = {}
    for record_id in dict.fromkeys(record_ids):
        crm_table = crm_tables.table_of(record_id)
        if crm_table is not None:
            keys.setdefault(crm_table, []).append(crm_table.key_of(record_id))
    return keys


def find_crm_ids(session: Any, crm_tables: CrmTables, record_ids: Iterable[str]) -> set[str]:
    """Those of these records whose rows are in their mapped tables: the live ones."""
    live: set[str] = set()
    for crm_table, keys in keys_by_table(crm_tables, record_ids).items():
        for start in range(0, len(keys), 500):
            query = select(crm_table.key_column).where(
                crm_table.key_column.in_(keys[start : start + 500])
            )
            live.update(crm_table.record_id(key) for key in session.scalars(query))
    return live


def count_customer_rows(
    session: Any, crm_tables: CrmTables, customer_id: str, archived: Iterable[str] = ()
) -> int:
    """How many rows of the mapped tables are a customer's: those whose `customer_id` names
    the customer, and the rows under them, or under one of the customer's `archived` records
    (whose rows left the tables), that name no customer (a case's messages and notes), as
    erasure counts records."""
    theirs: dict[str, set[Any]] = {}
    frontier: list[tuple[CrmTable, list[Any]]] = list(keys_by_table(crm_tables, archived).items())
    for crm_table in crm_tables.tables:
        source = crm_table.mapping.fields.get("customer_id")
        if source is None or (source.column is None and source.constant != customer_id):
            continue
        query = select(crm_table.key_column)
        if source.column is not None:
            query = query.where(cast(crm_table.table.c[source.column], Text) == customer_id)
        keys = list(session.scalars(query))
        theirs.setdefault(crm_table.name, set()).update(keys)
        frontier.append((crm_table, keys))
    while frontier:
        parent, parent_keys = frontier.pop()
        for child in parent.children:
            seen = theirs.setdefault(child.name, set())
            new = [k for k in _unnamed_children(session, child, parent_keys) if k not in seen]
            seen.update(new)
            if new:
                frontier.append((child, new))
    return sum(len(keys) for keys in theirs.values())


def _unnamed_children(session: Any, child: CrmTable, parent_keys: Sequence[Any]) -> list[Any]:
    """The keys of a table's rows under these parent rows that name no customer."""
    source = child.mapping.fields.get("customer_id")
    if source is not None and source.column is None:
        return []  # every row names the table's constant customer
    parent_column = child.parent_column
    assert parent_column is not None
    found: list[Any] = []
    for start in range(0, len(parent_keys), 500):
        query = select(child.key_column).where(
            parent_column.in_(parent_keys[start:start + 500])
        )
        if source is not None and source.column is not None:
            query = query.where(child.table.c[source.column].is_(None))
        found.extend(session.scalars(query))
    return found


def count_record_rows(session: Any, crm_tables: CrmTables, record_id: str) -> int:
    """1 if a mapped table holds the row a record id names, else 0."""
    crm_table = crm_tables.table_of(record_id)
    if crm_table is None:
        return 0
    try:
        key = crm_table.key_of(record_id)
    except ValueError:  # not a key of that table at all
        return 0
    query = select(func.count()).select_from(crm_table.table)
    return session.scalar(query.where(crm_table.key_column == key)) or 0


def open_crm_tables(connection: Connection, mappings: Sequence[TableMapping]) -> CrmTables:
    """Reflect the mapped tables and check every entry against them.

    :raises ConfigError: one line naming the config entry: a table or column not found, a
        column whose type cannot hold its field, a key that is not the primary key.
    """
    metadata = MetaData()
    tables: list[CrmTable] = []
    default_schema = inspect(connection).default_schema_name
    mapped: dict[tuple[str | None, str], TableMapping] = {}  # (schema, name) -> its entry
    for mapping in mappings:
        same = mapped.setdefault((mapping.schema or default_schema, mapping.table), mapping)
        if same is not mapping:  # each row would be two records, one of them "restored"
            raise ConfigError(
                f"{mapping.where}: table {mapping.name!r} is mapped already, by "
                f"[[active.table]] #{same.position} ({same.name})"
            )
        try:
            with warnings.catch_warnings():
                # "did not recognize type": such a column is kept in the database's text form
                warnings.simplefilter("ignore", SAWarning)
                table = Table(
                    mapping.table, metadata, schema=mapping.schema, autoload_with=connection
                )
        except NoSuchTableError:
            raise ConfigError(f"{mapping.where}: table {mapping.name!r} not found") from None
        tables.append(_check_table(mapping, table, connection))
    by_name = {t.name: t for t in tables}
    for crm_table in tables:
        mapping = crm_table.mapping
        if mapping.parent_table is None:
            continue
        parent = by_name[mapping.parent_table]
        crm_table.parent = parent
        parent.children.append(crm_table)
        column = _column(crm_table, mapping.parent_column or "")
        if _key_kind(crm_table.codecs[column]) != _key_kind(parent.codecs[parent.mapping.key]):
            raise ConfigError(
                f"{mapping.where}: parent column {column!r} is "
                f"{crm_table.codecs[column]}, but the key of {parent.name} is "
                f"{parent.codecs[parent.mapping.key]}"
            )
        crm_table.field_of.setdefault(column, "parent_id")
    return CrmTables(tables)


def _check_table(mapping: TableMapping, table: Table, connection: Connection) -> CrmTable:
    codecs: dict[str, str] = {}
    padded = connection.dialect.name == "postgresql"  # SQLite keeps a char(n) value as written
    for column in table.columns:
        codec = codec_of(column.type)
        # plain str: a reflected name is a str subclass, which orjson will not take as a key
        codecs[str(column.name)] = "text" if codec == "bpchar" and not padded else codec
    crm_table = CrmTable(mapping, table, codecs, dialect=connection.dialect.name)
    key = _column(crm_table, mapping.key)
    primary = [c.name for c in table.primary_key.columns]
    if primary != [key]:
        shown = ", ".join(primary) if primary else "none"
        raise ConfigError(
            f"{mapping.where}: key {key!r} must be the table's one-column primary key "
            f"(its primary key: {shown})"
        )
    if codecs[key] not in _KEY_CODECS:
        raise ConfigError(
            f"{mapping.where}: key column {key!r} is {table.c[key].type}; "
            "a key must be an integer, text or uuid"
        )
    crm_table.field_of[key] = "id"
    for field_name, source in mapping.fields.items():
        if source.column is None:
            continue
        column_name = _column(crm_table, source.column)
        if codecs[column_name] not in _FIELD_CODECS[field_name]:
            needed = " or ".join(sorted(_FIELD_CODECS[field_name]))
            raise ConfigError(
                f"{mapping.where}: column {column_name!r} ({table.c[column_name].type}) "
                f"cannot hold {field_name} (it needs {needed})"
            )
        crm_table.field_of.setdefault(column_name, field_name)
    return crm_table


def _column(crm_table: CrmTable, name: str) -> str:
    if name not in crm_table.table.c:
        raise ConfigError(f"{crm_table.mapping.where}: column {name!r} not found")
    return name


def codec_of(sql_type: types.TypeEngine[Any]) -> str:
    """How a column's values are kept in `attributes` (see the module docstring)."""
    if isinstance(sql_type, types.ARRAY | postgresql.JSON | postgresql.JSONB | types.JSON):
        return _as_text(sql_type)
    if isinstance(sql_type, types.Boolean):
        return "boolean"
    if isinstance(sql_type, types.Integer):
        return "integer"
    if isinstance(sql_type, types.Float):
        return "float"
    if isinstance(sql_type, types.Numeric):
        return "numeric"
    if isinstance(sql_type, types.DateTime):
        return "timestamptz" if sql_type.timezone else "timestamp"
    if isinstance(sql_type, types.Date):
        return "date"
    if isinstance(sql_type, types.Time) and not sql_type.timezone:
        return "time"
    if isinstance(sql_type, types.Uuid):
        return "uuid"
    if isinstance(sql_type, types.LargeBinary):
        return "bytea"
    if isinstance(sql_type, types.CHAR):
        return "bpchar"
    if isinstance(sql_type, types.String) and not isinstance(sql_type, types.Enum):
        return "text"
    return _as_text(sql_type)


_DATE_CODECS = frozenset({"timestamp", "timestamptz", "date"})
OUT_OF_RANGE = "archivist_out_of_range"  # the label of `select_columns`'s extra column


def _as_text(sql_type: types.TypeEngine[Any]) -> str:
    try:
        name = sql_type.compile(dialect=postgresql.dialect())
    except Exception:  # a type only its own dialect can name
        name = type(sql_type).__name__.upper()
    return f"text:{name}"


def encode_value(value: Any, codec: str) -> Any:
    """A column value as JSON, by its codec (NULL is recorded in `nulls`, not here)."""
    if value is None:
        return None
    if codec == "numeric":
        return str(value)
    if codec == "float":
        return value if value == value and value not in (float("inf"), float("-inf")) else str(
            value
        )
    if codec in ("timestamptz", "timestamp", "date", "time"):
        return value.isoformat()
    if codec == "uuid":
        return str(value)
    if codec == "bytea":
        return base64.b64encode(bytes(value)).decode("ascii")
    return value  # integer, boolean, text, bpchar (read trimmed), text:<type>


def decode_value(value: Any, codec: str) -> Any:
    """The column value `encode_value` turned into `value`."""
    if value is None:
        return None
    if codec.startswith("array:"):  # archived when arrays were kept as lists of values
        return [decode_value(v, codec[6:]) for v in value]
    if codec == "numeric":
        return Decimal(value)
    if codec == "float":
        return float(value)
    if codec in ("timestamptz", "timestamp"):
        return datetime.fromisoformat(value)
    if codec == "date":
        return date.fromisoformat(value)
    if codec == "time":
        return time.fromisoformat(value)
    if codec == "uuid":
        return uuid.UUID(value)
    if codec == "bytea":
        return base64.b64decode(value)
    return value


def row_to_record(crm_table: CrmTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """The record (its JSON value) a row of a mapped table becomes."""
    mapping = crm_table.mapping
    codecs = crm_table.codecs
    as_stored = crm_table.dialect == "sqlite"
    row = _unpadded(codecs, row)
    record: dict[str, Any] = {"id": crm_table.record_id(row[mapping.key])}
    for name, source in mapping.fields.items():
        value = source.constant if source.column is None else row[source.column]
        if as_stored and isinstance(value, str) and name in ("created_at", "updated_at"):
            value = _stored_moment(value)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if name in ("created_at", "updated_at"):
            record[name] = None if not isinstance(value, datetime) else _utc_text(value)
        elif name in _TEXT_FIELDS:
            record[name] = "" if value is None else str(value)
        else:
            record[name] = None if value is None else str(value)
    for name in ("customer_id", "owner"):
        record.setdefault(name, None)
    for name in ("subject", "body"):
        record.setdefault(name, "")
    if crm_table.parent is not None and crm_table.mapping.parent_column is not None:
        parent_key = row[crm_table.mapping.parent_column]
        record["parent_id"] = (
            None if parent_key is None else crm_table.parent.record_id(parent_key)
        )
    encode = (lambda value, _codec: encode_stored(value)) if as_stored else encode_value
    record["attributes"] = {
        "table": crm_table.name,
        "columns": {
            name: encode(row[name], codec)
            for name, codec in codecs.items()
            if name not in crm_table.field_of
        },
        "types": dict(codecs),
        "fields": dict(crm_table.field_of),
        "nulls": [name for name in codecs if row[name] is None],
    }
    if as_stored:
        record["attributes"]["stored"] = {
            name: encode_stored(row[name])
            for name, field_name in crm_table.field_of.items()
            if name not in crm_table.typed_columns()
            and not _same_value(row[name], record[field_name])
        }
    return record


def _unpadded(codecs: Mapping[str, str], row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The row with its char(n) values right-trimmed of spaces. PostgreSQL pads them and holds
    the padding insignificant (a cast to text drops it, writing the value back pads it again):
    read as they are, `'C1        '` would match no hold, retention rule or search for `C1`."""
    padded = [name for name, codec in codecs.items() if codec == "bpchar"]
    if not padded:
        return row
    trimmed = dict(row)
    for name in padded:
        if isinstance(trimmed.get(name), str):
            trimmed[name] = trimmed[name].rstrip(" ")
    return trimmed


def encode_stored(value: Any) -> Any:
    """A value as SQLite stored it (integer, real, text, blob), as JSON."""
    if isinstance(value, bytes):
        return {"blob": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"real": repr(value)}
    return value


def decode_stored(value: Any) -> Any:
    """The value `encode_stored` turned into `value`."""
    if isinstance(value, dict):
        return base64.b64decode(value["blob"]) if "blob" in value else float(value["real"])
    return value


def _same_value(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _stored_moment(text: str) -> datetime | None:
    """A date and time as SQLite holds it (ISO 8601 text), or None if it is not one."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def record_to_row(crm_table: CrmTable, record: Mapping[str, Any]) -> dict[str, Any]:
    """The column values of the row an archived record came from (see `row_to_record`).

    :raises ValueError: the record was not made from a row of this table, or the table lost a
        column the row had.
    """
    attributes = record.get("attributes") or {}
    if attributes.get("table") != crm_table.name or "types" not in attributes:
        raise ValueError(f"record {record.get('id')!r} did not come from {crm_table.name}")
    codecs: dict[str, str] = attributes["types"]
    fields: dict[str, str] = attributes.get("fields", {})
    nulls = set(attributes.get("nulls", ()))
    columns: dict[str, Any] = attributes.get("columns", {})
    missing = sorted(set(codecs) - set(crm_table.table.c.keys()))
    if missing:
        raise ValueError(f"table {crm_table.name} has no column {missing[0]!r} any more")
    stored: dict[str, Any] | None = attributes.get("stored")
    row: dict[str, Any] = {}
    for name, codec in codecs.items():
        if name in nulls:
            row[name] = None
        elif stored is not None and name in stored:
            row[name] = decode_stored(stored[name])
        elif stored is not None and name not in fields:
            row[name] = decode_stored(columns.get(name))
        elif name not in fields:
            row[name] = decode_value(columns.get(name), codec)
        elif fields[name] == "id":
            row[name] = crm_table.key_of(record["id"])
        elif fields[name] == "parent_id":
            parent = crm_table.parent
            assert parent is not None
            row[name] = parent.key_of(record["parent_id"])
        elif stored is not None:
            row[name] = record[fields[name]]
        else:
            row[name] = _field_value(record[fields[name]], codec)
    return row


def text_columns(record: Mapping[str, Any]) -> frozenset[str]:
    """The columns an archived record keeps in PostgreSQL's text form (by the codecs it was
    archived with, which may be older than the table's today)."""
    attributes = record.get("attributes") or {}
    if "stored" in attributes:  # every value as SQLite stored it: none to cast
        return frozenset()
    codecs: dict[str, str] = attributes.get("types", {})
    return frozenset(name for name, codec in codecs.items() if codec.startswith("text:"))


def stored_as_is(record: Mapping[str, Any]) -> bool:
    """Whether the record keeps its row's values as SQLite stored them (`stored`)."""
    return "stored" in (record.get("attributes") or {})


def insert_values(crm_table: CrmTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a `record_to_row` row a restore writes: all but the generated columns
    (`GENERATED ALWAYS AS (...) STORED`), which the database computes again."""
    table = crm_table.table
    return {name: value for name, value in row.items() if table.c[name].computed is None}


def insert_statement(
    crm_table: CrmTable, columns: Iterable[str], as_text: frozenset[str], as_stored: bool = False
) -> Any:
    """An INSERT of these columns that takes `record_to_row` values as `v_<column>` parameters.

    An identity key `GENERATED ALWAYS` gets its archived value too (`OVERRIDING SYSTEM VALUE`):
    a restored row keeps its key.

    :param as_text: the columns whose values are PostgreSQL's text form (see `text_columns`),
        cast back to their own type by the database
    :param as_stored: the values are as SQLite stored them (see `stored_as_is`): written as
        they are, but for the key and the parent column
    """
    table = crm_table.table
    values: dict[str, Any] = {}
    overriding = False
    typed = crm_table.typed_columns()
    for name in columns:
        column = table.c[name]
        overriding = overriding or (column.identity is not None and bool(column.identity.always))
        if as_stored and name not in typed:
            values[name] = bindparam(f"v_{name}", type_=_AsStored())
        elif isinstance(column.type, types.NullType):
            # a type SQLAlchemy does not know (point, xml, a composite): no CAST can be
            # written for it, so the text goes untyped and the database reads it as the column's
            values[name] = bindparam(f"v_{name}")
        elif name in as_text:
            values[name] = cast(bindparam(f"v_{name}", type_=Text), column.type)
        else:
            values[name] = bindparam(f"v_{name}", type_=column.type)
    return (_OverridingInsert(table) if overriding else table.insert()).values(values)


class _AsStored(types.UserDefinedType[Any]):
    """A value handed to the database as it is, whatever the column's declared type (an
    untyped parameter would take the column's type, and its conversions)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:  # (never used in DDL)
        return "BLOB"


class _OverridingInsert(Insert):
    """An INSERT that writes the given values into identity columns `GENERATED ALWAYS`."""

    inherit_cache = True


@compiles(_OverridingInsert, "postgresql")
def _compile_overriding(insert: _OverridingInsert, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy has no clause for it: PostgreSQL wants it between the column list and VALUES
    sql = compiler.visit_insert(insert, **kw)
    head, values, tail = sql.partition(") VALUES (")
    return f"{head}) OVERRIDING SYSTEM VALUE VALUES ({tail}" if values else sql


def database_reason(e: DBAPIError) -> str:
    """The database's own one-line message of an error (without the SQL)."""
    diag = getattr(e.orig, "diag", None)
    message = getattr(diag, "message_primary", None) or str(e.orig).strip()
    return message.splitlines()[0] if message else type(e.orig).__name__


def inspect_foreign_keys(connection: Connection, crm_tables: CrmTables) -> list[ForeignKeyRef]:
    """Foreign keys that point at a mapped table from outside the mapping: from a table that is
    not mapped (in any schema of the database), or through a column that is not the mapped
    parent column. A row such a key references cannot be deleted, so it is not archived."""
    inspector = inspect(connection)
    default = inspector.default_schema_name
    mapped = {(t.table.schema or default, t.table.name): t for t in crm_tables.tables}
    found: list[ForeignKeyRef] = []
    for schema in inspector.get_schema_names():
        keys = inspector.get_multi_foreign_keys(schema=schema)
        for (_schema, table_name), fks in sorted(keys.items()):
            for fk in fks:
                target = mapped.get((fk.get("referred_schema") or default, fk["referred_table"]))
                if target is None:
                    continue
                source = mapped.get((schema, table_name))
                if (
                    source is not None
                    and source.parent is target
                    and fk["constrained_columns"] == [source.mapping.parent_column]
                    and fk["referred_columns"] == [target.mapping.key]
                ):
                    continue  # the mapped parent link: moved together with its process
                name = table_name if schema == default else f"{schema}.{table_name}"
                found.append(ForeignKeyRef(
                    fk.get("name") or f"{name}_fkey", name, tuple(fk["constrained_columns"]),
                    target, tuple(fk["referred_columns"]),
                ))
    return found


@dataclass(frozen=True)
class ForeignKeyRef:
    """A foreign key from outside the mapping onto a mapped table."""

    name: str
    table: str  # the referencing table, "schema.table" when not in the default schema
    columns: tuple[str, ...]
    target: CrmTable
    target_columns: tuple[str, ...]


def _field_value(value: Any, codec: str) -> Any:
    if value is None:
        return None
    if codec in ("timestamptz", "timestamp"):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if codec == "timestamptz" else moment.astimezone(UTC).replace(tzinfo=None)
    if codec == "integer":
        return int(value)
    if codec == "uuid":
        return uuid.UUID(value)
    return value


def _utc_text(value: datetime) -> str:
    # a timestamp without time zone is taken to be UTC
    moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return format_utc(moment)


def _key_text(key: Any, codec: str) -> str:
    return str(key).rstrip(" ") if codec == "bpchar" else str(key)


def _key_kind(codec: str) -> str:
    """A key codec, char(n) taken as text: either may reference the other."""
    return "text" if codec == "bpchar" else codec


def _decode_key(text: str, codec: str) -> Any:
    if codec == "integer":
        return int(text)
    if codec == "uuid":
        return uuid.UUID(text)
    return text
