"""Errors raised by the archive store; each carries a stable `code`."""

from __future__ import annotations

import sqlite3


class ArchiveStoreError(Exception):
    """Base class of every archive store error."""

    code: str = "archive_store_error"


class RecordNotFound(ArchiveStoreError):
    """The record was never archived, or its content was purged."""

    code = "not_found"


class NotArchived(ArchiveStoreError):
    """The record exists but is not in the `archived` state."""

    code = "not_archived"


class RestoreInProgress(ArchiveStoreError):
    """The record already has a pending move (a restore or an unfinished archive)."""

    code = "restore_in_progress"


class AlreadyArchived(ArchiveStoreError):
    """The record is archived with different content; archiving it again is refused."""

    code = "already_archived"


class SegmentCorrupt(ArchiveStoreError):
    """A segment file does not match its catalog: damaged, truncated or edited."""

    code = "segment_corrupt"


class StoreReadOnly(ArchiveStoreError):
    """The archive folder cannot be written: only reads (search, stats, verify) work."""

    code = "read_only"


class CatalogBehind(ArchiveStoreError):
    """The catalog ends before an entry the active database saw committed: it lost writes (its
    WAL deleted, or an older copy put back), and nothing may write to the store until it is
    whole again (the store would delete segment data only the lost writes name)."""

    code = "catalog_behind"


class CatalogUnavailable(ArchiveStoreError, sqlite3.OperationalError):
    """The catalog file cannot be opened, read or written (a full disk, an I/O error, no
    permission, not a database); its message names the file. Still a `sqlite3` error, for
    callers that handle those."""

    code = "catalog_unavailable"
