"""Crontab expressions as cron reads them, for APScheduler.

APScheduler 3's `CronTrigger.from_crontab` numbers the days of the week from Monday (0) where
cron numbers them from Sunday (0 or 7): `30 3 * * 0` would run on Mondays, `* * * * 1-5` from
Tuesday to Saturday. So the day-of-week field is read here, as cron does, and handed over as
day names.
"""

from __future__ import annotations

import re

from apscheduler.triggers.cron import CronTrigger

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ITEM = re.compile(r"^(\*|[a-z]{3}|\d+)(?:-([a-z]{3}|\d+))?(?:/(\d+))?$")


def cron_trigger(expression: str) -> CronTrigger:
    """The trigger of a five-field crontab expression, in UTC.

    :param expression: `minute hour day month day-of-week`, days of the week as cron has
        them (0 or 7 Sunday, or `sun`..`sat`)
    :raises ValueError: not such an expression
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month,
        day_of_week=_day_names(day_of_week), timezone="UTC",
    )


def _day_names(field: str) -> str:
    """A cron day-of-week field as the list of day names it stands for."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"unrecognized day of week {item!r}")
        first, last, step = m.group(1), m.group(2), int(m.group(3) or 1)
        if step < 1:
            raise ValueError(f"a step must be at least 1 in {item!r}")
        if first == "*":
            start, end = 0, 6
        else:
            start = _day(first)
            end = _day(last) if last else (6 if m.group(3) else start)
            if end == 0 and last in ("7",):  # `5-7`: Friday to Sunday
                end = 7
            if end < start:
                raise ValueError(f"a range must not go backwards in {item!r}")
        days.update(n % 7 for n in range(start, end + 1, step))
    return ",".join(_DAYS[n] for n in sorted(days))


def _day(text: str) -> int:
    if text.isdigit():
        number = int(text)
        if number > 7:
            raise ValueError(f"day of week {number} is not 0-7")
        return number % 7
    if text not in _DAYS:
        raise ValueError(f"unrecognized day of week {text!r}")
    return _DAYS.index(text)
