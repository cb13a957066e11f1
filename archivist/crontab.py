"""Crontab expressions as cron reads them, for APScheduler.

APScheduler 3's `CronTrigger.from_crontab` numbers the days of the week from Monday (0) where
cron numbers them from Sunday (0 or 7): `30 3 * * 0` would run on Mondays, `* * * * 1-5` from
Tuesday to Saturday. So the day-of-week field is read here, as cron does, and handed over as
day names. And where cron runs on either day when both the day of the month and the day of the
week are restricted (`30 3 1 * 0`: the 1st, and every Sunday), APScheduler wants both: such an
expression becomes two triggers, either of which fires. As in cron, a day field that starts
with `*` (`*/2`) does not count as restricted: then both must hold (`0 2 */2 * mon` runs on
Mondays that fall on an odd day of the month).
"""

from __future__ import annotations

import re

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ITEM = re.compile(r"^(\*|[a-z]{3}|\d+)(?:-([a-z]{3}|\d+))?(?:/(\d+))?$")


def cron_trigger(expression: str) -> BaseTrigger:
    """The trigger of a five-field crontab expression, in UTC.

    :param expression: `minute hour day month day-of-week`, days of the week as cron has
        them (0 or 7 Sunday, or `sun`..`sat`)
    :raises ValueError: not such an expression
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, day_of_week = fields
    weekdays = _day_names(day_of_week)

    def trigger(day: str, weekdays: str) -> CronTrigger:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=weekdays, timezone="UTC")

    if not day.startswith("*") and not day_of_week.startswith("*"):  # cron: on either
        return OrTrigger([trigger(day, "*"), trigger("*", weekdays)])
    return trigger(day, weekdays)


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
        else:  # numbers 0-7 as written (7 is Sunday again, so `5-7` is Friday to Sunday)
            start = _day(first)
            end = _day(last) if last else (6 if m.group(3) else start)
            if end < start:
                raise ValueError(f"a range must not go backwards in {item!r}")
        days.update(n % 7 for n in range(start, end + 1, step))
    return ",".join(_DAYS[n] for n in sorted(days))


def _day(text: str) -> int:
    if text.isdigit():
        number = int(text)
        if number > 7:
            raise ValueError(f"day of week {number} is not 0-7")
        return number
    if text not in _DAYS:
        raise ValueError(f"unrecognized day of week {text!r}")
    return _DAYS.index(text)
