"""The audit log: who searched, read, exported, restored, held or disposed what, and when.

Append-only and hash chained: each entry stores the hash of the entry before it and its own
hash over its content, so editing or deleting an entry breaks the chain (`iter_chain_problems`).
One change is allowed: an erasure blanks the target and details of the entries whose query text
named the erased customer (`blank_entries`), keeping their hashes, and a later entry of the
chain lists them (`BLANKED_KEY` in its details); a blanked entry no entry lists is a break.
An appender reads the head and inserts `seq = head + 1` in one transaction; on SQLite that
transaction holds the write lock (BEGIN IMMEDIATE), elsewhere a concurrent appender collides on
the primary key and retries, so the chain never forks.

`AuditWriter` batches appends from many request threads into one transaction (group commit) on
a background thread; a caller either waits until its entry is committed or hands it over and
goes on (see `record`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from archivist.active_db import AuditEntry, take_turns

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
ACTIONS = (
    "search",
    "read",
    "export",
    "restore",
    "hold_add",
    "hold_remove",
    "dispose",
    "backup",
    "recover",
    "erase",
    "denied",  # a request its token's role does not allow (outcome `forbidden`)
)
_APPEND_TRIES = 5
_HEAD_LOCK_KEY = 0x4152_4348_4155_4454  # PostgreSQL advisory lock of the chain's head
BLANKED_TARGET = "(erased)"
BLANKED_DETAILS = '{"erased":true}'  # canonical_details({"erased": True})
BLANKED_KEY = "audit_blanked"  # in an entry's details: the seqs of the entries it blanked
# ... and beside them, by seq, the hash of what each blanked entry keeps (`kept_fields_hash`)
KEPT_KEY = "audit_blanked_kept"


@dataclass(frozen=True)
class AuditEvent:
    """One thing to record: who did what to which target, with what outcome."""

    at: datetime
    actor: str
    action: str
    target: str
    outcome: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    """One stored entry of the audit log."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]


@dataclass(frozen=True)
class AuditFilter:
    """What `list_audit` selects: a time range (inclusive), an actor, an action, a page."""

    date_from: datetime | None = None
    date_to: datetime | None = None
    actor: str | None = None
    action: str | None = None
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class AuditPage:
    """One page of audit entries, newest first, and how many match in all."""

    total: int
    page: int
    per_page: int
    entries: list[AuditRecord]


def audit_outcome(error: BaseException) -> str:
    """The outcome an audit entry gives an action that failed: the code of one of Archivist's
    own errors (`not_found`, `on_hold`, ...), else `error`. A database library's codes mean
    nothing to an auditor, and some are None, which the log cannot hold."""
    code = getattr(error, "code", None)
    if isinstance(error, SQLAlchemyError) or not isinstance(code, str) or not code:
        return "error"
    return code


