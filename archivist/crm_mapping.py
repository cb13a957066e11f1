"""The `[[active.table]]` entries of config.toml: which CRM tables hold active records, and how
each row becomes a record.

Parsed and checked for shape when the config is loaded (no database needed); checked against
the live database by `archivist.crm_rows.open_crm_tables` when a command starts.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from archivist.errors import ArchivistError, ConfigError

# Record fields a table entry may fill, and whether the entry must fill them.
FIELD_KEYS = {
    "kind": True,
    "category": True,
    "status": True,
    "created_at": True,
    "updated_at": True,
    "customer_id": False,
    "owner": False,
    "subject": False,
    "body": False,
}
TIME_FIELDS = ("created_at", "updated_at")
TABLE_KEYS = ("name", "key", "id_prefix", "parent", *FIELD_KEYS)
_PREFIX = re.compile(r"[A-Za-z0-9._:-]{0,64}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")


class ImportRefused(ArchivistError):
    """`archivist import` is refused: the CRM's own tables hold the active records."""

    code = "import_refused"


def check_import_allowed(mappings: tuple[TableMapping, ...]) -> None:
    """Refuse an import when tables are mapped: the CRM owns its rows, not Archivist."""
    if mappings:
        names = ", ".join(m.name for m in mappings)
        raise ImportRefused(
            f"import is refused: active records live in the CRM's own tables ({names}); "
            "write them there"
        )


@dataclass(frozen=True)
class FieldSource:
    """Where a record field comes from: a column of the row, or a constant."""

    column: str | None = None
    constant: str | None = None


@dataclass(frozen=True)
class TableMapping:
    """One `[[active.table]]` entry: a CRM table whose rows are active records."""

    position: int  # 1-based place among the entries, for error messages
    name: str  # "table" or "schema.table"
    key: str
    id_prefix: str
    fields: dict[str, FieldSource]
    parent_column: str | None = None
    parent_table: str | None = None
    config_name: str = "config.toml"

    @property
    def where(self) -> str:
        """How error messages name this entry: `config.toml: [[active.table]] #2 (cases)`."""
        return f"{self.config_name}: [[active.table]] #{self.position} ({self.name})"

    @property
    def schema(self) -> str | None:
        """The schema part of `name`, if given."""
        return self.name.split(".", 1)[0] if "." in self.name else None

    @property
    def table(self) -> str:
        """The table part of `name`."""
        return self.name.rsplit(".", 1)[-1]


def table_for_id(mappings: tuple[TableMapping, ...], record_id: str) -> str | None:
    """The CRM table a record id came from (by the longest id_prefix it begins with)."""
    best: TableMapping | None = None
    for mapping in mappings:
        if record_id.startswith(mapping.id_prefix) and (
            best is None or len(mapping.id_prefix) > len(best.id_prefix)
        ):
            best = mapping
    return None if best is None else best.name


