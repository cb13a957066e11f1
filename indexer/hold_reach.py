"""Whether a legal hold reaches any record now: a hold on a mistyped value (a typo, an
invisible character pasted with it) looks in force and holds nothing, so placing one says so."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, cast, distinct, exists, select
from sqlalchemy.exc import DBAPIError

from archivist.active_db import ActiveRecord
from archivist.crm_rows import CrmTables, count_customer_rows, count_record_rows
from indexer.services import Services

CHECK_THE_VALUE = "check the value for a typo or an invisible character pasted with it."


def no_record_with(scope: str, value: str) -> str:
    """How a warning about a value that matches nothing begins; the value is quoted as Python
    writes it, so that an invisible character pasted with it shows (`'C-1042\\u200b'`).

    :param scope: `record`, `customer` or `category`
    :param value: the value typed
    """
    what = "id" if scope == "record" else scope
    return f"No record, archived or active, has that {what} ({value!r})"


def no_record_held(scope: str, value: str) -> str:
    """The warning for a hold that reaches no record.

    :param scope: `record`, `customer` or `category`
    :param value: the hold's value
    """
    return f"{no_record_with(scope, value)} now, so the hold holds nothing yet: {CHECK_THE_VALUE}"


def hold_reaches_a_record(services: Services, scope: str, value: str) -> bool:
    """Whether any record, archived or active, is one the hold names now.

    :param scope: `record`, `customer` or `category` (a category compared casefolded, as
        holds compare it)
    :param value: the hold's value
    """
    store, crm = services.store, services.crm
    if scope == "record" and any(
        e.state in ("archived", "restored") for e in store.entries([value]).values()
    ):
        return True
    if scope == "customer" and store.find_customer_records(value):
        return True
    if scope == "category" and value.casefold() in {c.casefold() for c in store.categories()}:
        return True
    with services.read_sessions.begin() as session:
        if crm is None:
            return _in_active_table(session, scope, value)
        try:
            return _in_crm_tables(session, crm, scope, value)
        except DBAPIError:  # the tables changed since they were read: cannot tell
            return True


def _in_active_table(session: Any, scope: str, value: str) -> bool:
    if scope == "category":
        categories = session.scalars(select(distinct(ActiveRecord.category)))
        return any(c.casefold() == value.casefold() for c in categories)
    column = ActiveRecord.id if scope == "record" else ActiveRecord.customer_id
    return bool(session.scalar(select(exists().where(column == value))))


def _in_crm_tables(session: Any, crm: CrmTables, scope: str, value: str) -> bool:
    if scope == "record":
        return count_record_rows(session, crm, value) > 0
    if scope == "customer":
        return count_customer_rows(session, crm, value) > 0
    folded = value.casefold()
    for crm_table in crm.tables:
        source = crm_table.mapping.fields.get("category")
        if source is None:
            continue
        if source.column is None:
            if str(source.constant).casefold() == folded:
                return True
            continue
        column = cast(crm_table.table.c[source.column], Text)
        for category in session.scalars(select(distinct(column))):  # a handful of values
            if category is not None and category.casefold() == folded:
                return True
    return False