def canonical_details(details: dict[str, Any]) -> str:
    """The JSON text an entry's details are stored (and hashed) as."""
    return json.dumps(details, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def compute_entry_hash(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    """The SHA-256 over an entry's content and the hash of the entry before it."""
    content = [
        seq,
        at.astimezone(UTC).isoformat(timespec="microseconds"),
        actor,
        action,
        target,
        outcome,
        details,
        prev_hash,
    ]
    canonical = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def kept_fields_hash(
    seq: int, at: datetime, actor: str, action: str, outcome: str, entry_hash: str
) -> str:
    """The SHA-256 over what a blanked entry keeps. Its own hash covers the text it no longer
    has; the erasure that blanks it lists this one, so the time, actor, action and outcome it
    kept stay checked."""
    content = [seq, at.astimezone(UTC).isoformat(timespec="microseconds"), actor, action,
               outcome, entry_hash]
    canonical = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def append_audit(session: Session, events: Sequence[AuditEvent]) -> list[int]:
    """Append events at the head of the chain, in the caller's transaction; returns their seqs.

    On PostgreSQL appenders take turns on a transaction-scoped advisory lock before they read
    the head: under READ COMMITTED, every process appending at once (each server worker, the
    CLI, the worker) read the same head, and all but one failed on its seq, retried and, with
    enough of them, gave up. SQLite's write lock already makes them take turns.
    """
    take_turns(session, _HEAD_LOCK_KEY)
    head = session.execute(
        select(AuditEntry.seq, AuditEntry.entry_hash).order_by(AuditEntry.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (0, GENESIS_HASH) if head is None else (head[0], head[1])
    seqs: list[int] = []
    for event in events:
        seq += 1
        at = event.at.astimezone(UTC)
        details = canonical_details(event.details)
        entry_hash = compute_entry_hash(
            seq, at, event.actor, event.action, event.target, event.outcome, details, prev_hash
        )
        session.add(
            AuditEntry(
                seq=seq,
                at=at,
                actor=event.actor,
                action=event.action,
                target=event.target,
                outcome=event.outcome,
                details=details,
                prev_hash=prev_hash,
                entry_hash=entry_hash,
            )
        )
        seqs.append(seq)
        prev_hash = entry_hash
    session.flush()
    return seqs


def write_audit(sessions: sessionmaker[Session], events: Sequence[AuditEvent]) -> list[int]:
    """Append events in a transaction of their own, retrying when another appender won the race."""
    for attempt in range(_APPEND_TRIES):
        try:
            with sessions.begin() as session:
                return append_audit(session, events)
        except (IntegrityError, OperationalError):
            if attempt == _APPEND_TRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def list_audit(session: Session, selection: AuditFilter) -> AuditPage:
    """One page of the entries that match the filter, newest first."""
    conditions: list[ColumnElement[bool]] = []
    if selection.date_from is not None:
        conditions.append(AuditEntry.at >= selection.date_from)
    if selection.date_to is not None:
        conditions.append(AuditEntry.at <= selection.date_to)
    if selection.actor is not None:
        conditions.append(AuditEntry.actor == selection.actor)
    if selection.action is not None:
        conditions.append(AuditEntry.action == selection.action)
    total = session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions)) or 0
    rows = session.scalars(
        select(AuditEntry)
        .where(*conditions)
        .order_by(AuditEntry.seq.desc())
        .offset((selection.page - 1) * selection.per_page)
        .limit(selection.per_page)
    )
    entries = [
        AuditRecord(r.seq, r.at, r.actor, r.action, r.target, r.outcome, json.loads(r.details))
        for r in rows
    ]
    return AuditPage(total, selection.page, selection.per_page, entries)


def iter_chain_problems(session: Session, batch_size: int = 1000) -> Iterator[str]:
    """Yield one line per break in the chain: an edited, inserted or deleted entry.

    A blanked entry (see `blank_entries`) cannot be rehashed, as its content is gone: it must
    still be linked by its hashes, and a later entry must list it as blanked.
    """
    expected_seq, prev_hash = 1, GENESIS_HASH
    last = 0
    blanked: dict[int, str] = {}  # seq -> the hash of what it kept
    listed: set[int] = set()
    listed_kept: dict[int, str] = {}
    while True:
        rows = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.seq > last)
                .order_by(AuditEntry.seq)
                .limit(batch_size)
            )
        )
        if not rows:
            break
        for r in rows:
            if r.seq != expected_seq:
                yield f"audit log: entries {expected_seq}..{r.seq - 1} are missing"
            if r.prev_hash != prev_hash:
                yield f"audit log: entry {r.seq} does not follow the entry before it"
            if r.target == BLANKED_TARGET and r.details == BLANKED_DETAILS:
                blanked[r.seq] = kept_fields_hash(
                    r.seq, r.at, r.actor, r.action, r.outcome, r.entry_hash
                )
            else:
                recomputed = compute_entry_hash(
                    r.seq, r.at, r.actor, r.action, r.target, r.outcome, r.details, r.prev_hash
                )
                if recomputed != r.entry_hash:
                    yield f"audit log: entry {r.seq} was changed after it was written"
                if BLANKED_KEY in r.details:
                    details = json.loads(r.details)
                    seqs = details.get(BLANKED_KEY)
                    if isinstance(seqs, list):
                        listed.update(s for s in seqs if isinstance(s, int) and s < r.seq)
                    kept = details.get(KEPT_KEY)  # (erasures before it was listed have none)
                    if isinstance(kept, dict):
                        listed_kept.update(
                            (int(s), h) for s, h in kept.items() if s.isdigit() and int(s) < r.seq
                        )
            expected_seq, prev_hash = r.seq + 1, r.entry_hash
        last = rows[-1].seq
    for seq, kept_hash in blanked.items():
        if seq not in listed:
            yield f"audit log: entry {seq} was blanked, and no erasure lists it"
        elif seq in listed_kept and listed_kept[seq] != kept_hash:
            yield f"audit log: entry {seq} was changed after it was blanked"


