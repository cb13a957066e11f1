"""Legal holds: a held record is neither archived nor disposed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from sqlalchemy import ColumnElement, and_, delete, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from archivist.active_db import LegalHold
from archivist.errors import HoldError
from archivist.records import MAX_CHARS, typed_value_problem, valid_record_id

SCOPES = ("record", "customer", "category")


@dataclass(frozen=True)
class Hold:
    """One legal hold as shown to users."""

    scope: str
    value: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class HoldSet:
    """Every hold in force, split by scope, for fast checks."""

    record_ids: frozenset[str] = frozenset()
    customer_ids: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()  # as placed

    @cached_property
    def folded_categories(self) -> frozenset[str]:
        """The category holds casefolded, as `covers` compares them."""
        return frozenset(c.casefold() for c in self.categories)

    def covers(self, record_id: str, customer_id: str | None, category: str) -> bool:
        """True when any hold applies to a record with these attributes.

        A category hold covers the category whatever its case, as a category filter of a
        search finds it (`billing` holds `Billing` too): a hold errs on the side of keeping.
        """
        return (
            record_id in self.record_ids
            or (customer_id is not None and customer_id in self.customer_ids)
            or category.casefold() in self.folded_categories
        )

    def exclusion(
        self,
        id_column: InstrumentedAttribute[str],
        customer_column: InstrumentedAttribute[str | None],
        category_column: InstrumentedAttribute[str],
    ) -> ColumnElement[bool]:
        """A SQL condition that is false for rows a hold covers, a category hold as placed
        (SQL has no `casefold`): rows of another case pass, and `covers` then keeps them."""
        conditions: list[ColumnElement[bool]] = []
        if self.record_ids:
            conditions.append(id_column.not_in(sorted(self.record_ids)))
        if self.customer_ids:
            conditions.append(
                or_(customer_column.is_(None), customer_column.not_in(sorted(self.customer_ids)))
            )
        if self.categories:
            conditions.append(category_column.not_in(sorted(self.categories)))
        return and_(true(), *conditions)


def add_hold(session: Session, scope: str, value: str, reason: str, at: datetime) -> Hold:
    """Place a hold; placing the same hold twice is an error that names the first one."""
    _check(scope, value)
    problem = hold_value_problem(scope, value)  # (one placed before a check can be lifted)
    if problem is not None:
        raise HoldError(f"{problem}: {value!r}")
    if not reason.strip():
        raise HoldError("a legal hold needs a reason")
    existing = next(iter(_same_holds(session, scope, value)), None)
    if existing is not None:
        spelled = "" if existing.value == value else f" (as {existing.value!r})"
        raise HoldError(f"{scope} {value!r} is already on hold{spelled}: {existing.reason}")
    row = LegalHold(scope=scope, value=value, reason=reason.strip(), created_at=at)
    session.add(row)
    session.flush()
    return Hold(scope, value, row.reason, at)


def remove_hold(session: Session, scope: str, value: str) -> None:
    """Lift a hold; lifting one that does not exist is an error."""
    _check(scope, value)
    ids = [row.id for row in _same_holds(session, scope, value)]
    if not ids:
        raise HoldError(f"{scope} {value!r} is not on hold")
    session.execute(delete(LegalHold).where(LegalHold.id.in_(ids)))


def _same_holds(session: Session, scope: str, value: str) -> list[LegalHold]:
    """The holds placed on this value: for a category, whatever its case, as a category hold
    covers its category whatever the case (`BILLING` is `billing` placed again)."""
    query = select(LegalHold).where(LegalHold.scope == scope).order_by(LegalHold.id)
    if scope != "category":
        return list(session.scalars(query.where(LegalHold.value == value)))
    folded = value.casefold()
    return [row for row in session.scalars(query) if row.value.casefold() == folded]


def list_holds(
    session: Session, scope: str | None = None, value: str | None = None
) -> list[Hold]:
    """Every hold in force, oldest first; only those on `value` in `scope` when given."""
    if scope is not None and value is not None:
        rows = sorted(_same_holds(session, scope, value), key=lambda r: (r.created_at, r.id))
    else:
        rows = list(session.scalars(select(LegalHold).order_by(LegalHold.created_at, LegalHold.id)))
    return [Hold(r.scope, r.value, r.reason, r.created_at) for r in rows]


def holds_covering(
    session: Session, records: Iterable[tuple[str, str | None, str]]
) -> list[Hold]:
    """The holds in force on any of these records (a process's), given as (id, customer id,
    category), by the rule of `HoldSet.covers`, oldest first: what keeps them from disposal
    and erasure."""
    records = list(records)
    held = []
    for hold in list_holds(session):
        alone = _hold_set([(hold.scope, hold.value)])
        if any(alone.covers(*record) for record in records):
            held.append(hold)
    return held


def load_hold_set(session: Session) -> HoldSet:
    """The holds in force, ready for `covers` checks and SQL exclusions."""
    return _hold_set(session.execute(select(LegalHold.scope, LegalHold.value)).tuples())


def _hold_set(holds: Iterable[tuple[str, str]]) -> HoldSet:
    by_scope: dict[str, set[str]] = {scope: set() for scope in SCOPES}
    for scope, value in holds:
        by_scope[scope].add(value)
    return HoldSet(
        record_ids=frozenset(by_scope["record"]),
        customer_ids=frozenset(by_scope["customer"]),
        categories=frozenset(by_scope["category"]),
    )


def hold_value_problem(scope: str, value: str) -> str | None:
    """Why a hold on this value would match nothing it was meant for, or None if it can.

    A pasted newline, a NUL or a space around the value makes a hold that holds nothing while
    it looks in force (and a web form could not send a control character back to lift it);
    a record hold must name a possible record id.
    """
    typed = typed_value_problem(value)
    if typed is not None:
        return f"a hold value {typed}"
    if scope == "record" and not valid_record_id(value):
        return "a record hold must name a record id (1-128 characters of A-Z a-z 0-9 . _ : -)"
    limit = MAX_CHARS.get("customer_id" if scope == "customer" else scope)
    if limit is not None and len(value) > limit:  # no record could name it
        return f"a {scope} hold value must be at most {limit} characters"
    return None


def _check(scope: str, value: str) -> None:
    if scope not in SCOPES:
        raise HoldError(f"hold scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not value:
        raise HoldError("a hold needs a record id, customer id or category")


ERASED_REASON = "(erased)"


def reason_hash(reason: str) -> str:
    """The SHA-256 of a hold's reason: what the erasure ledger keeps of one it erased."""
    return hashlib.sha256(reason.encode("utf-8")).hexdigest()


def erase_hold_reasons(session: Session, holds: Iterable[tuple[int, str]]) -> int:
    """Replace with `(erased)` the reason of each hold, given as (id, `reason_hash` of its
    reason), that still has that reason: the hold stays in force, the words naming an erased
    person go. Returns how many were replaced.

    :param session: a session on the active database, in a transaction
    :param holds: the holds an erasure found naming the person
    """
    wanted = dict(holds)
    replaced = 0
    for hold in session.scalars(select(LegalHold).where(LegalHold.id.in_(list(wanted)))):
        if reason_hash(hold.reason) == wanted[hold.id]:
            hold.reason = ERASED_REASON
            replaced += 1
    return replaced
