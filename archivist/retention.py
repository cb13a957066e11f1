"""Retention rules: when a record is aged (archive it) and when it is due for disposal.

Pure functions of a policy, a record's `updated_at` and the job's `as_of`; no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from archivist.errors import MomentOutOfRange


@dataclass(frozen=True)
class RetentionPolicy:
    """How long a record stays active, and how long it is kept once archived."""

    archive_after_days: int = 365
    keep_years: int = 5


@dataclass(frozen=True)
class RetentionRules:
    """The default policy and the per-category overrides in force."""

    default: RetentionPolicy = field(default_factory=RetentionPolicy)
    categories: Mapping[str, RetentionPolicy] = field(default_factory=dict)

    def policy_for(self, category: str) -> RetentionPolicy:
        """The policy of a category: its own table, else the default."""
        return self.categories.get(category, self.default)


def archive_cutoff(policy: RetentionPolicy, as_of: datetime) -> datetime:
    """Records whose `updated_at` is at or before this instant are aged."""
    try:
        return as_of - timedelta(days=policy.archive_after_days)
    except OverflowError:
        raise MomentOutOfRange(
            f"as_of {as_of.date().isoformat()} minus {policy.archive_after_days} days"
            " is before year 1"
        ) from None


def disposal_cutoff(policy: RetentionPolicy, as_of: datetime) -> datetime:
    """Records whose `updated_at` is at or before this instant are due for disposal.

    Calendar years: the same month, day and time `keep_years` earlier; 29 February counts as
    28 February when the earlier year has no 29 February.
    """
    year = as_of.year - policy.keep_years
    if year < 1:
        raise MomentOutOfRange(
            f"as_of {as_of.date().isoformat()} minus {policy.keep_years} years is before year 1"
        )
    try:
        return as_of.replace(year=year)
    except ValueError:  # 29 February in a year that has none
        return as_of.replace(year=year, day=28)


def is_aged(updated_at: datetime, policy: RetentionPolicy, as_of: datetime) -> bool:
    """True when a record last updated at `updated_at` is due for archiving at `as_of`."""
    return updated_at <= archive_cutoff(policy, as_of)


def is_due_for_disposal(updated_at: datetime, policy: RetentionPolicy, as_of: datetime) -> bool:
    """True when an archived record last updated at `updated_at` is past its keep time."""
    return updated_at <= disposal_cutoff(policy, as_of)