def blank_entries(session: Session, entries: Iterable[tuple[int, str]]) -> list[int]:
    """Blank the target and details of entries (an erasure's), keeping their hashes.

    An entry is blanked only if it still has the hash it was listed with: a log recovered from
    an older backup may hold other entries under the same seqs. Returns the seqs blanked now
    (the caller lists them in an entry of its own, in the same transaction).

    :param session: the caller's transaction
    :param entries: (seq, entry_hash) of each entry to blank
    """
    wanted = dict(entries)
    done: list[int] = []
    seqs = sorted(wanted)
    for start in range(0, len(seqs), 500):
        chunk = seqs[start : start + 500]
        rows = session.execute(
            select(AuditEntry.seq, AuditEntry.entry_hash, AuditEntry.details).where(
                AuditEntry.seq.in_(chunk)
            )
        ).all()
        match = [
            seq for seq, entry_hash, details in rows
            if wanted[seq] == entry_hash and details != BLANKED_DETAILS
        ]
        if match:
            session.execute(
                update(AuditEntry)
                .where(AuditEntry.seq.in_(match))
                .values(target=BLANKED_TARGET, details=BLANKED_DETAILS)
            )
            done.extend(match)
    return sorted(done)


def write_blanking(
    sessions: sessionmaker[Session],
    entries: Sequence[tuple[int, str]],
    at: datetime,
    actor: str,
    target: str,
) -> list[int]:
    """Blank entries and list them in a new `erase` entry, in one transaction (retried like
    `write_audit`); returns the seqs blanked (none: nothing is appended).

    :param sessions: the active database's sessions
    :param entries: (seq, entry_hash) of each entry to blank
    :param at: when
    :param actor: who erases
    :param target: the erasure's audit target
    """
    if not entries:
        return []
    for attempt in range(_APPEND_TRIES):
        try:
            with sessions.begin() as session:
                blanked = blank_entries(session, entries)
                if blanked:
                    kept = {
                        str(row.seq): kept_fields_hash(
                            row.seq, row.at, row.actor, row.action, row.outcome, row.entry_hash
                        )
                        for start in range(0, len(blanked), 500)
                        for row in session.scalars(
                            select(AuditEntry).where(
                                AuditEntry.seq.in_(blanked[start : start + 500])
                            )
                        )
                    }
                    details = {BLANKED_KEY: blanked, KEPT_KEY: kept}
                    event = AuditEvent(at, actor, "erase", target, "ok", details)
                    append_audit(session, [event])
                return blanked
        except (IntegrityError, OperationalError):
            if attempt == _APPEND_TRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def audit_head(session: Session) -> tuple[int, str]:
    """The last entry's seq and hash (0 and the genesis hash for an empty log)."""
    head = session.execute(
        select(AuditEntry.seq, AuditEntry.entry_hash).order_by(AuditEntry.seq.desc()).limit(1)
    ).first()
    return (0, GENESIS_HASH) if head is None else (head[0], head[1])


class _Pending:
    __slots__ = ("done", "error", "event", "waited")

    def __init__(self, event: AuditEvent | None, waited: bool = False) -> None:
        self.event = event
        self.waited = waited  # a caller waits for it: told of a failure, not kept to retry
        self.done = threading.Event()
        self.error: BaseException | None = None


