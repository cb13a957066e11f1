"""Erasure on request (GDPR/CCPA): a customer's or a record's archived text, gone for good.

`erase_records` erases every archived version of the records (archived, restored, earlier
versions of a re-archived record) from every file Archivist keeps: the store's segments are
rewritten without them and the customer's data key is destroyed, the index segments that held
them are rewritten, and SQLite's free pages and write-ahead logs are wiped. Each record keeps an
`erased` event with its hash, so `verify` still passes. Refused, erasing nothing, when a legal
hold covers any of them.

Searches and exports whose audited query text named the erased records are blanked in the
audit log (see `erasure_audit`), and an `erase` entry lists them.

Backups taken before an erasure still hold the erased records. So each erasure is first written
to the *erasure ledger*, a JSON Lines file beside the archive key file (`<key_file>.erasures`,
outside the archive folder and never part of a backup), holding ids and hashes only (of the
records, and of the audit entries to blank), and a `done` line once it finished. After a backup
is recovered, the recovery calls::

    apply_erasure_ledger(services: Services, at: datetime) -> int

which erases again every ledgered record the recovered files still hold (and blanks the ledgered
audit entries), and returns how many records. An erasure with no `done` line stopped half-way;
`finish_interrupted_erasures` (run by the next erasure and the next archive run) does the same for
it alone. Erasures hold a lock file beside the ledger, so a finisher never mistakes one under way
for one interrupted.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archive_store import ArchiveStore, ArchiveStoreError, CatalogEntry, RestoreInProgress
from archive_store.faults import crash_point
from archive_store.locks import ProcessLock
from archivist.active_db import ActiveRecord
from archivist.audit import AuditEvent, write_audit, write_blanking
from archivist.crm_ledger import remove_members
from archivist.crm_rows import CrmTables, count_customer_rows, count_record_rows
from archivist.holds import erase_hold_reasons, load_hold_set
from archivist.ledgers import append_entry, read_entries
from archivist.processes import find_processes, is_held
from indexer.errors import IndexerError, IndexUnavailable
from indexer.hold_reach import CHECK_THE_VALUE, no_record_with
from indexer.jobs.erasure_audit import NamingWords, entries_naming, holds_naming
from indexer.jobs.indexing import sync_index
from indexer.jobs.settling import reconcile_moves
from indexer.jobs.verification import describe_unreadable_index
from indexer.processes import ArchivistSource
from indexer.services import Services

log = logging.getLogger(__name__)
LEDGER_SUFFIX = ".erasures"
LEDGER_ACTOR = "erasure-ledger"  # who erases (and blanks) again what the ledger lists


class OnHold(IndexerError):
    """A legal hold covers a record the erasure would remove."""

    code = "on_hold"


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure removed (or, in a dry run, would remove)."""

    erased: int
    ids: list[str]
    active_remaining: int
    dry_run: bool
    hashes: list[str] = field(default_factory=list)  # each erased record's sha256, for audit
    audit_blanked: list[int] = field(default_factory=list)  # audit entries that named them
    # False when no record, in any state or active, has or had the customer: a typo, most likely
    known: bool = True
    hold_reasons: int = 0  # legal holds (on other records) whose reason named them: erased


def customer_hash(customer_id: str) -> str:
    """The SHA-256 of a customer id: how the ledger and the audit log name an erased customer.

    :param customer_id: the customer
    """
    return hashlib.sha256(customer_id.encode("utf-8")).hexdigest()


def nothing_to_erase(customer_id: str, dry_run: bool) -> str:
    """The warning for an erasure of a customer no record has or had (`ErasureReport.known`),
    worded as a hold's on a value that matches nothing.

    :param customer_id: the customer asked for
    :param dry_run: whether it was a dry run
    """
    outcome = "nothing would be erased" if dry_run else "nothing was erased"
    return (f"{no_record_with('customer', customer_id)} now or had it before, so {outcome}: "
            f"{CHECK_THE_VALUE}")


def ledger_path(key_file: Path) -> Path:
    """The erasure ledger beside the archive key file.

    :param key_file: `[archive] key_file`
    """
    return key_file.with_name(key_file.name + LEDGER_SUFFIX)


