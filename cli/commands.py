"""The `archivist` command: each command parses, loads the config and calls one function."""

from __future__ import annotations

import json
import logging
import os
import select
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial, wraps
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, cast
from urllib.parse import parse_qsl

import click
from sqlalchemy.exc import DatabaseError, OperationalError

from archive_store import ArchiveStoreError
from archive_store.crypto import KEY_ENV, KeyMissing, decode_key, load_key
from archivist.active_db import create_schema, utcnow
from archivist.audit import AuditEvent, audit_outcome, write_audit
from archivist.config import Config, default_config_path, load_config
from archivist.crm_mapping import check_import_allowed
from archivist.errors import ArchivistError
from archivist.holds import add_hold, list_holds, remove_hold
from archivist.importer import import_lines, read_lines
from archivist.records import format_utc
from archivist.tokens import (
    ROLES,
    create_token,
    ledger_earlier_revocations,
    list_tokens,
    revocation_ledger_path,
    revoke_token,
)
from indexer.errors import BadQuery, IndexerError
from indexer.hold_reach import hold_reaches_a_record, no_record_held
from indexer.process_search import iter_process_hits
from indexer.search.dates import parse_moment
from indexer.services import Services

# Commands import the layers they use inside their own bodies: `archivist --help` and short
# commands then start without loading the search engine, Flask or APScheduler.
DOMAIN_ERRORS: tuple[type[Exception], ...] = (ArchivistError, ArchiveStoreError, IndexerError)


class ArchivistGroup(click.Group):
    """A click group that turns domain errors into one line on stderr and exit status 1, and
    usage errors (its own and its commands') into one line and exit status 2."""

    group_class = type  # its subgroups (`hold`, `backup`, `token`) are ArchivistGroups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            _usage_error(e)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DOMAIN_ERRORS as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except click.UsageError as e:
            _usage_error(e)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except OperationalError as e:  # the active database down, unreachable, refusing us
            if os.environ.get("ARCHIVIST_DEBUG"):
                raise
            click.echo(f"error: the active database: {_first_line(str(e.orig or e))}", err=True)
            sys.exit(1)
        except DatabaseError as e:
            if os.environ.get("ARCHIVIST_DEBUG"):
                raise
            if _access_refused(e):  # a role without the rights it needs: the admin's to grant
                click.echo(f"error: the active database: {_first_line(str(e.orig or e))}",
                           err=True)
                sys.exit(1)
            if type(e) is not DatabaseError:  # an integrity or programming error: a bug
                _unexpected(e)
            # what SQLite says of a file that is not a database, or a damaged one
            click.echo(f"error: the active database (active.url): {_first_line(str(e.orig or e))}",
                       err=True)
            sys.exit(1)
        except OSError as e:  # a folder that is a file, a path not there, no permission, no space
            if isinstance(e, BrokenPipeError) and _stdout_closed():
                # the reader went away (`| head`): nothing to say, and nobody to say it to
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(1)
            if os.environ.get("ARCHIVIST_DEBUG"):
                raise
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"error: {e.strerror or _first_line(str(e))}{where}", err=True)
            sys.exit(1)
        except Exception as e:  # a bug or an environment problem: still one line, exit 2
            _unexpected(e)


def _access_refused(e: DatabaseError) -> bool:
    """Whether the database refused the statement for want of a privilege (SQLSTATE 42501)
    or of a valid authorization (class 28)."""
    state = str(getattr(e.orig, "sqlstate", None) or "")
    return state == "42501" or state.startswith("28")


