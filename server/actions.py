"""What each endpoint does, as plain functions: call the library, record it in the audit log.

No HTTP here (that is `api.py`) and no record rules (those are in `indexer/` and `archivist/`);
each function runs one library operation under `audited`, which writes the audit entry with the
outcome: `ok`, or the error's code.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time as time_module
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from archive_store import HistoryEvent
from archivist.active_db import utcnow
from archivist.audit import (
    AuditEvent,
    AuditFilter,
    AuditPage,
    AuditWriter,
    audit_outcome,
    list_audit,
)
from archivist.disposals import (
    CSV_COLUMNS as DISPOSAL_COLUMNS,
)
from archivist.disposals import (
    DisposalFilter,
    DisposalPage,
    iter_disposals,
    list_disposals,
)
from archivist.holds import Hold, add_hold, holds_covering, list_holds, remove_hold
from archivist.processes import find_processes
from archivist.records import Record, format_utc
from archivist.tokens import TokenInfo, token_is_live
from archivist.web_sessions import end_web_session, find_web_session, start_web_session
from indexer import hold_reach
from indexer.crm_view import view_record_process_now
from indexer.errors import BadQuery
from indexer.jobs.bulk_restore import restore_in_bulk
from indexer.jobs.crm_restore import current_crm_tables, restore_crm_process
from indexer.jobs.erasure import ErasureReport, audit_details, audit_target, erase_records
from indexer.jobs.restore import BulkRestoreReport, PlanChanged, restore_process
from indexer.process_search import iter_process_hits, search_processes
from indexer.processes import ArchivistSource, ProcessView
from indexer.search import SearchHit, SearchPage, SearchQuery
from indexer.services import Services
from indexer.stats import collect_stats

EXPORT_COLUMNS = (
    "id",
    "kind",
    "category",
    "customer_id",
    "owner",
    "subject",
    "status",
    "created_at",
    "updated_at",
    "archived_at",
)


@dataclass(frozen=True)
class Actor:
    """Who acts (a token's name) and with which services; `now` is the clock, read here."""

    name: str
    services: Services
    audit: AuditWriter
    now: Callable[[], datetime] = utcnow
    recheck_seconds: float = 5.0  # how often a long stream asks whether the token still lives
    web_session_id: str | None = None  # a browser's: signing out ends its streams too

    def still_allowed(self) -> bool:
        """Whether the token (and the browser's session) is still live: a revocation or a
        sign-out ends a stream under way too."""
        with self.services.read_sessions.begin() as session:
            if self.web_session_id is not None:
                return find_web_session(session, self.web_session_id, self.now()) is not None
            return token_is_live(session, self.name)


@dataclass(frozen=True)
class ArchiveInfo:
    """Where and in what state a record is archived, and the hash of its current version."""

    record_id: str
    state: str
    version: int
    segment_id: int
    archived_at: datetime
    restored_at: datetime | None
    disposed_at: datetime | None
    erased_at: datetime | None
    sha256: str


@dataclass(frozen=True)
class RecordView:
    """A record as `GET /records/<id>` shows it; `record` is None once purged."""

    record: dict[str, Any] | None
    archive: ArchiveInfo
    history: list[HistoryEvent]
    process: ProcessView


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did: the record asked for, and every record of its process restored."""

    id: str
    state: str = "restored"
    restored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportChecksum:
    """The SHA-256 and size of an export's bytes."""

    sha256: str
    rows: int
    bytes: int
    filename: str


@dataclass
class _Audit:
    details: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"


@contextmanager
def audited(
    actor: Actor, action: str, target: str, details: dict[str, Any], *, wait: bool
) -> Iterator[_Audit]:
    """Record the action in the audit log once the block ends, with its outcome."""
    entry = _Audit(dict(details))
    at = actor.now()
    try:
        yield entry
    except Exception as e:
        entry.outcome = audit_outcome(e)
        if isinstance(e, BadQuery):  # the reason, as for a query refused before it ran
            entry.details["error"] = str(e)
        raise
    finally:
        event = AuditEvent(at, actor.name, action, target, entry.outcome, entry.details)
        actor.audit.record(event, wait=wait)


def describe_query(query: SearchQuery) -> dict[str, Any]:
    """The query's parameters for the audit log (only those that were given)."""
    out: dict[str, Any] = {"q": query.q}
    for name, value in (
        ("category", list(query.categories)),
        ("kind", list(query.kinds)),
        ("customer_id", query.customer_id),
        ("owner", query.owner),
        ("process", query.process),
        ("from", None if query.date_from is None else query.date_from.isoformat()),
        ("to", None if query.date_to is None else query.date_to.isoformat()),
    ):
        if value:
            out[name] = value
    out["date_field"] = query.date_field
    if query.sort:  # (it decides an export's row order, and so its SHA-256)
        out["sort"] = query.sort
    return out


def audit_refused_query(actor: Actor, action: str, q: str, error: BadQuery) -> None:
    """Record a search or an export refused for its parameters (a date that does not exist,
    a page out of range) before it ran: outcome `bad_query`, as for a query refused later."""
    details = {"q": q, "error": str(error)}
    actor.audit.record(
        AuditEvent(actor.now(), actor.name, action, q, "bad_query", details), wait=False
    )


def search(actor: Actor, query: SearchQuery) -> SearchPage:
    """Run a search; the audit entry holds the query, its filters and the total."""
    details = describe_query(query)
    details.update(sort=query.sort, page=query.page, per_page=query.per_page)
    # Not waited for: a search should not queue behind an archive batch's write lock.
    with audited(actor, "search", query.q, details, wait=False) as entry:
        page = search_processes(actor.services, query)
        entry.details["total"] = page.total
    return page


def read_record(actor: Actor, record_id: str) -> RecordView:
    """A record with its archive state, history and process."""
    services = actor.services
    store = services.store
    with audited(actor, "read", record_id, {}, wait=False) as entry:
        info = store.info(record_id)
        record: dict[str, Any] | None = None
        if info.state in ("purged", "erased"):  # (the hash of the event that removed it)
            sha = store.hashes([record_id])[record_id]
        else:
            record, sha = store.read_with_hash(record_id)
        entry.details["state"] = info.state
        process = view_record_process_now(services, record_id)
        archive = ArchiveInfo(
            info.record_id, info.state, info.version, info.segment_id, info.archived_at,
            info.restored_at, info.disposed_at, info.erased_at, sha,
        )
        return RecordView(record, archive, store.history(record_id), process)


def restore(actor: Actor, record_id: str, reason: str | None = None) -> RestoreResult:
    """One-click restore of a record's whole process: back to the active database, out of
    search; one audit entry names every record restored, and it is waited for."""
    services = actor.services
    details: dict[str, Any] = {} if reason is None else {"reason": reason}
    # An admin waits, and a restore is a few milliseconds of work: this process's searches
    # pause meanwhile (for up to a limit, see Turns.urgent) rather than share the core with it.
    if services.crm is not None:  # the CRM's own tables: the whole process goes back there
        with services.index.urgent(), audited(
            actor, "restore", record_id, details, wait=True
        ) as e:
            ids = restore_crm_process(
                services.sessions, services.store, services.index,
                current_crm_tables(services), record_id, actor.name, actor.now(), reason,
            )
            e.details["restored"] = ids
        return RestoreResult(record_id, restored=ids)
    with services.index.urgent(), audited(actor, "restore", record_id, details, wait=True) as e:
        records: list[Record] = restore_process(
            services.sessions, services.store, services.index, record_id, actor.name,
            actor.now(), reason,
        )
        e.details["restored"] = [r.id for r in records]
    return RestoreResult(record_id, restored=[r.id for r in records])


def bulk_restore(
    actor: Actor,
    reason: str,
    *,
    ids: list[str] | None = None,
    query: SearchQuery | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    limit: int | None = None,
    confirmed_plan: str | None = None,
) -> BulkRestoreReport:
    """Restore archived records, given by id or by a search, with the rest of their
    processes; one audit entry names every record restored.

    :param confirmed_plan: the `plan_digest` of the dry run a person confirmed: restore only
        if the plan is still that one, else raise `PlanChanged` with the plan now.
    """
    services = actor.services
    details: dict[str, Any] = {"reason": reason, "dry_run": dry_run}
    if query is not None:
        details["search"] = describe_query(query)
    target = "search" if query is not None else "ids"
    if query is None:
        details["ids"] = list(ids or [])  # what was asked, as the restored ids are below
    with audited(actor, "restore", target, details, wait=True) as entry:
        if query is not None:
            ids = [hit.id for hit in iter_process_hits(services, query)]
        if confirmed_plan is not None and not dry_run:
            plan = restore_in_bulk(
                services, ids or [], actor.name, actor.now(), reason, dry_run=True, limit=limit
            )
            if plan.plan_digest != confirmed_plan:
                raise PlanChanged(
                    "the records this would restore changed since the confirmation "
                    f"(now {len(plan.restored)}): nothing was restored", plan
                )
        report = restore_in_bulk(
            services, ids or [], actor.name, actor.now(), reason, dry_run=dry_run,
            limit=limit, progress=progress,
        )
        entry.details.update(
            matched=report.matched, processes=report.processes,
            skipped=len(report.skipped),
            skipped_ids={s.id: s.code for s in report.skipped},
        )
        if not dry_run:
            entry.details["restored"] = report.restored
    return report


def erase(
    actor: Actor, customer_id: str | None, record_id: str | None, reason: str, dry_run: bool
) -> ErasureReport:
    """Erasure on request; the audit entry keeps counts and hashes, never content."""
    target = audit_target(customer_id, record_id)
    actor.audit.flush()  # this process's searches so far are in the log, to be blanked if need be
    # dry_run given at once: a dry run refused (not_found, on_hold) is audited as one too
    details = {"reason": reason, "dry_run": dry_run}
    with audited(actor, "erase", target, details, wait=True) as entry:
        report = erase_records(
            actor.services, customer_id=customer_id, record_id=record_id, actor=actor.name,
            at=actor.now(), dry_run=dry_run,
        )
        entry.details.update(audit_details(report, customer_id))
    return report


def stats(actor: Actor) -> dict[str, Any]:
    """The counts of `/stats`."""
    return collect_stats(actor.services)


def read_audit(actor: Actor, selection: AuditFilter) -> AuditPage:
    """One page of the audit log (everything recorded before this call included)."""
    actor.audit.flush()
    with actor.services.read_sessions.begin() as session:
        return list_audit(session, selection)


def read_disposals(actor: Actor, selection: DisposalFilter) -> DisposalPage:
    """One page of the disposal list: which records were purged, by which policy, when."""
    with actor.services.read_sessions.begin() as session:
        return list_disposals(session, selection)


def export_disposals(actor: Actor, selection: DisposalFilter) -> Iterator[bytes]:
    """The whole disposal list that matches, as CSV; audited as an export of `disposals`."""
    details: dict[str, Any] = {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in (
            ("from", selection.date_from), ("to", selection.date_to),
            ("category", selection.category), ("run", selection.run_id),
        )
        if value is not None
    }
    with audited(actor, "export", "disposals", details, wait=True) as entry:
        rows = size = 0
        digest = hashlib.sha256()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(DISPOSAL_COLUMNS)

        def chunk() -> bytes:
            nonlocal size
            data = buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
            digest.update(data)
            size += len(data)
            return data

        try:
            with actor.services.read_sessions.begin() as session:
                for item in iter_disposals(session, selection):
                    writer.writerow([
                        item.record_id, item.sha256, item.category, item.policy,
                        item.keep_years, format_utc(item.as_of), format_utc(item.purged_at),
                        item.actor, item.run_id,
                    ])
                    rows += 1
                    if buffer.tell() > 65536:
                        yield chunk()
            yield chunk()
        except GeneratorExit:
            entry.outcome = "aborted"
            raise
        finally:  # as an export's: what was sent, to check the file against
            entry.details.update(rows=rows, bytes=size, sha256=digest.hexdigest())


def holds_on(actor: Actor, view: RecordView) -> list[Hold]:
    """The legal holds that keep a record's process: on one of its records (archived or
    active), or on one's customer or category."""
    services = actor.services
    with services.read_sessions.begin() as session:
        source = ArchivistSource(session, services.store)  # as disposal and erasure see it
        members = [
            m for process in find_processes(source, [view.archive.record_id])
            for m in process.members
        ]
        return holds_covering(session, ((m.id, m.customer_id, m.category) for m in members))


def holds(actor: Actor) -> list[Hold]:
    """The legal holds in force."""
    with actor.services.read_sessions.begin() as session:
        return list_holds(session)


def archived_ever(actor: Actor, record_ids: list[str]) -> set[str]:
    """Those of the ids the archive knows, in any state: each has a record page."""
    return set(actor.services.store.entries(record_ids))


def restored_already(actor: Actor, record_ids: list[str]) -> set[str]:
    """Those of the ids whose archived record has been restored to the active CRM."""
    entries = actor.services.store.entries(record_ids)
    return {i for i, entry in entries.items() if entry.state == "restored"}


def place_hold(actor: Actor, scope: str, value: str, reason: str) -> Hold:
    """Place a legal hold, audited."""
    details = {"scope": scope, "reason": reason}
    with audited(actor, "hold_add", f"{scope}:{value}", details, wait=True):
        with actor.services.sessions.begin() as session:
            return add_hold(session, scope, value, reason, actor.now())


def hold_reaches_a_record(actor: Actor, scope: str, value: str) -> bool:
    """Whether a hold on this value names any record, archived or active, now."""
    return hold_reach.hold_reaches_a_record(actor.services, scope, value)


def lift_hold(actor: Actor, scope: str, value: str) -> None:
    """Lift a legal hold, audited."""
    with audited(actor, "hold_remove", f"{scope}:{value}", {"scope": scope}, wait=True):
        with actor.services.sessions.begin() as session:
            remove_hold(session, scope, value)


# --- web sessions -----------------------------------------------------------------------------


def open_web_session(
    services: Services, token_secret: str, now: datetime, lifetime: timedelta
) -> str | None:
    """Sign a browser in with an API token: a new session id for its cookie, or None."""
    with services.sessions.begin() as session:
        return start_web_session(session, token_secret, now, lifetime)


def web_session_token(services: Services, session_id: str, now: datetime) -> TokenInfo | None:
    """The token a browser's session id stands for, while session and token are live."""
    with services.read_sessions.begin() as session:
        return find_web_session(session, session_id, now)


def close_web_session(services: Services, session_id: str) -> None:
    """Sign a browser out: its session id stops working."""
    with services.sessions.begin() as session:
        end_web_session(session, session_id)


# --- export -----------------------------------------------------------------------------------


def export_filename(query: SearchQuery) -> str:
    """`archivist-export_<from>_<to>.csv`: the query's time range, or `all` when open."""

    def part(moment: datetime | None, end: bool) -> str:
        if moment is None:
            return "all"
        moment = moment.astimezone(UTC)
        whole_day = moment.time() == (time.max if end else time.min)
        return moment.strftime("%Y-%m-%d" if whole_day else "%Y-%m-%dT%H%M%SZ")

    field_part = "" if query.date_field == "created_at" else f"_{query.date_field}"
    return (
        f"archivist-export{field_part}_{part(query.date_from, False)}"
        f"_{part(query.date_to, True)}.csv"
    )


def iter_csv(hits: Iterator[SearchHit]) -> Iterator[bytes]:
    """The CSV bytes of the hits, a header row first, one chunk per ~64 KiB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for hit in hits:
        writer.writerow([getattr(hit, c) or "" for c in EXPORT_COLUMNS])
        if buffer.tell() >= 65536:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def export(actor: Actor, query: SearchQuery) -> Iterator[bytes]:
    """Stream every matching record as CSV.

    The query runs before this returns, so a bad one is an error response, not a broken
    stream. The audit entry, written when the stream ends, holds the rows and the SHA-256 of
    the bytes sent, with the outcome `aborted` if the client went away before the end.
    """
    stream = _export_stream(actor, query)
    first = next(stream)

    def chunks() -> Iterator[bytes]:
        yield first
        yield from stream  # closing this generator closes `stream` too

    return chunks()


def check_export(actor: Actor, query: SearchQuery) -> None:
    """Refuse a query the index cannot parse as the export would, without running the export
    (a `HEAD` of it): only a refusal is audited, as `bad_query`.

    :raises BadQuery: the query does not parse, or names what the index cannot search
    """
    try:
        next(iter_process_hits(actor.services, query), None)
    except BadQuery as e:
        audit_refused_query(actor, "export", query.q, e)
        raise


def _export_stream(actor: Actor, query: SearchQuery) -> Iterator[bytes]:
    digest = hashlib.sha256()
    size = 0
    with audited(actor, "export", query.q, describe_query(query), wait=True) as entry:
        counter = _Counter(iter_process_hits(actor.services, query))
        next_check = time_module.monotonic() + actor.recheck_seconds
        rows = 0  # in the chunks handed on (the counter is a chunk ahead)
        made = True  # whether the audit entry describes what was sent
        try:
            for chunk in iter_csv(iter(counter)):
                if time_module.monotonic() >= next_check:
                    if not actor.still_allowed():
                        raise ExportRevoked(f"token {actor.name!r} was revoked, or its browser "
                                            "signed out, during the export")
                    next_check = time_module.monotonic() + actor.recheck_seconds
                digest.update(chunk)
                size += len(chunk)
                rows = counter.count
                yield chunk
        except GeneratorExit:
            entry.outcome = "aborted"
            raise
        except BaseException:
            # Refused before a byte was made (a query the index cannot parse): no rows, size
            # or hash, which would pass for an empty file sent.
            made = size > 0
            raise
        else:
            made = True
        finally:
            if made:
                entry.details.update(rows=rows, bytes=size, sha256=digest.hexdigest())


class ExportRevoked(Exception):
    """The token of an export under way was revoked (or the browser's session ended). Raised
    out of the stream, so the server
    breaks the connection off: the client sees a download cut short, not a shorter CSV that
    looks whole."""

    code = "revoked"  # the audit entry's outcome


def export_checksum(actor: Actor, query: SearchQuery) -> ExportChecksum:
    """The SHA-256 of what `export` sends for the same query (computed again, not stored)."""
    details = describe_query(query)
    details["checksum_only"] = True
    with audited(actor, "export", query.q, details, wait=False) as entry:
        digest = hashlib.sha256()
        counter = _Counter(iter_process_hits(actor.services, query))
        size = 0
        for chunk in iter_csv(iter(counter)):
            digest.update(chunk)
            size += len(chunk)
        entry.details.update(rows=counter.count, bytes=size, sha256=digest.hexdigest())
    return ExportChecksum(digest.hexdigest(), counter.count, size, export_filename(query))


class _Counter:
    """Counts the items that pass through an iterator."""

    def __init__(self, items: Iterator[SearchHit]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[SearchHit]:
        for item in self._items:
            self.count += 1
            yield item