def erase_records(
    services: Services,
    *,
    customer_id: str | None = None,
    record_id: str | None = None,
    actor: str,
    at: datetime,
    dry_run: bool = False,
) -> ErasureReport:
    """Erase a customer's archived records, or one archived record, for good.

    :param services: the installation
    :param customer_id: erase every archived record of this customer
    :param record_id: or erase this one record (every archived version of it)
    :param actor: who erases (stamped on the `erased` events)
    :param at: when (aware, the real clock)
    :param dry_run: only say what would be erased
    :raises OnHold: a legal hold covers one of them; nothing is erased
    :raises RecordNotFound: `record_id` was never archived
    """
    if (customer_id is None) == (record_id is None):
        raise ValueError("give exactly one of customer_id and record_id")
    if dry_run:
        plan = _plan(services, customer_id, record_id)
        return ErasureReport(len(plan.ids), plan.ids, plan.active, True, plan.hashes,
                             known=plan.known)
    # refused before all else, and before the ledger asks for it to be finished later: an
    # archive folder it cannot write, an index it could not rewrite
    services.store.require_writable()
    try:
        services.index.check_readable()
    except IndexUnavailable as e:  # said as `verify` says it, with the way to mend it
        raise IndexUnavailable(describe_unreadable_index(e)) from None
    with _erasing(ledger_path(services.config.key_file)) as path:
        _finish_interrupted(services, path, at)  # first: it may erase some of these
        plan = _plan(services, customer_id, record_id)
        if any(entry.pending is not None for entry in plan.entries.values()):
            # a move a crash left unfinished (or one under way, which settling waits for)
            reconcile_moves(services, at)
            plan = _plan(services, customer_id, record_id)
        return _erase(services, plan, customer_id, record_id, actor, at, path)


@dataclass(frozen=True)
class _Plan:
    """What an erasure is to remove, once no hold stands in its way."""

    ids: list[str]
    entries: dict[str, CatalogEntry]
    shas: dict[str, str]  # the sha256 of each (`ArchiveStore.hashes`)
    active: int  # the records still in the active database (the CRM's to erase)
    purged: list[str] = field(default_factory=list)  # disposed of: their words may be indexed
    owner: str | None = None  # the customer whose active records are counted
    # every record of the owner's the catalog knows of, in any state: active records naming
    # no customer below one of them are the owner's too
    above: list[str] = field(default_factory=list)
    record_id: str | None = None  # the one record asked for, if one (archived once, or refused)

    @property
    def hashes(self) -> list[str]:
        return [self.shas[i] for i in self.ids if i in self.shas]

    @property
    def known(self) -> bool:
        """Whether any record, archived (in any state since) or active, is the target's."""
        return bool(self.record_id or self.ids or self.purged or self.above or self.active)


def _plan(services: Services, customer_id: str | None, record_id: str | None) -> _Plan:
    """The records to erase; raises `OnHold` if a legal hold covers any of them."""
    store = services.store
    if record_id is not None:
        info = store.info(record_id)  # RecordNotFound if never archived
        ids = [record_id] if info.state in ("archived", "restored") else []
        purged = [record_id] if info.state == "purged" else []
        owner = info.customer_id
        above = [record_id] if owner is not None else []
    else:
        ids = store.find_customer_records(customer_id or "")
        purged = store.find_customer_records(customer_id or "", ("purged",))
        owner = customer_id
        # archived below records of theirs erased before: the catalog forgot whose those were
        erased_before = _erased_before(services, customer_id or "")
        inherited = _unnamed_below(store, erased_before)
        ids = sorted(set(ids) | {e.record_id for e in inherited if e.state != "purged"})
        purged = sorted(set(purged) | {e.record_id for e in inherited if e.state == "purged"})
        above = sorted(set(ids) | set(purged) | set(erased_before))
    entries = store.entries(ids)
    with services.sessions.begin() as session:
        held = _first_held(session, store, entries, customer_id)
        if held is not None:
            raise OnHold(f"{held} is on legal hold; nothing was erased")
        active = _still_active(session, services.crm, owner, record_id, above)
    return _Plan(ids, entries, store.hashes(ids), active, purged, owner, above, record_id)


