"""Load `config.toml` into typed, validated settings; relative paths resolve against the file."""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from archivist.crm_mapping import TableMapping, parse_table_mappings
from archivist.crontab import cron_trigger
from archivist.errors import ConfigError
from archivist.records import MAX_CHARS, typed_value_problem
from archivist.retention import RetentionPolicy, RetentionRules

log = logging.getLogger(__name__)

DEFAULT_KINDS = ("communication", "process", "transaction", "ticket", "note")
QUERY_LENGTH_LIMIT = 10_000
"""The longest ``q`` the search engine takes at all; `server.max_query_length` may not exceed it."""

_RETENTION_KEYS = ("archive_after_days", "keep_years")

# Every key a config file may hold, table by table: anything else is an error naming it, so a
# typo (`keep_year`) can never leave a retention period silently at its default. A key that is
# itself a table (or an array of tables, `[[active.table]]`) has an entry of its own under its
# dotted name; "*" stands for any name (a category). To accept a new setting, add it here.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("active", "archive", "index", "server", "worker", "retention", "records", "backup"),
    "active": ("url", "table"),
    "active.table": (
        "name", "key", "id_prefix", "kind", "category", "customer_id", "owner", "subject",
        "body", "status", "created_at", "updated_at", "parent",
    ),
    "archive": ("dir", "key_file", "segment_max_bytes", "batch_size"),
    "index": ("dir", "shard_period", "worker_nice"),
    "server": (
        "host", "port", "processes", "threads", "rate_limit_per_minute", "max_query_length",
        "max_request_bytes", "token_cache_seconds", "secret_key", "secure_cookies",
        "max_bulk_restore",
    ),
    "worker": ("archive_cron", "dispose_cron", "index_interval_seconds"),
    "records": ("kinds",),
    "backup": ("max_age_days",),
    "retention": ("default", "category"),
    "retention.default": _RETENTION_KEYS,
    "retention.category": ("*",),
    "retention.category.*": _RETENTION_KEYS,
}


@dataclass(frozen=True)
class WorkerConfig:
    """When the worker runs its jobs."""

    archive_cron: str = "0 2 * * *"
    dispose_cron: str = "30 3 * * 0"
    index_interval_seconds: int = 60


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the HTTP server listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    processes: int = 2  # worker processes: one core each for searches
    # Threads per process. Searches take turns, so a waiting request only holds a thread; with
    # fewer threads than open requests, a restore would queue behind searches for a thread.
    threads: int = 64
    rate_limit_per_minute: int = 600
    max_query_length: int = 1000
    max_request_bytes: int = 1 * 2**20
    token_cache_seconds: int = 5
    secret_key: str | None = None  # signs the web UI's session cookie; None: a key file
    secure_cookies: bool = False  # mark the session cookie Secure (serve over HTTPS)
    max_bulk_restore: int = 10_000  # records one `POST /restore` may match (the CLI: no limit)


@dataclass(frozen=True)
class BackupConfig:
    """How old the last backup may get before the admin page warns."""

    max_age_days: int = 7


