"""`archivist verify`: the store's checksums and chain, and (once indexed) index agreement."""

from __future__ import annotations

from dataclasses import dataclass

from archive_store import Problem
from indexer.services import Services


@dataclass(frozen=True)
class VerifyResult:
    """Every problem found, and how much was checked."""

    problems: list[Problem]
    records: int

    def damaged_ids(self) -> list[str]:
        """The distinct record ids named by a problem, sorted."""
        return sorted({p.record_id for p in self.problems if p.record_id is not None})

    def summary(self) -> str:
        """One line for people."""
        if not self.problems:
            return f"ok: {self.records} records checked, no problems"
        return (
            f"{len(self.problems)} problems in {len(self.damaged_ids())} records "
            f"({self.records} records checked)"
        )


def verify_all(services: Services) -> VerifyResult:
    """Check the archive store end to end."""
    problems = services.store.verify()
    counts = services.store.counts()
    return VerifyResult(problems, counts["archived"] + counts["restored"] + counts["purged"])