def _erased_before(services: Services, customer_id: str) -> list[str]:
    """The records earlier erasures of this customer erased (or were to erase), from the
    erasure ledger: the catalog forgets an erased record's customer."""
    wanted = customer_hash(customer_id)
    ledger = load_ledger(ledger_path(services.config.key_file))
    # An erasure's later lines carry its id alone; an earlier version wrote one line, no id.
    ids = {e["id"] for e in ledger if e.get("id") and e.get("customer_sha256") == wanted}
    return sorted({
        record_id for e in ledger
        if (e.get("id") in ids if e.get("id") else e.get("customer_sha256") == wanted)
        for record_id in [*(i for i, _sha in e.get("records", [])), *e.get("purged", [])]
    })


def _unnamed_below(store: ArchiveStore, record_ids: list[str]) -> list[CatalogEntry]:
    """The catalog's records below these that name no customer and are not erased, at any
    depth (through such records only): they are the customer of these records'.

    A record of a process archived after its customer was erased (a late reply to their
    case) names no customer, and its parent, erased, no longer names one to inherit from.
    """
    seen = set(record_ids)
    found: list[CatalogEntry] = []
    frontier = list(record_ids)
    while frontier:
        below = [
            e for e in store.child_entries(frontier)
            if e.customer_id is None and e.state != "erased" and e.record_id not in seen
        ]
        seen.update(e.record_id for e in below)
        found.extend(below)
        frontier = [e.record_id for e in below]
    return found


def _first_held(
    session: Session, store: ArchiveStore, entries: dict[str, CatalogEntry],
    customer_id: str | None,
) -> str | None:
    """What a legal hold covers among the records an erasure would remove (or the customer
    it names), or None: a record, the customer, or a process any of them belongs to."""
    holds = load_hold_set(session)
    held = sorted(
        e.record_id for e in entries.values()
        if holds.covers(e.record_id, e.customer_id, e.category)
    )
    if held:
        return held[0]
    if customer_id is not None and customer_id in holds.customer_ids:
        return f"customer {customer_id}"
    ids = sorted(entries)
    source = ArchivistSource(session, store)
    for process in find_processes(source, ids) if ids else []:
        if is_held(process, holds):  # a hold on any record of a process holds all of it
            return f"the process {process.root} (of {sorted(set(process.ids) & set(ids))[0]})"
    return None


def _still_active(
    session: Session,
    crm: CrmTables | None,
    owner: str | None,
    record_id: str | None,
    above: Collection[str] = (),
) -> int:
    """The customer's records (or the one record) in the active database: the CRM's to erase.
    With the CRM's own tables mapped, those are their rows. `above`: the customer's records
    the catalog knows of; the active records under them that name no customer are theirs."""
    if owner is not None:
        if crm is not None:
            return count_customer_rows(session, crm, owner, above)
        return len(_active_theirs(session, owner, above))
    if record_id is None:
        return 0
    if crm is not None:
        return count_record_rows(session, crm, record_id)
    return session.scalar(
        select(func.count()).select_from(ActiveRecord).where(ActiveRecord.id == record_id)
    ) or 0


def _active_theirs(session: Session, owner: str, above: Collection[str]) -> set[str]:
    """The ids of the active records naming the customer, and of those under them, or under
    one of `above` (theirs in the catalog), that name no customer (as the store counts)."""
    theirs = set(session.scalars(select(ActiveRecord.id).where(ActiveRecord.customer_id == owner)))
    frontier = sorted(theirs | set(above))
    while frontier:
        below: set[str] = set()
        for start in range(0, len(frontier), 500):
            below.update(session.scalars(select(ActiveRecord.id).where(
                ActiveRecord.parent_id.in_(frontier[start : start + 500]),
                ActiveRecord.customer_id.is_(None),
            )))
        frontier = sorted(below - theirs)
        theirs |= below
    return theirs


