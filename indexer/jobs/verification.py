"""`archivist verify`: the store's checksums and chain, index agreement, the audit chain."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect

from archive_store import Problem
from archivist.active_db import AuditEntry
from archivist.audit import iter_chain_problems
from indexer.jobs.indexing import check_index_agreement
from indexer.services import Services


@dataclass(frozen=True)
class VerifyResult:
    """Every problem found, and how much was checked."""

    problems: list[Problem]
    records: int
    waiting_for_index: int = 0

    def damaged_ids(self) -> list[str]:
        """The distinct record ids named by a problem, sorted."""
        return sorted({p.record_id for p in self.problems if p.record_id is not None})

    def summary(self) -> str:
        """One line for people."""
        waiting = (
            f"; {self.waiting_for_index} changes wait for index catch-up"
            if self.waiting_for_index
            else ""
        )
        if not self.problems:
            return f"ok: {self.records} records checked, no problems{waiting}"
        return (
            f"{len(self.problems)} problems in {len(self.damaged_ids())} records "
            f"({self.records} records checked){waiting}"
        )


def verify_all(services: Services) -> VerifyResult:
    """Check the archive store end to end, index agreement, and the audit log's hash chain."""
    problems = services.store.verify()
    index_problems, waiting = check_index_agreement(services.store, services.index)
    problems.extend(index_problems)
    problems.extend(verify_audit_log(services))
    counts = services.store.counts()
    records = counts["archived"] + counts["restored"] + counts["purged"]
    return VerifyResult(problems, records, waiting)


def verify_audit_log(services: Services) -> list[Problem]:
    """The breaks in the audit log's hash chain: an edited, inserted or deleted entry."""
    if not inspect(services.engine).has_table(AuditEntry.__tablename__):
        return []  # an installation from before the audit log: nothing to check yet
    with services.sessions.begin() as session:
        return [Problem(None, None, reason) for reason in iter_chain_problems(session)]