def parse_table_mappings(
    value: Any, config_name: str, kinds: tuple[str, ...] | None = None
) -> tuple[TableMapping, ...]:
    """Check the shape of the `[[active.table]]` entries (everything but the live database).

    :param kinds: the `[records] kinds` a constant `kind` must be one of (None: any)
    :raises ConfigError: one line naming the file, the entry and the bad key.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{config_name}: active.table must be written [[active.table]]")
    mappings = [_parse_entry(entry, i, config_name) for i, entry in enumerate(value, 1)]
    for mapping in mappings:
        _check_kind(mapping, kinds)
        _check_parent_is_not_the_key(mapping)
    by_name: dict[str, TableMapping] = {}
    by_prefix: dict[str, TableMapping] = {}
    for mapping in mappings:
        if mapping.name in by_name:
            first = by_name[mapping.name]
            raise ConfigError(f"{mapping.where}: table already mapped by #{first.position}")
        by_name[mapping.name] = mapping
        if mapping.id_prefix in by_prefix:
            first = by_prefix[mapping.id_prefix]
            raise ConfigError(
                f"{mapping.where}: id_prefix {mapping.id_prefix!r} is also the id_prefix of "
                f"#{first.position} ({first.name}); record ids would collide"
            )
        by_prefix[mapping.id_prefix] = mapping
    for mapping in mappings:
        for other in mappings:
            if other is not mapping and other.id_prefix.startswith(mapping.id_prefix):
                raise ConfigError(
                    f"{other.where}: id_prefix {other.id_prefix!r} begins with the id_prefix "
                    f"{mapping.id_prefix!r} of #{mapping.position} ({mapping.name}); "
                    "a record id must name one table"
                )
        if mapping.parent_table is not None and mapping.parent_table not in by_name:
            raise ConfigError(
                f"{mapping.where}: parent table {mapping.parent_table!r} is not mapped "
                "(add a [[active.table]] entry for it)"
            )
    return tuple(mappings)


def _check_kind(mapping: TableMapping, kinds: tuple[str, ...] | None) -> None:
    """A constant kind outside `[records] kinds` would make every row of the table a record
    the installation does not allow."""
    kind = mapping.fields["kind"].constant
    if kinds is not None and kind is not None and kind not in kinds:
        raise ConfigError(
            f"{mapping.where}: kind {kind!r} is not one of [records] kinds "
            f"({', '.join(kinds)})"
        )


def _check_parent_is_not_the_key(mapping: TableMapping) -> None:
    """A table whose parent column is its own key makes every row its own parent: no
    process could ever be formed, so nothing of it would ever be archived."""
    if mapping.parent_table == mapping.name and mapping.parent_column == mapping.key:
        raise ConfigError(
            f"{mapping.where}: parent column {mapping.key!r} is the key itself; every row "
            "would be its own parent (name the column that holds the parent's key)"
        )


def _parse_entry(entry: Any, position: int, config_name: str) -> TableMapping:
    where = f"{config_name}: [[active.table]] #{position}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: name must be a table name (schema.table allowed), got {name!r}"
        )
    where = f"{where} ({name})"
    unknown = sorted(set(entry) - set(TABLE_KEYS))
    if unknown:
        hint = _closest(unknown[0], TABLE_KEYS)
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}" + (f" (did you mean {hint!r}?)" if hint else "")
        )
    key = entry.get("key")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: key must name the table's primary key column")
    prefix = entry.get("id_prefix")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"{where}: id_prefix must be up to 64 characters of A-Z a-z 0-9 . _ : -, got {prefix!r}"
        )
    fields: dict[str, FieldSource] = {}
    for field_name, required in FIELD_KEYS.items():
        if field_name not in entry:
            if required:
                raise ConfigError(f"{where}: {field_name} is missing")
            continue
        source = _field_source(entry[field_name], f"{where}: {field_name}")
        if field_name in TIME_FIELDS and source.column is None:
            raise ConfigError(f"{where}: {field_name} must be a column, {{ column = \"...\" }}")
        if field_name in ("kind", "category", "status") and source.constant == "":
            raise ConfigError(f"{where}: {field_name} must not be empty")
        fields[field_name] = source
    parent_column = parent_table = None
    if "parent" in entry:
        parent = entry["parent"]
        _check_inline_keys(parent, ("column", "table"), f"{where}: parent")
        if (
            not isinstance(parent, dict)
            or set(parent) != {"column", "table"}
            or not all(isinstance(v, str) and v for v in parent.values())
        ):
            raise ConfigError(
                f"{where}: parent must be {{ column = \"...\", table = \"...\" }}, got {parent!r}"
            )
        parent_column, parent_table = parent["column"], parent["table"]
    return TableMapping(
        position, name, key, prefix, fields, parent_column, parent_table, config_name
    )


def _field_source(value: Any, where: str) -> FieldSource:
    if isinstance(value, str):
        return FieldSource(constant=value)
    _check_inline_keys(value, ("column",), where)
    if isinstance(value, dict) and set(value) == {"column"} and isinstance(value["column"], str):
        return FieldSource(column=value["column"])
    raise ConfigError(f"{where} must be a constant string or {{ column = \"...\" }}, got {value!r}")


def _check_inline_keys(value: Any, allowed: tuple[str, ...], where: str) -> None:
    """Refuse a key an inline table (`{ column = "..." }`) does not take, naming it: a typo
    there must be as plain as one anywhere else in the file."""
    if not isinstance(value, dict):
        return
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        hint = _closest(unknown[0], allowed)
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}" + (f"; did you mean {hint!r}?" if hint else "")
            + f" (known: {', '.join(allowed)})"
        )


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    found = difflib.get_close_matches(word, choices, n=1)
    return found[0] if found else None