def _erase(
    services: Services,
    plan: _Plan,
    customer_id: str | None,
    record_id: str | None,
    actor: str,
    at: datetime,
    path: Path,
) -> ErasureReport:
    """The erasure itself, every step ledgered first (the caller holds the erasure lock)."""
    store, ids = services.store, plan.ids
    # Their words (of every readable version), for the audited queries naming them.
    # (the disposed-of ones too: a restore of theirs in the audit log is the person's)
    words = NamingWords(
        readable_records(store, ids), customer_id, [*ids, *plan.purged], services.index
    )
    with services.read_sessions.begin() as session:
        naming, looked = entries_naming(session, words)
        holds = holds_naming(session, words)
    # Ledger first: if anything below fails or the process dies, `finish_interrupted_erasures`
    # (the next erasure, archive run or index catch-up) and a recovery still do what was
    # asked for.
    erasure_id = uuid.uuid4().hex
    seq = store.last_seq()
    append_ledger(path, {
        "id": erasure_id,
        "at": at.isoformat(),
        "actor": actor,
        "seq": seq,  # what it finds is older: see `_older_than_the_erasure`
        "head": store.entry_hash_at(seq),
        "customer_sha256": customer_hash(customer_id) if customer_id is not None else None,
        "records": [[i, plan.shas[i]] for i in ids if i in plan.shas],
        # disposed of before: a later erasure of the customer finds what was archived below
        # them since, and a recovery blanks their events' reasons
        "purged": plan.purged,
        "audit": [[seq, entry_hash] for seq, entry_hash in naming],
        "holds": [[hold_id, reason] for hold_id, reason in holds],  # (id, reason's SHA-256)
    })
    try:
        erased = store.erase(ids, at, actor, customer_id=customer_id, reasons_of=plan.purged)
    except RestoreInProgress:
        # refused, nothing erased: nothing to finish, nor to erase again on a recovery
        append_ledger(path, {"done": erasure_id, "refused": RestoreInProgress.code})
        raise
    crash_point("erase.after_store")
    with services.read_sessions.begin() as session:  # again: a restore may have ended since
        active = _still_active(session, services.crm, plan.owner, record_id, plan.above)
    forget_erased_crm_rows(services, ids)
    # the disposed-of records too: their content left the store, not yet the index's files
    erase_from_index(services, [e.record_id for e in erased] + plan.purged)
    with services.read_sessions.begin() as session:  # searches audited meanwhile
        later, _ = entries_naming(session, words, looked)
    if later:
        append_ledger(path, {"id": erasure_id, "audit": [[seq, h] for seq, h in later]})
    blanked = write_blanking(
        services.sessions, naming + later, at, actor, audit_target(customer_id, record_id)
    )
    with services.sessions.begin() as session:
        hold_reasons = erase_hold_reasons(session, holds)
    wipe_free_pages(services)
    append_ledger(path, {"done": erasure_id})
    return ErasureReport(
        len(erased), [e.record_id for e in erased], active, False,
        [e.sha256 for e in erased], blanked, known=plan.known or bool(active),
        hold_reasons=hold_reasons,
    )


def readable_records(store: ArchiveStore, ids: list[str]) -> Iterator[dict[str, Any]]:
    """Every archived version of the records that can still be read (earlier versions of a
    re-archived record too), read 1,000 records at a time so that a large customer's are never
    all in memory at once; a damaged one is erased all the same, unread.

    :param store: the archive store
    :param ids: the records about to be erased
    """
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        try:
            yield from store.versions(chunk)
            continue
        except ArchiveStoreError:
            pass
        for record_id in chunk:
            try:
                yield from store.versions([record_id])
            except ArchiveStoreError:
                log.warning("record %s cannot be read; its words are not looked for in the "
                            "audit log", record_id)


def audit_details(report: ErasureReport, customer_id: str | None) -> dict[str, Any]:
    """What the audit log keeps of an erasure: counts and hashes, never content.

    :param report: the erasure's report
    :param customer_id: the customer erased, if any (kept as its hash)
    """
    details: dict[str, Any] = {
        "erased": report.erased,
        "active_remaining": report.active_remaining,
        "dry_run": report.dry_run,
        "sha256": report.hashes,
    }
    if customer_id is not None:
        details["customer_sha256"] = customer_hash(customer_id)
    if report.audit_blanked:
        details["audit_entries_blanked"] = len(report.audit_blanked)
    if report.hold_reasons:
        details["hold_reasons_erased"] = report.hold_reasons
    return details


