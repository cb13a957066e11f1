"""Value objects handed in and out of the archive store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ArchiveItem:
    """One record to archive, as the archiver hands it in."""

    record_id: str
    record: dict[str, Any]
    category: str
    customer_id: str | None
    updated_at: datetime
    parent_id: str | None = None


@dataclass(frozen=True)
class StoredEntry:
    """Where one record entry of the store lives, and the hash of its record."""

    seq: int
    record_id: str
    segment_id: int
    offset: int
    length: int
    sha256: str


@dataclass(frozen=True)
class CatalogEntry:
    """The catalog's current view of one record."""

    record_id: str
    state: str
    version: int
    segment_id: int
    archived_at: datetime
    restored_at: datetime | None
    purged_at: datetime | None
    category: str
    customer_id: str | None
    updated_at: datetime
    pending: str | None
    indexed: bool
    parent_id: str | None = None
    seq: int = 0  # the current version's entry: a version archived later has a larger one

    # The catalog keeps one time for a disposal and an erasure: each is named for what it was.
    @property
    def disposed_at(self) -> datetime | None:
        """When the record was disposed of (purged at the end of its retention), else None."""
        return self.purged_at if self.state == "purged" else None

    @property
    def erased_at(self) -> datetime | None:
        """When the record was erased on request, else None."""
        return self.purged_at if self.state == "erased" else None


@dataclass(frozen=True)
class ErasedRecord:
    """One record erasure removed: its id, its hash and the state it was in."""

    record_id: str
    sha256: str
    state: str


@dataclass(frozen=True)
class HistoryEvent:
    """One step in a record's life: `archived`, `restored`, `purged` or `erased`."""

    at: datetime
    event: str
    actor: str
    reason: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing `verify` found wrong; names the record when it can."""

    record_id: str | None
    segment_id: int | None
    reason: str

    def __str__(self) -> str:
        if self.record_id is not None:
            return f"{self.record_id}: {self.reason}"
        if self.segment_id is not None:
            return f"segment {self.segment_id}: {self.reason}"
        return self.reason
