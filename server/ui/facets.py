"""The search page's facets as links that keep their word: a chip's count is what its link shows.

Category and kind filters ignore case, so the spellings of one name (`Billing`, `billing`) are
one chip and one box, counted together. A year chip narrows the dates already asked for rather
than replacing them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from indexer.search import SearchQuery


@dataclass(frozen=True)
class Choice:
    """One name a filter may take, shown in one spelling, with the results it would keep."""

    name: str
    count: int | None
    selected: bool


def choices(
    names: Iterable[str], counts: Mapping[str, int], selected: Sequence[str]
) -> list[Choice]:
    """One choice per name whatever its case, sorted by name.

    :param names: every name to offer (spellings may repeat in other cases); the names in the
        URL are offered too, so that a filter no record has can still be seen and unticked
    :param counts: the facet counts of the current results, by spelling
    :param selected: the names in the URL
    """
    return sorted(
        _fold([*names, *counts, *selected], counts, selected),
        key=lambda c: (c.name.casefold(), c.name),
    )


def chips(counts: Mapping[str, int], selected: Sequence[str]) -> list[Choice]:
    """The facet chips of the current results: most results first.

    :param counts: the facet counts, by spelling
    :param selected: the names in the URL
    """
    return sorted(
        _fold(counts, counts, selected), key=lambda c: (-(c.count or 0), c.name.casefold())
    )


def _fold(
    names: Iterable[str], counts: Mapping[str, int], selected: Sequence[str]
) -> list[Choice]:
    """Names grouped by case: each group shown in the spelling of the URL if it is there, else
    in its most frequent one in the results, else the first of `names` (the caller offers them
    the most frequent first), with the counts of all its spellings added up."""
    groups: dict[str, list[str]] = {}
    for name in names:
        spellings = groups.setdefault(name.casefold(), [])
        if name not in spellings:
            spellings.append(name)
    in_url = {name.casefold(): name for name in reversed(selected)}
    out: list[Choice] = []
    for folded, spellings in groups.items():
        counted = [s for s in spellings if s in counts]
        shown = in_url.get(folded) or min(
            counted or spellings, key=lambda s: (-counts.get(s, 0), spellings.index(s))
        )
        total = sum(counts[s] for s in counted) if counted else None
        out.append(Choice(shown, total, folded in in_url))
    return out


def year_bounds(year: str, query: SearchQuery, asked: Mapping[str, str]) -> dict[str, str]:
    """The `from` and `to` of a year chip: that year within the dates already asked for.

    :param year: the facet's year (of the query's date field)
    :param query: the search as it ran (its parsed bounds)
    :param asked: the URL's parameters (a bound kept is kept as the user wrote it)
    """
    start = datetime(int(year), 1, 1, tzinfo=UTC)
    end = datetime(int(year), 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    narrower_from = query.date_from is not None and query.date_from > start
    narrower_to = query.date_to is not None and query.date_to < end
    return {
        "from": asked.get("from", "") if narrower_from else f"{year}-01-01",
        "to": asked.get("to", "") if narrower_to else f"{year}-12-31",
    }
