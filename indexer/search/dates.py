"""Time helpers of search: epoch microseconds and the `from`/`to` bounds."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from archivist.records import (
    calendar_problem,
    clock_problem,
    finer_than_microseconds,
    upper_zulu,
)
from indexer.errors import BadQuery

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime) -> int:
    """Return an aware datetime as integer microseconds since the epoch.

    :param value: an aware datetime.
    """
    return (value - _EPOCH) // timedelta(microseconds=1)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp with offset or ``Z`` into an aware UTC datetime.

    :param text: the timestamp.
    """
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return value.astimezone(UTC)


_SPACED_OFFSET = re.compile(r"\d \d{2}(:?\d{2})?$")
def parse_bound(text: str, end: bool) -> datetime:
    """Parse a ``from``/``to`` bound: an ISO date or datetime, as aware UTC.

    A date alone means its first microsecond, or with ``end`` its last one, so that an inclusive
    ``to`` covers the whole day. A datetime without offset is taken as UTC. A time finer than a
    microsecond bounds what it says exactly, as records' times are kept to microseconds.

    :param text: the ISO date or datetime.
    :param end: True for the upper (``to``) bound.
    """
    text = text.strip()
    try:  # a date alone in any ISO form (`2023-06-15`, `20230615`, `2023-W24-4`)
        d = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(d, dtime.max if end else dtime.min, tzinfo=UTC)
    try:
        value = datetime.fromisoformat(upper_zulu(text))
    except ValueError as e:
        problem = calendar_problem(text)
        if problem is not None:
            raise BadQuery(f"not a date on the calendar: {text[:40]!r} ({problem})") from e
        problem = clock_problem(text)
        if problem is not None:
            raise BadQuery(f"not a time on the clock: {text[:40]!r} ({problem})") from e
        hint = ""
        if _SPACED_OFFSET.search(text):  # `+08:00` sent bare in a query string
            hint = "; write a '+' in a URL as %2B (a bare '+' reads as a space)"
        raise BadQuery(f"not an ISO date or datetime: {text[:40]!r}{hint}") from e
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        if finer_than_microseconds(text) and not end:
            # Python dropped the digits past the microsecond: a `from` then begins at the next
            # microsecond, the first a record's time (kept to microseconds) can be at or after.
            value += timedelta(microseconds=1)
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 is in year 10000 in UTC
        raise BadQuery(f"outside the years 1-9999 in UTC: {text[:40]!r}") from None


def parse_moment(text: str) -> datetime:
    """Parse a job's ``as_of``: an ISO date (its midnight) or datetime (UTC if without offset).

    Digits past the microsecond are dropped rather than rounded up as for a ``from``: a record is
    aged (or due) when its time is at or before a cutoff reckoned from ``as_of``, so ``as_of`` is
    an upper bound, and a record's time (kept to microseconds) just after it must not count.

    :param text: the ISO date or datetime.
    """
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return parse_bound(text, end=True)
    return parse_bound(text, end=False)