def _unexpected(e: Exception) -> NoReturn:
    """Report an error nobody foresaw in one line (exit 2), or raise it with ARCHIVIST_DEBUG."""
    if os.environ.get("ARCHIVIST_DEBUG"):
        raise e
    click.echo(f"error: unexpected {type(e).__name__}: {_first_line(str(e))} "
               "(set ARCHIVIST_DEBUG=1 for the traceback)", err=True)
    sys.exit(2)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has closed it."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _usage_error(e: click.UsageError) -> NoReturn:
    """One line, as every other refusal (not click's usage text, nor a whole help page)."""
    if isinstance(e, click.exceptions.NoArgsIsHelpError) and e.ctx is not None:
        group = cast(click.Group, e.ctx.command)
        names = ", ".join(group.list_commands(e.ctx))
        message = f"missing command, one of: {names} (see {e.ctx.command_path} --help)"
    else:
        message = e.format_message()
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--config PATH` to a command and pass the loaded Config as `config`."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config file (default: $ARCHIVIST_CONFIG, else ./config.toml).",
    )
    @wraps(command)
    def wrapper(*args: Any, config_path: Path | None, **kwargs: Any) -> Any:
        return command(*args, config=load_config(config_path or default_config_path()), **kwargs)

    return wrapper


class MomentType(click.ParamType):
    """An ISO date (its midnight UTC) or an ISO datetime (UTC if it has no offset)."""

    name = "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(value)
        except BadQuery as e:
            self.fail(str(e), param, ctx)


WHEN = MomentType()


@click.group(cls=ArchivistGroup)
def main() -> None:
    """Archivist: the archive next to your CRM."""
    _log_warnings_as_lines()


@main.command()
@config_option
def init(config: Config) -> None:
    """Create the databases and folders named in the config (idempotent)."""
    from indexer.jobs.indexing import rebuild_if_outdated

    with Services.open(config, create=True) as services:
        sealed = services.store.reseal()  # entries archived before encryption at rest
        # tokens revoked by a version that kept no revocation ledger
        ledger_earlier_revocations(services.sessions, revocation_ledger_path(config.key_file))
        rebuild_if_outdated(
            services.store, services.index,
            lambda reason: click.echo(f"rebuilding the search index: it {reason}"),
        )
    click.echo(f"initialised {config.path}")
    if sealed:
        click.echo(f"encrypted {sealed} entries archived before encryption at rest")


@main.command("import")
@click.argument("file", type=click.File("rb"))
@config_option
def import_(file: BinaryIO, config: Config) -> None:
    """Upsert records from a JSON Lines FILE (- for stdin) into the active database."""
    from indexer.processes import find_archived_parents

    check_import_allowed(config.tables)
    with Services.open(config) as services:
        report = import_lines(
            read_lines(file),
            services.sessions,
            services.store.find_archived,
            config.kinds,
            on_error=lambda error: click.echo(str(error), err=True),
            find_archived_parents=partial(find_archived_parents, services.store),
        )
    click.echo(f"imported {report.imported}, rejected {report.rejected}")


@main.command()
@click.option("--as-of", type=WHEN, default=None, help="Run as if now were WHEN.")
@click.option("--dry-run", is_flag=True, help="Only print what would move, by category.")
@config_option
def archive(as_of: datetime | None, dry_run: bool, config: Config) -> None:
    """Move every aged record not on legal hold into the archive and index it."""
    from indexer.jobs.runs import run_archive_job
    with Services.open(config) as services:
        report = run_archive_job(services, as_of or utcnow(), dry_run=dry_run)
    if dry_run:
        _print_by_category("would archive", report.archived, report.by_category)
        if report.held_back:
            click.echo(
                f"held back {report.held_back} processes (a record not aged, in its restore "
                "grace, or on hold)"
            )
    else:
        click.echo(f"archived {report.archived}, indexed {report.indexed}")
    for constraint, count in report.blocked_by.items():
        click.echo(f"blocked {count}: still referenced through {constraint}", err=True)
    for reason, count in report.refused_by.items():
        click.echo(f"refused {count}: {reason}", err=True)


@main.command()
@click.option("--as-of", type=WHEN, default=None, help="Run as if now were WHEN.")
@click.option("--dry-run", is_flag=True, help="Only print what would be purged, by category.")
@config_option
def dispose(as_of: datetime | None, dry_run: bool, config: Config) -> None:
    """Purge archived records past their keep time and not on legal hold."""
    from indexer.jobs.runs import run_dispose_job
    as_of = as_of or utcnow()
    with Services.open(config) as services:
        report = run_dispose_job(services, as_of, dry_run=dry_run, actor="cli")
    if dry_run:
        _print_by_category("would purge", report.purged, report.by_category)
    else:
        click.echo(f"purged {report.purged}")


@contextmanager
def _audited(
    services: Services, action: str, target: str, details: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Record a CLI action in the audit log (actor `cli`) with its outcome."""
    at, outcome, details = utcnow(), "ok", dict(details)
    create_schema(services.engine)  # an installation from before the audit log
    try:
        yield details
    except Exception as e:
        outcome = audit_outcome(e)
        raise
    finally:
        write_audit(services.sessions, [AuditEvent(at, "cli", action, target, outcome, details)])


@main.command()
@click.option("--customer", default=None, help="Erase every archived record of this customer.")
@click.option("--record", "record_id", default=None, help="Erase this one archived record.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--dry-run", is_flag=True, help="Only print how many records would be erased.")
@config_option
def erase(
    customer: str | None, record_id: str | None, reason: str, dry_run: bool, config: Config
) -> None:
    """Erase archived records on request (GDPR/CCPA): their text is gone from every file."""
    from indexer.jobs.erasure import audit_details, audit_target, erase_records, nothing_to_erase
    if (customer is None) == (record_id is None):
        raise click.UsageError("give exactly one of --customer ID and --record ID")
    if customer == "" or record_id == "":
        raise click.UsageError("--customer and --record need a value, not an empty one")
    if not reason.strip():
        raise click.UsageError("--reason must not be empty")
    with Services.open(config) as services:
        target = audit_target(customer, record_id)
        asked = {"reason": reason, "dry_run": dry_run}  # a dry run refused is marked one too
        with _audited(services, "erase", target, asked) as details:
            report = erase_records(
                services, customer_id=customer, record_id=record_id, actor="cli",
                at=utcnow(), dry_run=dry_run,
            )
            details.update(audit_details(report, customer))
    click.echo(f"would erase {report.erased}" if dry_run else f"erased {report.erased}")
    click.echo(f"still active: {report.active_remaining} record(s) of this customer in the "
               "active database (the CRM's to erase)")
    if customer is not None and not report.known:
        click.echo("warning: " + nothing_to_erase(customer, dry_run), err=True)


@main.command()
@click.argument("ids", nargs=-1)
@click.option("--search", "search", default=None, metavar="PARAMS",
              help="Restore what this search matches: /api/v1/search parameters, "
                   "e.g. 'q=refund&category=billing'.")
@click.option("--reason", required=True, help="Why (kept in each record's history).")
@click.option("--dry-run", is_flag=True, help="Only count what would be restored.")
@config_option
def restore(
    ids: tuple[str, ...], search: str | None, reason: str, dry_run: bool, config: Config
) -> None:
    """Restore archived records, and the rest of their processes, to the active database."""
    from tqdm import tqdm
    from werkzeug.datastructures import MultiDict

    from indexer.jobs.bulk_restore import restore_in_bulk
    from server.schemas import load_restore_query
    if bool(ids) == (search is not None):
        raise click.UsageError("give record ids or --search PARAMS (one of them, not both)")
    if not reason.strip() or len(reason) > 500:
        raise click.UsageError("--reason must be 1-500 characters")
    query = None
    if search is not None:
        try:  # as the API reads a query string: repeats kept (and refused where not a list)
            args = MultiDict(parse_qsl(search, keep_blank_values=True, errors="strict"))
        except UnicodeDecodeError:
            raise click.UsageError("--search is not UTF-8 once %-decoded") from None
        try:  # a parameter it cannot take is a usage error, as a bad option is
            query = load_restore_query(args, config.server.max_query_length)
        except BadQuery as e:
            raise click.UsageError(str(e)) from None
    details: dict[str, Any] = {"reason": reason, "dry_run": dry_run}
    with Services.open(config) as services, tqdm(
        # shown after a second: a refused search says so alone on stderr, in one line
        unit=" records", file=sys.stderr, disable=dry_run, leave=False, delay=1.0
    ) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        with _audited(services, "restore", "search" if query else "ids", details) as audit:
            record_ids = list(ids)
            if query is not None:
                audit["search"] = search
                record_ids = [hit.id for hit in iter_process_hits(services, query)]
            report = restore_in_bulk(
                services, record_ids, "cli", utcnow(), reason.strip(), dry_run=dry_run,
                progress=advance,
            )
            audit.update(matched=report.matched, processes=report.processes,
                         skipped=len(report.skipped))
            if not dry_run:
                audit["restored"] = report.restored
    for skipped in report.skipped:
        why = f" ({skipped.reason})" if skipped.reason else ""
        click.echo(f"skipped {skipped.id}: {skipped.code}{why}", err=True)
    verb = "would restore" if dry_run else "restored"
    click.echo(f"{verb} {len(report.restored)} ({report.processes} processes)")
    if report.skipped and not report.restored:  # a script must not read "done" here
        nothing = "nothing would be restored" if dry_run else "nothing restored"
        click.echo(f"error: {nothing}: every record was skipped", err=True)
        sys.exit(1)



@main.group()
def hold() -> None:
    """Legal holds: a held record is neither archived nor disposed."""


def _hold_target(record: str | None, customer: str | None, category: str | None) -> tuple[str, str]:
    given = [
        (s, v)
        for s, v in (("record", record), ("customer", customer), ("category", category))
        if v is not None
    ]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --record, --customer or --category")
    return given[0]


def _hold_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--category", default=None, help="A whole category.")(command)
    command = click.option("--customer", default=None, help="Every record of a customer.")(command)
    return click.option("--record", default=None, help="One record id.")(command)


@hold.command("add")
@_hold_options
@click.option("--reason", required=True, help="Why the hold is placed (shown in listings).")
@config_option
def hold_add(
    record: str | None, customer: str | None, category: str | None, reason: str, config: Config
) -> None:
    """Place a legal hold."""
    scope, value = _hold_target(record, customer, category)
    details = {"scope": scope, "reason": reason}
    with Services.open(config) as services:
        with _audited(services, "hold_add", f"{scope}:{value}", details):
            with services.sessions.begin() as session:
                add_hold(session, scope, value, reason, utcnow())
        reaches = hold_reaches_a_record(services, scope, value)
    click.echo(f"hold placed on {scope} {value}")
    if not reaches:
        click.echo("warning: " + no_record_held(scope, value), err=True)


@hold.command("remove")
@_hold_options
@config_option
def hold_remove(
    record: str | None, customer: str | None, category: str | None, config: Config
) -> None:
    """Lift a legal hold."""
    scope, value = _hold_target(record, customer, category)
    with Services.open(config) as services:
        with _audited(services, "hold_remove", f"{scope}:{value}", {"scope": scope}):
            with services.sessions.begin() as session:
                remove_hold(session, scope, value)
    click.echo(f"hold lifted from {scope} {value}")


@hold.command("list")
@_hold_options
@config_option
def hold_list(
    record: str | None, customer: str | None, category: str | None, config: Config
) -> None:
    """List the legal holds in force (only those on one record, customer or category)."""
    given = record is not None or customer is not None or category is not None
    scope, value = _hold_target(record, customer, category) if given else (None, None)
    with Services.open(config) as services, services.sessions.begin() as session:
        holds = list_holds(session, scope, value)
    for h in holds:
        click.echo(f"{h.scope}\t{h.value}\t{h.created_at:%Y-%m-%dT%H:%M:%SZ}\t{h.reason}")
    if not holds:
        click.echo("no legal holds")


@main.command()
@click.option("--rebuild", is_flag=True, help="Rebuild every index from the archive store alone.")
@config_option
def index(rebuild: bool, config: Config) -> None:
    """Index what is archived but not yet indexed."""
    from indexer.jobs.indexing import rebuild_index
    from indexer.jobs.runs import run_index_job
    with Services.open(config, broken_index_ok=rebuild) as services:
        if rebuild:
            count = rebuild_index(services.store, services.index, progress=sys.stderr.isatty())
            click.echo(f"rebuilt, indexed {count}")
        else:
            click.echo(f"indexed {run_index_job(services)}")


@main.command()
@click.option("--archive-now", is_flag=True, help="Also run the archive job once at start.")
@config_option
def worker(archive_now: bool, config: Config) -> None:
    """Run the scheduled jobs (blocking) until SIGTERM or Ctrl-C."""
    from indexer.worker import run as run_worker
    _log_to_stderr()
    run_worker(config, archive_now=archive_now)


@main.command()
@config_option
def stats(config: Config) -> None:
    """Print the counts of /api/v1/stats as JSON."""
    from indexer.stats import collect_stats
    with Services.open(config) as services:
        click.echo(json.dumps(collect_stats(services), indent=2))


@main.command()
@config_option
def verify(config: Config) -> None:
    """Check archive checksums, the hash chain, and that catalog and index agree."""
    from indexer.jobs.verification import verify_all
    with Services.open(config, broken_index_ok=True) as services:
        result = verify_all(services)
    click.echo(result.summary())
    if result.problems:
        for problem in result.problems:
            click.echo(str(problem), err=True)
        if result.missing_ids():
            click.echo("damaged or missing: " + " ".join(result.missing_ids()), err=True)
        if result.searchable_ids():
            click.echo("in the index though not archived (`archivist index --rebuild` takes "
                       "them out): " + " ".join(result.searchable_ids()), err=True)
        sys.exit(1)


@main.group()
def backup() -> None:
    """Backups: create one online, verify one, recover an installation from one."""


@backup.command("create")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@config_option
def backup_create(folder: Path, config: Config) -> None:
    """Back up everything Archivist keeps into FOLDER, while the server and worker run."""
    from indexer.jobs.backup import create_backup
    with Services.open(config) as services:
        with _audited(services, "backup", str(folder.absolute()), {}) as details:
            report = create_backup(services, folder, utcnow())
            details.update(records=report.records, files=report.files, bytes=report.bytes)
    click.echo(
        f"backed up {report.records} records, {report.files} files, {report.bytes} bytes copied"
    )


@backup.command("verify")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The installation whose archive key opens the backup's sealed records "
         "(default: $ARCHIVIST_CONFIG, else ./config.toml).",
)
def backup_verify(folder: Path, config_path: Path | None) -> None:
    """Check every file of the backup in FOLDER against its manifest, and its archive's chain."""
    from indexer.jobs.backup import verify_backup
    env_key = os.environ.get(KEY_ENV)
    path = config_path or default_config_path()
    named = config_path is not None or bool(os.environ.get("ARCHIVIST_CONFIG"))
    key = decode_key(env_key, KEY_ENV) if env_key else None  # (no installation needed)
    if named or path.exists():  # (a config named and missing is an error, as for any command)
        config = load_config(path)
        try:
            key = load_key(config.key_file, env_key)
        except KeyMissing as e:  # (not `init`: a new key would not open this backup)
            raise KeyMissing(f"{e.args[0].partition(':')[0]}: give the key the backup was "
                             f"made with (put the file back, or set {KEY_ENV})") from None
    problems = verify_backup(folder, key)
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        noun = "problem" if len(problems) == 1 else "problems"
        click.echo(f"backup {folder} does not verify: {len(problems)} {noun}", err=True)
        sys.exit(1)
    click.echo(f"ok: backup {folder} verifies")


@backup.command("recover")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an installation that holds records.")
@config_option
def backup_recover(folder: Path, force: bool, config: Config) -> None:
    """Make the installation of --config what the backup in FOLDER holds (stop serve first)."""
    from indexer.jobs.backup import recover_backup
    report = recover_backup(config, folder, utcnow(), force=force)  # (it audits itself)
    click.echo(
        f"recovered the backup of {report.created_at}: {report.active} active, "
        f"{report.archived} archived, indexed {report.indexed}"
    )
    if report.crm_rows_lost:
        click.echo(f"warning: {report.crm_rows_lost} CRM rows that left their tables after the "
                   "backup was taken are in neither place", err=True)
    if report.missing_erasure_ledger is not None:
        click.echo(f"warning: no erasure ledger at {report.missing_erasure_ledger}: erasures "
                   "made after the backup was taken are made again only from it, so their "
                   "records may be back; copy it there with the key and recover again with "
                   "--force", err=True)
    if report.missing_revocation_ledger is not None:
        click.echo(f"warning: no revocation ledger at {report.missing_revocation_ledger}: "
                   "tokens revoked after the backup was taken are revoked again only from it, "
                   "so they may work again; copy it there with the key and recover again with "
                   "--force", err=True)


def _print_by_category(verb: str, total: int, by_category: dict[str, int]) -> None:
    click.echo(f"{verb} {total}")
    for category, count in by_category.items():
        click.echo(f"  {category}: {count}")


@main.group()
def token() -> None:
    """API tokens of the HTTP server (roles: agent, auditor, admin)."""


@token.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--name", required=True, help="A unique name; the audit log shows it.")
@config_option
def token_create(role: str, name: str, config: Config) -> None:
    """Create a token and print it once; only its SHA-256 is stored."""
    with Services.open(config) as services:
        create_schema(services.engine)
        with services.sessions.begin() as session:
            secret = create_token(session, name, role, utcnow())
    click.echo(secret)
    click.echo(f"token {name!r} ({role}) created; it is shown only this once", err=True)


@token.command("list")
@config_option
def token_list(config: Config) -> None:
    """List the tokens (never their secrets)."""
    with Services.open(config) as services:
        create_schema(services.engine)
        with services.sessions.begin() as session:
            tokens = list_tokens(session)
    for t in tokens:
        revoked = "" if t.revoked_at is None else f"\trevoked {format_utc(t.revoked_at)}"
        click.echo(f"{t.name}\t{t.role}\t{format_utc(t.created_at)}{revoked}")
    if not tokens:
        click.echo("no tokens")


@token.command("revoke")
@click.argument("name")
@config_option
def token_revoke(name: str, config: Config) -> None:
    """Revoke the token NAME (the server notices within seconds)."""
    with Services.open(config) as services:
        create_schema(services.engine)
        with services.sessions.begin() as session:
            revoke_token(session, name, utcnow(), revocation_ledger_path(config.key_file))
    click.echo(f"token {name!r} revoked")


_WARNING_LINES = "archivist-warning-lines"


class _LineFormatter(logging.Formatter):
    """A logged warning as the commands' own lines say one: `warning: ...`."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _log_warnings_as_lines() -> None:
    """What the layers below log as a warning (a key file others may read) reads as the
    commands' own warnings, one `warning: ...` line on stderr; logging set up already (a
    test's capture) is left as it is."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()  # (stderr as it is now: click's test runner swaps it)
    handler.set_name(_WARNING_LINES)
    handler.setFormatter(_LineFormatter())
    root.addHandler(handler)


def _log_to_stderr() -> None:
    """The long-running commands log with time, level and logger, from INFO up."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _WARNING_LINES:
            root.removeHandler(handler)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _not_empty(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():  # "" would listen on every interface
        raise click.BadParameter("empty: give the address to listen on (e.g. 127.0.0.1)")
    return value


@main.command()
@click.option("--host", default=None, callback=_not_empty,
              help="Address to listen on (default: server.host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (default: server.port).")
@config_option
def serve(host: str | None, port: int | None, config: Config) -> None:
    """Serve the HTTP API on gunicorn until SIGTERM or Ctrl-C."""
    from server.serving import serve as serve_app
    _log_to_stderr()
    serve_app(config, host, port, on_ready=lambda url: click.echo(f"serving on {url}"))


@main.command()
@click.option(
    "--records",
    "count",
    type=click.IntRange(1, 2_000_000),
    default=5000,
    show_default=True,
    help="How many demo records to generate.",
)
@click.option("--host", default=None, callback=_not_empty,
              help="Address to listen on (default: server.host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (default: server.port).")
@config_option
def demo(count: int, host: str | None, port: int | None, config: Config) -> None:
    """Showcase: init, load demo data, archive it, then serve and run the worker until Ctrl-C."""
    from indexer.jobs.demo import demo_admin_token, load_demo
    from indexer.stats import collect_stats
    from server.serving import run_worker_process
    from server.serving import serve as serve_app
    now = utcnow()
    with Services.open(config, create=True) as services:
        setup = load_demo(services, count, now)
        if setup.loaded:
            click.echo(f"demo data: imported {setup.imported}, archived {setup.archived}")
        else:
            click.echo("demo data already loaded; using it as it is")
        click.echo(json.dumps(collect_stats(services), indent=2))
        secret = demo_admin_token(services, now)
    _log_to_stderr()

    def ready(url: str) -> None:
        click.echo(f"\nArchivist is running at {url}  (Ctrl-C stops it)")
        click.echo(f"admin token: {secret}")
        click.echo(
            f'try: curl -H "Authorization: Bearer {secret}" "{url}/api/v1/search?q=refund"\n',
            nl=True,
        )

    with run_worker_process(config.path):
        serve_app(config, host, port, on_ready=ready)


if __name__ == "__main__":  # `python -m cli.commands`, as `python -m archivist`
    main(prog_name="archivist")
