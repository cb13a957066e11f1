"""The engine-neutral search API: queries, pages, hits, date bounds, and the engine protocol.

Callers (jobs, server, CLI) import from here and never from an engine's own package.
"""

from indexer.errors import BadQuery, IndexerError, IndexUnavailable
from indexer.search.engine import ArchivedRecord, RebuildReplay, SearchEngine, StagedBatch
from indexer.search.types import (
    DATE_FIELDS,
    MAX_PER_PAGE,
    SORTS,
    SearchHit,
    SearchPage,
    SearchQuery,
    validate,
)

__all__ = [
    "DATE_FIELDS",
    "MAX_PER_PAGE",
    "SORTS",
    "ArchivedRecord",
    "BadQuery",
    "IndexUnavailable",
    "IndexerError",
    "RebuildReplay",
    "SearchEngine",
    "SearchHit",
    "SearchPage",
    "SearchQuery",
    "StagedBatch",
    "validate",
]
