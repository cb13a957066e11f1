"""Errors raised by the search engine."""


class IndexerError(Exception):
    """Base class of every error raised by the indexer."""

    code = "indexer_error"


class BadQuery(IndexerError):
    """The query cannot be parsed or is too costly to run."""

    code = "bad_query"


class IndexUnavailable(IndexerError):
    """The index cannot be opened or read."""

    code = "index_unavailable"


REBUILD_HINT = "`archivist index --rebuild` rebuilds it from the archive"
"""How a missing or damaged index is mended, said after what is wrong with it."""


class IndexMissing(IndexUnavailable):
    """There is no index at all where the config names it (nothing says which is current)."""


class IndexOutdated(IndexUnavailable):
    """The index was built by an earlier version and cannot answer this query as asked."""


class AlreadyActive(IndexerError):
    """A record with the same id is already in the active database."""

    code = "already_active"


class RestoreRefused(IndexerError):
    """The CRM's tables refuse restored rows (a constraint other than their own key)."""

    code = "restore_refused"


class CrmTablesChanged(IndexerError):
    """The CRM's tables no longer fit the mapping (a mapped table or column is gone)."""

    code = "crm_tables_changed"


class TooMany(IndexerError):
    """A bulk request matches more records than one request may change."""

    code = "too_many"