class AuditWriter:
    """Appends events from many threads through one background thread, in batches.

    An entry nobody waits for (a search's) that the database cannot take for now (down,
    unreachable, locked past its timeout) is kept and written once it can, in its order; the
    writer tries again after a pause that grows to `RETRY_MAX_SECONDS`. Past `max_kept`
    entries kept so, the oldest are given up, each logged.
    """

    RETRY_MAX_SECONDS = 5.0

    def __init__(
        self, sessions: sessionmaker[Session], max_batch: int = 500, max_kept: int = 100_000
    ) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._max_kept = max_kept
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def record(self, event: AuditEvent, *, wait: bool = True) -> None:
        """Queue an event; with `wait`, return once it is committed (or raise why it was not).

        Without `wait` the caller does not wait for the database (an archive batch may hold
        SQLite's write lock for a while); the entry is committed moments later, and `flush`
        or `close` wait for it.
        """
        pending = _Pending(event, waited=wait)
        self._submit(pending)
        if wait:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error

    def flush(self) -> None:
        """Wait until everything queued so far is committed, or the database could not take
        it for now (what the caller reads next then fails for the same reason)."""
        marker = _Pending(None)
        self._submit(marker)
        marker.done.wait()

    def close(self) -> None:
        """Commit what is queued and stop the background thread (what the database still
        cannot take then is given up, each entry logged)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _submit(self, pending: _Pending) -> None:
        with self._cond:
            if self._closed:
                self._write([pending], last_try=True)  # after close: in the caller's thread
                return
            self._queue.append(pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        pause = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                # The database could not take the last batch: pause (new entries do not cut
                # it short, or every request would try the database again at once).
                resume = time.monotonic() + pause
                while not self._closed and (left := resume - time.monotonic()) > 0:
                    self._cond.wait(left)
                if not self._queue:
                    return
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                last_try = self._closed
            kept = self._write(batch, last_try)
            pause = min(self.RETRY_MAX_SECONDS, max(0.25, pause * 2)) if kept else 0.0
            if kept:
                with self._cond:
                    self._queue[:0] = kept
                    self._give_up_past(self._max_kept)

    def _give_up_past(self, limit: int) -> None:
        """Give up the oldest entries kept past `limit` (the condition's lock held)."""
        waiting = [p for p in self._queue if p.event is not None and not p.waited]
        given_up = {id(p) for p in waiting[: max(0, len(waiting) - limit)]}
        if given_up:
            for pending in waiting[: len(given_up)]:
                self._lost(pending, "too many entries wait for the database")
            self._queue = [p for p in self._queue if id(p) not in given_up]

    def _write(self, batch: list[_Pending], last_try: bool) -> list[_Pending]:
        """Write the batch; returns the entries to try again (the database unavailable)."""
        events = [p.event for p in batch if p.event is not None]
        try:
            if events:
                write_audit(self._sessions, events)
        except OperationalError as e:  # unavailable for now: keep what nobody waits for
            kept = [p for p in batch if p.event is not None and not p.waited]
            if last_try:
                for p in kept:
                    self._lost(p, str(e.orig or e))
                kept = []
            for p in batch:  # a waiting caller is told; a flush returns
                if p.waited:
                    p.error = e
                if not any(p is k for k in kept):
                    p.done.set()
            return kept
        except BaseException:  # one at a time, so that one entry the database refuses
            for p in batch:    # takes no other with it
                self._write_one(p)
        for p in batch:
            p.done.set()
        return []

    def _lost(self, pending: _Pending, why: str) -> None:
        assert pending.event is not None
        log.error("an audit entry was not written (%s %s %s at %s): %s", pending.event.actor,
                  pending.event.action, pending.event.target, pending.event.at.isoformat(), why)
        pending.done.set()

    def _write_one(self, pending: _Pending) -> None:
        if pending.event is None:
            return
        try:
            write_audit(self._sessions, [pending.event])
        except BaseException as e:  # handed to the waiting caller; never kills the thread
            log.exception("could not write an audit entry (%s %s)",
                          pending.event.actor, pending.event.action)
            pending.error = e
