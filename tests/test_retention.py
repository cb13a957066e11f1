"""Ages exactly as the contract defines them, including 29 February."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archivist.retention import (
    RetentionPolicy,
    RetentionRules,
    disposal_cutoff,
    is_aged,
    is_due_for_disposal,
)

AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def test_aged_at_the_exact_boundary_and_not_one_second_later():
    policy = RetentionPolicy(archive_after_days=30, keep_years=5)
    boundary = AS_OF - timedelta(days=30)
    assert is_aged(boundary, policy, AS_OF)
    assert is_aged(boundary - SECOND, policy, AS_OF)
    assert not is_aged(boundary + SECOND, policy, AS_OF)


def test_disposal_counts_calendar_years():
    policy = RetentionPolicy(keep_years=7)
    boundary = datetime(2019, 3, 1, 12, 0, tzinfo=UTC)
    assert is_due_for_disposal(boundary, policy, AS_OF)
    assert not is_due_for_disposal(boundary + SECOND, policy, AS_OF)


@pytest.mark.parametrize(
    ("as_of", "years", "cutoff"),
    [
        (datetime(2028, 2, 29, 6, tzinfo=UTC), 5, datetime(2023, 2, 28, 6, tzinfo=UTC)),
        (datetime(2028, 2, 29, 6, tzinfo=UTC), 4, datetime(2024, 2, 29, 6, tzinfo=UTC)),
        (datetime(2027, 2, 28, 6, tzinfo=UTC), 3, datetime(2024, 2, 28, 6, tzinfo=UTC)),
    ],
)
def test_29_february_counts_as_28_february(as_of, years, cutoff):
    assert disposal_cutoff(RetentionPolicy(keep_years=years), as_of) == cutoff


def test_category_policy_falls_back_to_default():
    rules = RetentionRules(RetentionPolicy(365, 5), {"finance": RetentionPolicy(180, 7)})
    assert rules.policy_for("finance").keep_years == 7
    assert rules.policy_for("support") == RetentionPolicy(365, 5)
