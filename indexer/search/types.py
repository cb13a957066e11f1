"""What a search asks and answers, whatever engine runs it: query, page, hit, sorts, date fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from indexer.errors import BadQuery

DATE_FIELDS = ("created_at", "updated_at", "archived_at")

MAX_PER_PAGE = 100
SORTS = ("relevance", "newest", "oldest")


@dataclass(frozen=True)
class SearchQuery:
    """A search request, as the contract's ``GET /api/v1/search`` parameters."""

    q: str = ""
    categories: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    customer_id: str | None = None
    owner: str | None = None
    process: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    date_field: str = "created_at"
    sort: str | None = None
    page: int = 1
    per_page: int = 20
    # The roots the index holds for `process` (`indexer.processes.index_roots`): more than one
    # when the process's root is only in the active database. None: `process` itself.
    process_roots: tuple[str, ...] | None = None

    def wanted_roots(self) -> tuple[str, ...] | None:
        """The `process_id` values a hit may have, or None when any will do."""
        if self.process_roots is not None:
            return self.process_roots
        return None if self.process is None else (self.process,)


@dataclass(frozen=True)
class SearchHit:
    """One result row; timestamps in the contract's UTC format."""

    id: str
    kind: str
    category: str
    customer_id: str | None
    owner: str | None
    subject: str
    status: str
    created_at: str
    updated_at: str
    archived_at: str
    score: float
    snippet: str
    parent_id: str | None = None
    process_id: str | None = None


@dataclass(frozen=True)
class SearchPage:
    """One page of results with the exact total and facet counts over all matches."""

    total: int
    page: int
    per_page: int
    took_ms: float
    hits: list[SearchHit]
    facets: dict[str, dict[str, int]] = field(default_factory=dict)


def validate(query: SearchQuery) -> str:
    """Check a query's parameters and return its effective sort (every engine calls it first).

    :param query: the query.
    """
    if query.date_field not in DATE_FIELDS:
        raise BadQuery(f"date_field must be one of {', '.join(DATE_FIELDS)}")
    sort = query.sort or ("relevance" if query.q.strip() else "newest")
    if sort not in SORTS:
        raise BadQuery(f"sort must be one of {', '.join(SORTS)}")
    if query.page < 1:
        raise BadQuery("page must be 1 or more")
    if not 1 <= query.per_page <= MAX_PER_PAGE:
        raise BadQuery(f"per_page must be between 1 and {MAX_PER_PAGE}")
    for bound in (query.date_from, query.date_to):
        if bound is not None and bound.tzinfo is None:
            raise BadQuery("date bounds must be timezone-aware")
    return sort
