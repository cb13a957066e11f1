"""What each endpoint does, as plain functions: call the library, record it in the audit log.

No HTTP here (that is `api.py`) and no record rules (those are in `indexer/` and `archivist/`);
each function runs one library operation under `audited`, which writes the audit entry with the
outcome: `ok`, or the error's code.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from archive_store import CatalogEntry, HistoryEvent
from archivist.active_db import utcnow
from archivist.audit import AuditEvent, AuditFilter, AuditPage, AuditWriter, list_audit
from archivist.holds import Hold, add_hold, list_holds, remove_hold
from archivist.records import Record
from indexer.jobs.restore import restore_record
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


@dataclass(frozen=True)
class RecordView:
    """A record as `GET /records/<id>` shows it; `record` is None once purged."""

    record: dict[str, Any] | None
    archive: CatalogEntry
    history: list[HistoryEvent]


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did."""

    id: str
    state: str = "restored"


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
        entry.outcome = getattr(e, "code", "error")
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
        ("from", None if query.date_from is None else query.date_from.isoformat()),
        ("to", None if query.date_to is None else query.date_to.isoformat()),
    ):
        if value:
            out[name] = value
    out["date_field"] = query.date_field
    return out


def search(actor: Actor, query: SearchQuery) -> SearchPage:
    """Run a search; the audit entry holds the query, its filters and the total."""
    details = describe_query(query)
    details.update(sort=query.sort, page=query.page, per_page=query.per_page)
    # Not waited for: a search should not queue behind an archive batch's write lock.
    with audited(actor, "search", query.q, details, wait=False) as entry:
        page = actor.services.index.search(query)
        entry.details["total"] = page.total
    return page


def read_record(actor: Actor, record_id: str) -> RecordView:
    """A record with its archive state and history."""
    store = actor.services.store
    with audited(actor, "read", record_id, {}, wait=False) as entry:
        info = store.info(record_id)
        record = None if info.state == "purged" else store.get(record_id)
        entry.details["state"] = info.state
        return RecordView(record, info, store.history(record_id))


def restore(actor: Actor, record_id: str) -> RestoreResult:
    """One-click restore: back to the active database, out of search; waits for the audit entry."""
    services = actor.services
    # An admin waits, and a restore is a few milliseconds of work: this process's searches
    # pause meanwhile (for up to a limit, see Turns.urgent) rather than share the core with it.
    with services.index.urgent(), audited(actor, "restore", record_id, {}, wait=True):
        record: Record = restore_record(
            services.sessions, services.store, services.index, record_id, actor.name, actor.now()
        )
    return RestoreResult(record.id)


def stats(actor: Actor) -> dict[str, Any]:
    """The counts of `/stats`."""
    return collect_stats(actor.services)


def read_audit(actor: Actor, selection: AuditFilter) -> AuditPage:
    """One page of the audit log (everything recorded before this call included)."""
    actor.audit.flush()
    with actor.services.read_sessions.begin() as session:
        return list_audit(session, selection)


def holds(actor: Actor) -> list[Hold]:
    """The legal holds in force."""
    with actor.services.read_sessions.begin() as session:
        return list_holds(session)


def place_hold(actor: Actor, scope: str, value: str, reason: str) -> Hold:
    """Place a legal hold, audited."""
    details = {"scope": scope, "reason": reason}
    with audited(actor, "hold_add", f"{scope}:{value}", details, wait=True):
        with actor.services.sessions.begin() as session:
            return add_hold(session, scope, value, reason, actor.now())


def lift_hold(actor: Actor, scope: str, value: str) -> None:
    """Lift a legal hold, audited."""
    with audited(actor, "hold_remove", f"{scope}:{value}", {"scope": scope}, wait=True):
        with actor.services.sessions.begin() as session:
            remove_hold(session, scope, value)


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


def _export_stream(actor: Actor, query: SearchQuery) -> Iterator[bytes]:
    digest = hashlib.sha256()
    size = 0
    with audited(actor, "export", query.q, describe_query(query), wait=True) as entry:
        counter = _Counter(actor.services.index.iter_hits(query))
        try:
            for chunk in iter_csv(iter(counter)):
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        except GeneratorExit:
            entry.outcome = "aborted"
            raise
        finally:
            entry.details.update(rows=counter.count, bytes=size, sha256=digest.hexdigest())


def export_checksum(actor: Actor, query: SearchQuery) -> ExportChecksum:
    """The SHA-256 of what `export` sends for the same query (computed again, not stored)."""
    details = describe_query(query)
    details["checksum_only"] = True
    with audited(actor, "export", query.q, details, wait=False) as entry:
        digest = hashlib.sha256()
        counter = _Counter(actor.services.index.iter_hits(query))
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