def audit_target(customer_id: str | None, record_id: str | None) -> str:
    """The audit entry's target: the record id, or the customer by hash.

    :param customer_id: the customer erased, if any
    :param record_id: the record erased, if any
    """
    if customer_id is not None:
        return f"customer:{customer_hash(customer_id)}"
    return record_id or ""


def forget_erased_crm_rows(services: Services, record_ids: list[str]) -> None:
    """Take the erased ones of these records out of the ledger of rows that left the CRM's
    tables: they are in neither place on purpose, and a recovery must not count them lost."""
    erased = [i for i, e in services.store.entries(record_ids).items() if e.state == "erased"]
    with services.sessions.begin() as session:
        remove_members(session, erased)


def erase_from_index(services: Services, record_ids: list[str]) -> None:
    """Take records out of the index and rewrite the index segments that held them, then
    index again the records archived below them, whose process lost its root."""
    store = services.store
    with store.indexing():
        services.index.erase(record_ids)
        entries = store.entries(record_ids)
        store.mark_indexed((e.record_id, e.version, e.state) for e in entries.values())
    sync_index(store, services.index, bulk_min=0)  # no staging: one may be under way


def wipe_free_pages(services: Services) -> None:
    """Rewrite the embedded SQLite database so no free page or WAL frame keeps old rows.

    Archived records were deleted from the active table when they moved; SQLite leaves
    deleted rows' bytes in free pages until the file is rewritten. (A PostgreSQL database is
    the operator's to vacuum.)
    """
    engine = services.engine
    if engine.url.get_backend_name() != "sqlite" or not engine.url.database:
        return
    engine.dispose()  # pooled connections would keep old WAL frames in use
    try:
        conn = sqlite3.connect(engine.url.database, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("VACUUM")
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as e:  # say so; the next erasure, or a VACUUM by hand, retries
        log.warning("could not VACUUM the active database after erasure: %s", e)
        return
    if busy:
        log.warning("the active database's WAL is in use by another process: it is emptied "
                    "at that process's next checkpoint")


# The erasure ledger's lines, written whole or not at all (a full disk fails the erasure before
# it erases), and read back skipping a line a crash tore.
append_ledger = append_entry
load_ledger = read_entries


def _customer_ids_by_hash(store: ArchiveStore, hashes: set[str]) -> dict[str, str]:
    if not hashes:  # record erasures only: no need to read every customer id
        return {}
    return {
        customer_hash(c): c for c in store.iter_customer_ids() if customer_hash(c) in hashes
    }


def apply_erasure_ledger(services: Services, at: datetime) -> int:
    """Erase again, after a backup was recovered, every ledgered record it brought back.

    Called by `archivist backup recover` once the files are in place: the ledger lives beside
    the key file, outside what a backup holds, so it lists erasures made after the backup too.
    Returns how many records were erased again (0 when the backup was taken after them all).

    :param services: the recovered installation
    :param at: when (aware, the real clock)
    """
    ledger = load_ledger(ledger_path(services.config.key_file))
    skipped = _not_carried_out(ledger)  # (once: a ledger holds years of erasures)
    return _apply(services, [e for e in ledger if "done" not in e and
                             e.get("id") not in skipped], at)


def finish_interrupted_erasures(services: Services, at: datetime) -> int:
    """Finish each erasure the ledger lists as begun and not done: the process died (or
    failed) between its ledger line and its end, so its records may still be in the store or
    the index, or the audited searches naming them not blanked yet. Returns how many records
    it erased; reads the ledger only, and changes nothing, when every erasure finished. Run
    before every archive run and index catch-up (every minute in the worker, by default), so
    an erased customer's records do not stay searchable until the night's run.

    :param services: the installation
    :param at: when (aware, the real clock)
    """
    path = ledger_path(services.config.key_file)
    try:
        seen = path.stat()
    except FileNotFoundError:
        return 0
    # (called by every index catch-up: a ledger read whole once, and again only when it grew)
    if _ALL_DONE.get(path) == (seen.st_size, seen.st_mtime_ns):
        return 0
    if not _unfinished(load_ledger(path)):
        _ALL_DONE[path] = (seen.st_size, seen.st_mtime_ns)
        return 0
    with _erasing(path):  # waits for an erasure under way, whose line is not done yet
        return _finish_interrupted(services, path, at)


_ALL_DONE: dict[Path, tuple[int, int]] = {}  # ledger -> (size, mtime) when it had all done


def _what_was_asked(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """What the audit log keeps of an erasure that stopped half-way (its own entry was never
    written): who began it and when, and the hashes of what it was to erase (some of which it
    may have erased itself before it stopped)."""
    first = lines[0]
    asked: dict[str, Any] = {
        "begun_at": first.get("at"),
        "begun_by": first.get("actor"),  # (ledger lines older than this field: None)
        "sha256": [sha for line in lines for _rid, sha in line.get("records", [])],
    }
    if first.get("customer_sha256"):
        asked["customer_sha256"] = first["customer_sha256"]
    return asked


def _ledgered_target(lines: list[dict[str, Any]]) -> str:
    """The target an erasure's own audit entry would have had, from its ledger lines."""
    if lines[0].get("customer_sha256"):
        return f"customer:{lines[0]['customer_sha256']}"
    records = lines[0].get("records", [])
    return records[0][0] if len(records) == 1 else "ledger"


def _not_carried_out(ledger: list[dict[str, Any]]) -> set[str]:
    """The erasures that erased nothing: refused by a move under way once ledgered, or left
    unfinished over a hold placed since (the finisher found records of theirs still whole)."""
    return {e["done"] for e in ledger if "done" in e and (e.get("refused") or e.get("on_hold"))}


def _unfinished(ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = {e["done"] for e in ledger if "done" in e}
    return [e for e in ledger if e.get("id") and e["id"] not in done]


def _finish_interrupted(services: Services, path: Path, at: datetime) -> int:
    """`finish_interrupted_erasures`, with the erasure lock held."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for entry in _unfinished(load_ledger(path)):
        lines.setdefault(entry["id"], []).append(entry)
    total = 0
    for erasure_id, entries in lines.items():
        held = _held_since(services, entries)
        if held is not None:  # a hold placed since: it refuses the rest, as it would anew
            write_audit(services.sessions, [AuditEvent(
                at, LEDGER_ACTOR, "erase", "ledger", "on_hold",
                {"interrupted_erasure_not_finished": erasure_id, "held": held},
            )])
            append_ledger(path, {"done": erasure_id, "on_hold": True})
            log.warning("an interrupted erasure was not finished: %s is on legal hold", held)
            continue
        try:
            erased = _apply(services, entries, at)
        except RestoreInProgress as e:  # a restore under way: the next run tries again
            log.warning("an interrupted erasure waits for a restore to finish: %s", e)
            continue
        write_audit(services.sessions, [AuditEvent(
            at, LEDGER_ACTOR, "erase", _ledgered_target(entries), "ok",
            {"interrupted_erasure_finished": erasure_id, "erased": erased,
             **_what_was_asked(entries)},
        )])
        append_ledger(path, {"done": erasure_id})
        log.warning("finished an interrupted erasure: %d record(s) erased now", erased)
        total += erased
    return total


def _older_than_the_erasure(
    store: ArchiveStore, ids: list[str], customer_id: str | None, line: dict[str, Any]
) -> tuple[list[str], str | None]:
    """What an erasure ledgered at catalog entry `seq` may erase in this catalog: the versions
    it found, not one archived since (a record of the customer's archived later, an erased id
    archived again), which a backup taken after it holds. If the customer has one, their data
    key is a newer one than the erasure destroyed: it stays.

    Seqs tell only within the history the erasure saw: a store recovered from an older backup
    numbers its new entries again. So where this catalog does not hold the erasure's last entry
    (`head`), a version is older when it was archived before the erasure's time.
    """
    current = store.entries(ids)
    seq, head = line["seq"], line.get("head")
    if head is None or store.entry_hash_at(seq) == head:  # (lines without one: seqs)
        later = {i for i, e in current.items() if e.seq > seq}
    else:
        at = datetime.fromisoformat(line["at"])
        later = {i for i, e in current.items() if e.archived_at > at}
    if customer_id is not None and any(current[i].customer_id == customer_id for i in later):
        customer_id = None
    return [i for i in ids if i not in later], customer_id


@contextmanager
def _erasing(path: Path) -> Iterator[Path]:
    """Hold the erasure lock (beside the ledger): one erasure at a time across processes, so
    a finisher never takes an erasure under way for an interrupted one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = ProcessLock(path.with_name(path.name + ".lock"))
    try:
        with lock:
            yield path
    finally:
        lock.close()


def _targets(
    store: ArchiveStore, ledger: list[dict[str, Any]]
) -> list[tuple[list[str], str | None, list[str]]]:
    """For each ledger line, the records it still asks to erase in this store, the customer
    whose data key goes with them (None: the key stays) and the records disposed of whose
    events' reasons go too.

    A recovered store may hold a record in another state than the erasure found it in: one
    the line lists as disposed of may be archived or restored there (the backup was made
    before its disposal), and it is erased then as the records the line lists are; one the
    line lists as erased may be purged there, and then only its events' reasons are left to
    go. A version archived since the erasure stays whole, whatever the line lists it as.
    """
    by_hash = _customer_ids_by_hash(
        store, {e["customer_sha256"] for e in ledger if e.get("customer_sha256")}
    )
    targets = []
    for entry in ledger:
        ids = {record_id for record_id, _sha in entry.get("records", [])}
        ids.update(entry.get("purged", []))
        customer_id = by_hash.get(entry.get("customer_sha256") or "")
        if customer_id is not None:
            ids.update(store.find_customer_records(customer_id))
        wanted = sorted(ids)
        if entry.get("seq") is not None:  # (lines written before it was ledgered: all of them)
            wanted, customer_id = _older_than_the_erasure(store, wanted, customer_id, entry)
        states = {i: e.state for i, e in store.entries(wanted).items()}
        targets.append((
            [i for i in wanted if states.get(i) in ("archived", "restored")],
            customer_id,
            [i for i in wanted if states.get(i) == "purged"],
        ))
    return targets


def _held_since(services: Services, ledger: list[dict[str, Any]]) -> str | None:
    """What a legal hold placed since an interrupted erasure began covers among the records
    it would still erase, or None."""
    store = services.store
    for ids, customer_id, _purged in _targets(store, ledger):
        live = {i: e for i, e in store.entries(ids).items() if e.state in ("archived", "restored")}
        if not live:
            continue
        with services.read_sessions.begin() as session:
            held = _first_held(session, store, live, customer_id)
        if held is not None:
            return held
    return None


def _apply(services: Services, ledger: list[dict[str, Any]], at: datetime) -> int:
    """Do again what these ledger lines asked for, wherever it is not done yet: erase the
    records the store still holds, take them out of the index, blank the audit entries."""
    store = services.store
    erased_ids: list[str] = []
    purged_ids: list[str] = []
    for ids, customer_id, purged in _targets(store, ledger):
        if customer_id is not None:  # disposed of since the copy was made: out of its index
            purged_ids.extend(store.find_customer_records(customer_id, ("purged",)))
        if ids or customer_id is not None or purged:
            erased_ids.extend(
                e.record_id for e in store.erase(
                    ids, at, LEDGER_ACTOR, customer_id=customer_id, reasons_of=purged
                )
            )
    # The index may hold records erased earlier too (a later rebuild, a copy from elsewhere,
    # a process that died before it rewrote the index): rewrite whatever holds any of them,
    # but not an id archived again since, whose new version is searchable as it should be.
    ledgered = sorted({rid for e in ledger for rid, _sha in e.get("records", [])})
    forget_erased_crm_rows(services, sorted(set(ledgered) | set(erased_ids)))
    current = store.entries(ledgered)
    everything = [
        rid for rid in ledgered
        if rid not in current or current[rid].state not in ("archived", "restored")
    ] + purged_ids
    if everything:
        erase_from_index(services, everything)
    audit = [(seq, entry_hash) for e in ledger for seq, entry_hash in e.get("audit", [])]
    blanked = write_blanking(services.sessions, audit, at, LEDGER_ACTOR, "ledger")
    with services.sessions.begin() as session:  # (a recovered database's holds too)
        hold_reasons = erase_hold_reasons(
            session, [(hold_id, reason) for e in ledger for hold_id, reason in e.get("holds", [])]
        )
    if everything or blanked or hold_reasons:
        wipe_free_pages(services)
    return len(erased_ids)