@dataclass(frozen=True)
class Config:
    """Every setting of one Archivist installation."""

    path: Path
    active_url: str
    archive_dir: Path
    index_dir: Path
    retention: RetentionRules
    key_file: Path = Path("archive.key")  # the archive key (encryption at rest)
    kinds: tuple[str, ...] = DEFAULT_KINDS
    shard_period: str = "year"
    segment_max_bytes: int = 64 * 2**20
    batch_size: int = 4000
    index_worker_nice: int = 10  # niceness of the index's analysing processes
    server: ServerConfig = field(default_factory=ServerConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    tables: tuple[TableMapping, ...] = ()  # [[active.table]]: the CRM's own tables, if mapped


def default_config_path() -> Path:
    """The config file used when none is given: $ARCHIVIST_CONFIG, else ./config.toml."""
    return Path(os.environ.get("ARCHIVIST_CONFIG") or "config.toml")


def load_config(path: Path | str) -> Config:
    """Read and validate a config file.

    :param path: the TOML file; relative paths inside it resolve against its folder.
    :raises ConfigError: with a one-line reason naming the bad key.
    """
    path = Path(path).resolve()
    try:
        # utf-8-sig: a byte order mark (as Windows editors write) is not part of the TOML
        data = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({e.reason} at byte "
                          f"{e.start})") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    check_known_keys(data, path)
    try:
        return build_config(data, path)
    except ConfigError as e:  # a value's error: name the file, as the key checks do
        if str(e).startswith((f"{path}:", f"{path.name}:")):
            raise
        raise ConfigError(f"{path}: {e}") from None


def check_known_keys(data: dict[str, Any], path: Path) -> None:
    """Refuse a key or table that `KNOWN_KEYS` does not list, naming file, table and key.

    :raises ConfigError: one line, with the known key the unknown one probably meant.
    """
    _check_table(data, "", "", path)


def _check_table(table: dict[str, Any], schema: str, shown: str, path: Path) -> None:
    """Check one table's keys against `KNOWN_KEYS[schema]`; `shown` is its name for people."""
    allowed = KNOWN_KEYS[schema]
    for key, value in table.items():
        if key not in allowed and "*" not in allowed:
            _unknown(key, value, allowed, shown, path)
        child = f"{schema}.{key}" if schema else key
        if child not in KNOWN_KEYS:
            child = f"{schema}.*" if schema else child
        if child not in KNOWN_KEYS:
            continue  # a plain value (or an inline table such as `{ column = "..." }`)
        name = f"{shown}.{key}" if shown else key
        if isinstance(value, dict):
            _check_table(value, child, name, path)
        elif isinstance(value, list):  # an array of tables: [[active.table]]
            for n, item in enumerate(value, 1):
                if isinstance(item, dict):
                    _check_table(item, child, f"[[{name}]] entry {n}", path)


def _unknown(key: str, value: Any, allowed: tuple[str, ...], shown: str, path: Path) -> None:
    guess = difflib.get_close_matches(key, allowed, n=1)
    if not shown and isinstance(value, dict):
        what = f"unknown table [{key}]"
        hint = f"; did you mean [{guess[0]}]?" if guess else ""
    else:
        where = "at the top level" if not shown else (
            f"in {shown}" if shown.startswith("[") else f"in [{shown}]"
        )
        # in an [[active.table]] entry a dict is a field's inline table: still a key there
        table = isinstance(value, dict) and not shown.startswith("[[")
        what = f"unknown {'table' if table else 'key'} {key!r} {where}"
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
    known = ", ".join(k for k in allowed if k != "*")
    raise ConfigError(f"{path}: {what}{hint} (known: {known})")


def build_config(data: dict[str, Any], path: Path) -> Config:
    """Turn parsed TOML into a Config; `path` is the file the data came from."""
    base = path.parent
    active = _table(data, "active")
    archive = _table(data, "archive")
    index = _table(data, "index")
    server = _table(data, "server")
    worker = _table(data, "worker")
    records = _table(data, "records")
    backup = _table(data, "backup")
    kinds = _kinds(records, crm_tables=bool(active.get("table")))
    shard_period = _get(index, "shard_period", str, "year", "index")
    if shard_period not in ("year", "month"):
        raise ConfigError("index.shard_period must be 'year' or 'month'")
    worker_config = WorkerConfig(
        archive_cron=_cron(
            _get(worker, "archive_cron", str, "0 2 * * *", "worker"), "archive_cron"
        ),
        dispose_cron=_cron(
            _get(worker, "dispose_cron", str, "30 3 * * 0", "worker"), "dispose_cron"
        ),
        index_interval_seconds=_index_interval(worker),
    )
    server_config = ServerConfig(
        host=_host(server),
        port=_port(server),
        processes=_positive(server, "processes", 2, "server"),
        threads=_positive(server, "threads", ServerConfig.threads, "server"),
        rate_limit_per_minute=_positive(server, "rate_limit_per_minute", 600, "server"),
        max_query_length=_query_length(server),
        max_request_bytes=_positive(server, "max_request_bytes", 2**20, "server"),
        token_cache_seconds=_non_negative(server, "token_cache_seconds", 5, "server"),
        secret_key=_get(server, "secret_key", str, "", "server") or None,
        secure_cookies=_get(server, "secure_cookies", bool, False, "server"),
        max_bulk_restore=_positive(server, "max_bulk_restore", 10_000, "server"),
    )
    return Config(
        path=path,
        active_url=_resolve_db_url(
            _get(active, "url", str, "sqlite:///data/active.db", "active"), base
        ),
        archive_dir=base / _path(archive, "dir", "data/archive", "archive"),
        key_file=base / _path(archive, "key_file", "archive.key", "archive"),
        index_dir=base / _path(index, "dir", "data/index", "index"),
        retention=_retention(_table(data, "retention"), crm_tables=bool(active.get("table"))),
        kinds=tuple(kinds),
        shard_period=shard_period,
        segment_max_bytes=_positive(archive, "segment_max_bytes", 64 * 2**20, "archive"),
        batch_size=_positive(archive, "batch_size", 4000, "archive"),
        index_worker_nice=_niceness(index),
        server=server_config,
        worker=worker_config,
        backup=BackupConfig(max_age_days=_positive(backup, "max_age_days", 7, "backup")),
        tables=parse_table_mappings(active.get("table"), str(path), tuple(kinds)),
    )


def _retention(table: dict[str, Any], *, crm_tables: bool = False) -> RetentionRules:
    """The retention rules; `crm_tables`: records come from the CRM's own tables, whose
    categories are held to their columns, not to Archivist's record format."""
    default_table = table.get("default", {})
    if not isinstance(default_table, dict):
        raise ConfigError("[retention.default] must be a table")
    default = RetentionPolicy(
        archive_after_days=_non_negative(
            default_table, "archive_after_days", 365, "retention.default"
        ),
        keep_years=_non_negative(default_table, "keep_years", 5, "retention.default"),
    )
    categories: dict[str, RetentionPolicy] = {}
    category_tables = table.get("category", {})
    if not isinstance(category_tables, dict):
        raise ConfigError("[retention.category] must hold one table per category")
    for name, own in category_tables.items():
        where = f"retention.category.{name}"
        problem = _category_name_problem(name, crm_tables)
        if problem is not None:  # no record could have it: the table would never apply
            raise ConfigError(f"[retention.category.{name!r}]: {problem}")
        if not isinstance(own, dict):
            raise ConfigError(f"[{where}] must be a table")
        categories[name] = RetentionPolicy(
            archive_after_days=_non_negative(
                own, "archive_after_days", default.archive_after_days, where
            ),
            keep_years=_non_negative(own, "keep_years", default.keep_years, where),
        )
    for where, policy in [("retention.default", default)] + [
        (f"retention.category.{name}", policy) for name, policy in categories.items()
    ]:
        _warn_of_retention_ending_while_active(where, policy)
    return RetentionRules(default=default, categories=categories)


def _warn_of_retention_ending_while_active(where: str, policy: RetentionPolicy) -> None:
    """Say so when a record's retention would end before it is even archived: disposal only
    reaches archived records, so such records would stay active past their retention.

    That is so for some records once `archive_after_days` is longer than the shortest span of
    `keep_years` calendar years: 365 days each, with a leap day in every four.
    """
    if policy.archive_after_days > policy.keep_years * 365 + policy.keep_years // 4:
        log.warning(
            "%s: archive_after_days = %d is longer than keep_years = %d: a record would stay "
            "active past the end of its retention, and be due for disposal as soon as it is "
            "archived", where, policy.archive_after_days, policy.keep_years,
        )
    elif policy.keep_years == 0:
        log.warning(
            "%s: keep_years = 0: a record is due for disposal as soon as it is archived, and "
            "purged by the next disposal run", where,
        )


def _kinds(records: dict[str, Any], *, crm_tables: bool) -> list[str]:
    """`records.kinds`; `crm_tables`: kinds come from the CRM's own columns, held to nothing
    but being there, as categories are."""
    kinds = records.get("kinds", list(DEFAULT_KINDS))
    if not (isinstance(kinds, list) and kinds and all(isinstance(k, str) and k for k in kinds)):
        raise ConfigError("records.kinds must be a non-empty list of strings")
    for kind in kinds:
        problem = _kind_problem(kind, crm_tables)
        if problem is not None:  # no record could have it: it would only mislead
            raise ConfigError(f"records.kinds: {kind[:80]!r} {problem}")
    repeated = [kind for kind in kinds if kinds.count(kind) > 1]
    if repeated:
        raise ConfigError(f"records.kinds names {repeated[0][:80]!r} twice")
    return kinds


def _kind_problem(kind: str, crm_tables: bool) -> str | None:
    if not kind.strip():
        return "is blank"
    if crm_tables:
        return None
    typed = typed_value_problem(kind)
    if typed is not None:
        return typed
    if len(kind) > MAX_CHARS["kind"]:
        return f"is longer than {MAX_CHARS['kind']} characters, which no record's kind may be"
    return None


def _category_name_problem(name: str, crm_tables: bool) -> str | None:
    if not name.strip():
        return "a category name must not be empty"
    if crm_tables:  # (a CRM's column may hold what Archivist's own records may not)
        return None
    typed = typed_value_problem(name)
    if typed is not None:
        return f"a category name {typed}"
    if len(name) > MAX_CHARS["category"]:
        return f"a category name must be at most {MAX_CHARS['category']} characters"
    return None


# Drivers installed with Archivist; another SQLAlchemy URL works once its driver is installed.
_SHIPPED_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")


def _resolve_db_url(url: str, base: Path) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"active.url is not a database URL: {e}") from None
    except ValueError as e:  # SQLAlchemy reads the port as it parses: `host:notaport`, `[::1`
        raise ConfigError(
            f"active.url is not a database URL: its host and port cannot be read ({e})"
        ) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ConfigError(f"active.url: port {parsed.port} is not 1 to 65535")
    if parsed.drivername not in _SHIPPED_DRIVERS:
        _check_driver(parsed.drivername)
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database or ":memory:"
    if database == ":memory:" or "mode=memory" in database or parsed.query.get("mode") == "memory":
        # each command would start from an empty database, and forget it at exit
        raise ConfigError(
            "active.url: an in-memory SQLite database keeps nothing from one command to the "
            "next: give a file, sqlite:///PATH"
        )
    if not Path(database).is_absolute():
        return parsed.set(database=str(base / database)).render_as_string(hide_password=False)
    return url


