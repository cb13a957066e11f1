"""The append-only archive store: encrypted, compressed, hash-chained segments and a SQLite
catalog."""

from archive_store.errors import (
    AlreadyArchived,
    ArchiveStoreError,
    NotArchived,
    RecordNotFound,
    RestoreInProgress,
    SegmentCorrupt,
    StoreReadOnly,
)
from archive_store.models import (
    ArchiveItem,
    CatalogEntry,
    ErasedRecord,
    HistoryEvent,
    Problem,
    StoredEntry,
)
from archive_store.store import ArchiveStore

__all__ = [
    "AlreadyArchived",
    "ArchiveItem",
    "ArchiveStore",
    "ArchiveStoreError",
    "CatalogEntry",
    "ErasedRecord",
    "HistoryEvent",
    "NotArchived",
    "Problem",
    "RecordNotFound",
    "RestoreInProgress",
    "SegmentCorrupt",
    "StoreReadOnly",
    "StoredEntry",
]
