"""`archivist verify`: the store's checksums and chain, index agreement, the audit chain."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect

from archive_store import ArchiveStore, Problem
from archivist.active_db import AuditEntry
from archivist.audit import iter_chain_problems
from indexer.errors import REBUILD_HINT, IndexMissing, IndexUnavailable
from indexer.jobs.indexing import (
    MISSING_FROM_INDEX,
    NEVER_ARCHIVED,
    STILL_IN_INDEX,
    check_index_agreement,
)
from indexer.search import SearchEngine
from indexer.services import Services, search_index_exists


@dataclass(frozen=True)
class VerifyResult:
    """Every problem found, and how much was checked."""

    problems: list[Problem]
    records: int
    waiting_for_index: int = 0
    unsettled_moves: int = 0

    def damaged_ids(self) -> list[str]:
        """The distinct record ids named by a problem, sorted."""
        return sorted({p.record_id for p in self.problems if p.record_id is not None})

    def searchable_ids(self) -> list[str]:
        """The distinct record ids the index holds though the archive does not hold them as
        archived (restored, disposed of, erased, or never archived), sorted."""
        return sorted({
            p.record_id for p in self.problems
            if p.record_id is not None and p.reason.endswith((STILL_IN_INDEX, NEVER_ARCHIVED))
        })

    def missing_ids(self) -> list[str]:
        """The distinct record ids named by any other problem (damaged in the store, or
        missing from it or from the index), sorted."""
        return sorted({
            p.record_id for p in self.problems
            if p.record_id is not None
            and not p.reason.endswith((STILL_IN_INDEX, NEVER_ARCHIVED))
        })

    def summary(self) -> str:
        """One line for people."""
        lag = []
        if self.waiting_for_index:
            records = "record waits" if self.waiting_for_index == 1 else "records wait"
            lag.append(
                f"{self.waiting_for_index} {records} for index catch-up (search does not "
                "show their latest state yet; `archivist index` or the next job run applies it)"
            )
        if self.unsettled_moves:
            moves = "move" if self.unsettled_moves == 1 else "moves"
            lag.append(
                f"{self.unsettled_moves} {moves} an earlier run left unfinished (the next job "
                "run settles them)"
            )
        waiting = "".join(f"; {item}" for item in lag)
        if not self.problems:
            return f"ok: {_records(self.records)} checked, no problems{waiting}"
        damaged = len(self.damaged_ids())
        where = f" in {_records(damaged)}" if damaged else ""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        return f"{count} {noun}{where} ({_records(self.records)} checked){waiting}"


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"


def verify_all(services: Services) -> VerifyResult:
    """Check the archive store end to end, index agreement, and the audit log's hash chain."""
    problems = services.store.verify()
    waiting = 0
    indexed = services.store.counts()["indexed"]
    if search_index_exists(services.config) or not indexed:
        index_problems, waiting = check_index(services.store, services.index)
        problems.extend(index_problems)
    else:  # not opened: that would make an empty index, which a server would then search
        problems.append(Problem(None, None, (
            f"the index is missing: there is no index in {services.config.index_dir}, yet "
            f"{_records(indexed)} were indexed (a folder deleted, or a volume not mounted); "
            "mount or restore it, or `archivist index --rebuild` rebuilds it from the archive"
        )))
    problems.extend(verify_audit_log(services))
    counts = services.store.counts()
    records = counts["archived"] + counts["restored"] + counts["purged"] + counts["erased"]
    return VerifyResult(problems, records, waiting, counts["pending"])


def describe_unreadable_index(error: Exception) -> str:
    """The one line `verify` gives for an index that cannot be read: missing or damaged, and
    how to make it again (the archive itself is fine), unless the error says so already (the
    check of the index's files does)."""
    if isinstance(error, IndexMissing):
        said = f"the index is missing ({error})"
    else:
        said = f"the index is damaged ({type(error).__name__}: {error})"
    return said if "archivist index --rebuild" in str(error) else f"{said}; {REBUILD_HINT}"


def _damaged(damage: list[str]) -> str:
    """The line for what `SearchEngine.find_damage` found."""
    return f"the index is damaged: {'; '.join(damage)}; {REBUILD_HINT}"


def require_readable_index(index: SearchEngine) -> None:
    """Refuse, before a job moves anything, an index whose files are missing or damaged: the
    records it moved could not be indexed (searches would miss them until a rebuild).

    :param index: the installation's search engine
    :raises IndexUnavailable: what `verify` says of it, in one line
    """
    try:
        # as `verify` looks first; it reads the files only (searchers opened here would keep
        # the generation they read from being freed by a rebuild, in the worker for a day)
        damage = index.find_damage()
    except Exception as e:  # whatever reading it raised (Whoosh's own errors included)
        raise IndexUnavailable(describe_unreadable_index(e)) from None
    if damage:
        raise IndexUnavailable(_damaged(damage))


def check_index(store: ArchiveStore, index: SearchEngine) -> tuple[list[Problem], int]:
    """The index's agreement with the catalog and its fitness to answer every query; a
    missing or damaged index is one problem, and so is one built by an earlier version.

    Every id the index lacks is named only while the rest of it is sound: an index that cannot
    be read, or that lacks every record it should hold, is one line saying so (the archive
    itself is fine, and `archivist index --rebuild` builds the index again from it).
    """
    try:
        damage = index.find_damage()
        if damage:
            return [Problem(None, None, _damaged(damage))], 0
        outdated = index.outdated()
        problems, waiting = check_index_agreement(store, index)
        if outdated is not None:
            problems.insert(0, Problem(None, None, f"the index {outdated}; {REBUILD_HINT}"))
    except Exception as e:  # whatever reading it raised (Whoosh's own errors included)
        return [Problem(None, None, describe_unreadable_index(e))], 0
    missing = sum(1 for p in problems if p.reason == MISSING_FROM_INDEX)
    if missing > 1 and missing == store.counts()["indexed"]:
        others = [p for p in problems if p.reason != MISSING_FROM_INDEX]
        line = (
            f"the index is missing: none of the {missing} records it should hold is in it; "
            f"{REBUILD_HINT}"
        )
        return [Problem(None, None, line), *others], waiting
    return problems, waiting


def verify_audit_log(services: Services) -> list[Problem]:
    """The breaks in the audit log's hash chain: an edited, inserted or deleted entry."""
    if not inspect(services.engine).has_table(AuditEntry.__tablename__):
        return []  # an installation from before the audit log: nothing to check yet
    with services.sessions.begin() as session:
        return [Problem(None, None, reason) for reason in iter_chain_problems(session)]