def _check_driver(drivername: str) -> None:
    """Refuse a URL whose database driver cannot be loaded, saying what to write instead
    (`postgresql://` means psycopg2, which is not installed; Archivist uses psycopg 3)."""
    try:
        make_url(f"{drivername}://").get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError) as e:
        raise ConfigError(
            f"active.url: no database driver for {drivername!r} is installed ({e}); "
            "write sqlite:///PATH, or postgresql+psycopg://USER@HOST/DB for PostgreSQL"
        ) from None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _get(table: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = {int: "an integer", str: "a string"}.get(kind, kind.__name__)
        raise ConfigError(f"{where}.{key} must be {expected}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A TOML value as the file has it: a date or a time as written there, not as Python's."""
    if isinstance(value, datetime | date | time):
        return f"the {type(value).__name__} {value.isoformat()}"
    return repr(value)


def _path(table: dict[str, Any], key: str, default: str, where: str) -> str:
    value: str = _get(table, key, str, default, where)
    if not value.strip() or "\0" in value:  # "" is the config's own folder; NUL no path holds
        raise ConfigError(f"{where}.{key} must be a path, got {value!r}")
    return value


def _host(server: dict[str, Any]) -> str:
    value: str = _get(server, "host", str, "127.0.0.1", "server")
    if not value.strip():  # a server given "" listens on every interface
        raise ConfigError(
            "server.host is empty: give the address to listen on (127.0.0.1 for this machine "
            "only, 0.0.0.0 for every interface)"
        )
    return value


def _port(server: dict[str, Any]) -> int:
    value: int = _get(server, "port", int, 8080, "server")
    if not 0 <= value <= 65535:
        raise ConfigError(f"server.port must be between 0 and 65535, got {value}")
    return value


MAX_INDEX_INTERVAL = 7 * 86_400  # a week: the scheduler cannot place much longer intervals


def _index_interval(worker: dict[str, Any]) -> int:
    value = _positive(worker, "index_interval_seconds", 60, "worker")
    if value > MAX_INDEX_INTERVAL:
        raise ConfigError(
            f"worker.index_interval_seconds must be at most {MAX_INDEX_INTERVAL:,} (a week), "
            f"got {value:,}"
        )
    return value


def _positive(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value: int = _get(table, key, int, default, where)
    if value <= 0:
        raise ConfigError(f"{where}.{key} must be positive, got {value}")
    return value


# Retention periods reach back from a run's `as_of`: beyond these a cut-off would fall before
# year 1 and every run (of every category) would fail, so the config refuses them at load.
RETENTION_LIMITS = {"archive_after_days": 365_000, "keep_years": 1000}


def _non_negative(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value: int = _get(table, key, int, default, where)
    if value < 0:
        raise ConfigError(f"{where}.{key} must not be negative, got {value}")
    limit = RETENTION_LIMITS.get(key)
    if limit is not None and value > limit:
        raise ConfigError(f"{where}.{key} must be at most {limit:,}, got {value}")
    return value


def _query_length(server: dict[str, Any]) -> int:
    value = _positive(server, "max_query_length", 1000, "server")
    if value > QUERY_LENGTH_LIMIT:
        raise ConfigError(
            f"server.max_query_length must be at most {QUERY_LENGTH_LIMIT}, got {value}"
        )
    return value


def _niceness(index: dict[str, Any]) -> int:
    value: int = _get(index, "worker_nice", int, 10, "index")
    if not 0 <= value <= 19:
        raise ConfigError("index.worker_nice must be between 0 and 19")
    return value


def _cron(expression: str, key: str) -> str:
    try:
        trigger = cron_trigger(expression)
    except ValueError as e:
        raise ConfigError(f"worker.{key} is not a crontab expression: {e}") from None
    now = datetime.now(UTC)
    if trigger.get_next_fire_time(None, now) is None:  # 30 February: the job would never run
        raise ConfigError(f"worker.{key} = {expression!r} names no day that exists: it would "
                          "never run")
    return expression
