"""The record model: validation of the contract's record format and its canonical JSON form."""

from __future__ import annotations

import calendar
import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from archivist.errors import InvalidRecord

MAX_BODY_BYTES = 2**20
# The subject is shown whole in every search hit and export row, and attributes travel with
# the record everywhere: bounded, so that no one record makes a page or an export huge.
MAX_SUBJECT_BYTES = 2**16
MAX_ATTRIBUTES_BYTES = 4 * 2**20
# Objects and arrays inside one another in `attributes`, the attributes object itself counted.
# CRM data nests a few levels; hundreds of levels reach the recursion limits of the tools a
# record passes through (pickling to the index workers, JSON encoders).
MAX_ATTRIBUTE_DEPTH = 64
MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_ID_LENGTH}}}")
_FRACTION = re.compile(r"T\d{2}:?\d{2}:?\d{2}[.,](\d+)")
_TEXT_FIELDS = ("kind", "category", "subject", "body", "status")
_OPTIONAL_TEXT_FIELDS = ("customer_id", "owner")
_TIME_FIELDS = ("created_at", "updated_at")
# The longest values the active database's columns take (and the search filters accept).
MAX_CHARS = {"kind": 64, "category": 128, "status": 64, "customer_id": 256, "owner": 256}
RECORD_FIELDS = (
    "id",
    "kind",
    "category",
    "customer_id",
    "owner",
    "subject",
    "body",
    "status",
    "created_at",
    "updated_at",
)
"""The record's fields other than ``attributes`` and ``parent_id``, in the order they are
written everywhere (the Record dataclass, its JSON value, the active table's columns): the one
list to extend."""
FIELDS = (*RECORD_FIELDS, "attributes", "parent_id")


@dataclass(frozen=True)
class Record:
    """One validated CRM record; timestamps are canonical UTC text, as the contract gives them."""

    id: str
    kind: str
    category: str
    customer_id: str | None
    owner: str | None
    subject: str
    body: str
    status: str
    created_at: str
    updated_at: str
    attributes: Mapping[str, Any] | None = None
    parent_id: str | None = None
    has_parent_id: bool = False
    """Whether the record carries a `parent_id` field at all (a null one included): a record
    imported without it is given back without it."""

    @property
    def created(self) -> datetime:
        """`created_at` as an aware UTC datetime."""
        return parse_utc(self.created_at)

    @property
    def updated(self) -> datetime:
        """`updated_at` as an aware UTC datetime; a record's age is measured from it."""
        return parse_utc(self.updated_at)

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON value the contract promises to give back."""
        value: dict[str, Any] = {name: getattr(self, name) for name in RECORD_FIELDS}
        if self.attributes is not None:
            value["attributes"] = self.attributes
        if self.has_parent_id or self.parent_id is not None:
            value["parent_id"] = self.parent_id
        return value


def typed_value_problem(value: str) -> str | None:
    """Why a value typed to match a record's field (a hold's, a retention table's name) would
    match nothing while it looks right: a control character (a pasted newline) or a space at
    either end; None if neither. Said as the rest of a sentence: "a hold value " + it."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        return "must not contain control characters"
    if value != value.strip():
        return "must not begin or end with a space"
    return None


def valid_record_id(text: str) -> bool:
    """Whether `text` can be a record's id: the contract's characters; not `.` or `..` alone,
    which a URL path (`/records/<id>`) cannot carry: clients resolve them away."""
    return ID_PATTERN.fullmatch(text) is not None and text not in (".", "..")


def parse_record(
    obj: Any, kinds: Collection[str] | None = None, *, column_limits: bool = True
) -> Record:
    """Validate one decoded JSON value and return the Record it describes.

    :param kinds: the allowed `kind` values; None allows any.
    :param column_limits: refuse values longer than the active database's columns take
        (`MAX_CHARS`); a row of the CRM's own tables is held to its own columns instead.
    :raises InvalidRecord: with a reason naming the first bad field.
    """
    if not isinstance(obj, dict):
        raise InvalidRecord(f"a record must be a JSON object, got {_json_type(obj)}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise InvalidRecord(f"unknown field {unknown[0]!r}")
    record_id = _required(obj, "id", str)
    if not valid_record_id(record_id):
        raise InvalidRecord(
            "id must be 1-128 characters of A-Z a-z 0-9 . _ : - (not '.' or '..' alone), "
            f"got {record_id[:140]!r}"
        )
    values: dict[str, Any] = {"id": record_id}
    for name in _TEXT_FIELDS:
        values[name] = _required(obj, name, str)
    for name in _OPTIONAL_TEXT_FIELDS:
        values[name] = _required(obj, name, (str, type(None)))
    for name in ("kind", "category", "status"):
        if not values[name]:
            raise InvalidRecord(f"{name} must not be empty")
    for name, limit in MAX_CHARS.items() if column_limits else ():
        if values[name] is not None and len(values[name]) > limit:
            raise InvalidRecord(f"{name} is longer than {limit} characters")
    for name in (*_TEXT_FIELDS, *_OPTIONAL_TEXT_FIELDS) if column_limits else ():
        # PostgreSQL's text cannot hold one; refused on every database, so that a file is
        # taken or refused the same way on both (`attributes` keeps it, as JSON's \u0000)
        if values[name] is not None and "\x00" in values[name]:
            raise InvalidRecord(f"{name} holds a NUL character (\\u0000)")
    if kinds is not None and values["kind"] not in kinds:
        raise InvalidRecord(
            f"kind must be one of {', '.join(sorted(kinds))}, got {values['kind']!r}"
        )
    try:  # lone surrogates cannot be stored or given back as UTF-8
        body_bytes = len(values["body"].encode("utf-8"))
        for name in (*_TEXT_FIELDS, *_OPTIONAL_TEXT_FIELDS):
            if values[name] is not None:
                values[name].encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord("text contains invalid Unicode (lone surrogates)") from None
    if body_bytes > MAX_BODY_BYTES:
        raise InvalidRecord(f"body is larger than {MAX_BODY_BYTES} bytes")
    if len(values["subject"].encode("utf-8")) > MAX_SUBJECT_BYTES:
        raise InvalidRecord(f"subject is larger than {MAX_SUBJECT_BYTES} bytes")
    for name in _TIME_FIELDS:
        values[name] = canonical_timestamp(_required(obj, name, str), name)
    attributes = obj.get("attributes")
    if "attributes" in obj and not isinstance(attributes, dict):
        raise InvalidRecord(f"attributes must be a JSON object, got {_json_type(attributes)}")
    if attributes is not None:
        if _nesting_depth(attributes) > MAX_ATTRIBUTE_DEPTH:
            raise InvalidRecord(
                f"attributes are nested more than {MAX_ATTRIBUTE_DEPTH} levels deep "
                "(objects and arrays inside one another)"
            )
        try:
            encoded = json.dumps(attributes, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRecord("attributes contain invalid Unicode (lone surrogates)") from None
        except ValueError:
            raise InvalidRecord("attributes contain NaN or Infinity (not JSON)") from None
        if len(encoded) > MAX_ATTRIBUTES_BYTES:
            raise InvalidRecord(f"attributes are larger than {MAX_ATTRIBUTES_BYTES} bytes as JSON")
    values["attributes"] = attributes
    if "parent_id" in obj:
        parent_id = _required(obj, "parent_id", (str, type(None)))
        if parent_id is not None:
            if not valid_record_id(parent_id):
                raise InvalidRecord(f"parent_id is not a valid record id: {parent_id[:140]!r}")
            if parent_id == record_id:
                raise InvalidRecord("parent_id must not be the record's own id")
        values["parent_id"] = parent_id
        values["has_parent_id"] = True
    return Record(**values)


def _nesting_depth(value: Any) -> int:
    """How many objects and arrays are nested in a JSON value (0 for a scalar), counted up to
    one past the limit, without recursion: the value may nest deeper than Python's stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_ATTRIBUTE_DEPTH:
            break  # deep enough to refuse; no need to walk the rest
        stack.extend((child, depth + 1) for child in children)
    return deepest


# a date in the ISO shape (`2023-02-30`, `20230230`), alone or before its time
_ISO_DATE = re.compile(r"(\d{4})(-?)(\d{2})\2(\d{2})(?=$|[Tt ])")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def calendar_problem(text: str) -> str | None:
    """Why a date written in the ISO shape is on no calendar (`February 2023 has 28 days`);
    None when it is a real date or not in that shape at all.

    :param text: a date, or a datetime beginning with its date.
    """
    match = _ISO_DATE.match(text)
    if match is None:
        return None
    year, month, day = int(match[1]), int(match[3]), int(match[4])
    if year == 0:
        return "years start at 0001"
    if not 1 <= month <= 12:
        return "months are 01 to 12"
    days = calendar.monthrange(year, month)[1]
    if day == 0:
        return "days of the month start at 01"
    if day > days:
        return f"{_MONTHS[month - 1]} {year} has {days} days"
    return None


_ISO_CLOCK = re.compile(r"\d{4}(-?)\d{2}\1\d{2}[Tt ](\d{2})(?::?(\d{2})(?::?(\d{2}))?)?")


def clock_problem(text: str) -> str | None:
    """Why the time of day in an ISO datetime is on no clock (`hours are 00 to 23`); None when
    it is a real time or not in that shape at all.

    :param text: a datetime, its date first.
    """
    match = _ISO_CLOCK.match(text)
    if match is None:
        return None
    hours, minutes, seconds = (int(part) if part else 0 for part in match.group(2, 3, 4))
    if hours == 24:
        return "hours are 00 to 23: midnight at the end of a day is 00:00 of the next"
    if hours > 23:
        return "hours are 00 to 23"
    if minutes > 59:
        return "minutes are 00 to 59"
    if seconds == 60:
        return "seconds are 00 to 59: a leap second cannot be kept, write :59"
    if seconds > 60:
        return "seconds are 00 to 59"
    return None


def upper_zulu(text: str) -> str:
    """A time ending in RFC 3339's lowercase `z` with `Z` instead, which Python reads.

    :param text: an ISO date-time
    """
    return text[:-1] + "Z" if text.endswith("z") else text


def canonical_timestamp(text: str, name: str = "timestamp") -> str:
    """Normalise an ISO 8601 timestamp with an offset to `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (UTC).

    :raises InvalidRecord: when the text is not an ISO 8601 date-time with an offset or `Z`.
    """
    try:
        moment = datetime.fromisoformat(upper_zulu(text))
    except ValueError:
        problem = calendar_problem(text)
        if problem is not None:
            raise InvalidRecord(
                f"{name} is not a date on the calendar: {text[:60]!r} ({problem})"
            ) from None
        problem = clock_problem(text)
        if problem is not None:
            raise InvalidRecord(
                f"{name} is not a time on the clock: {text[:60]!r} ({problem})"
            ) from None
        raise InvalidRecord(f"{name} is not an ISO 8601 date-time: {text[:60]!r}") from None
    if "T" not in text.upper() and " " in text.strip():  # a space for the T
        raise InvalidRecord(f"{name} needs a 'T' between the date and the time: {text[:60]!r}")
    if "T" not in text.upper() or moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidRecord(f"{name} needs a time and a UTC offset or 'Z': {text[:60]!r}")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise InvalidRecord(f"{name} is out of range: {text[:60]!r}") from None
    fraction = _FRACTION.search(text.upper())
    if finer_than_microseconds(text):
        # Python would drop the digits past the sixth: a different time than the one given.
        raise InvalidRecord(
            f"{name} is more precise than a microsecond (at most 6 digits after the "
            f"seconds): {text[:60]!r}"
        )
    return format_utc(moment, fractions=fraction is not None)


def finer_than_microseconds(text: str) -> bool:
    """True when an ISO time gives digits past the sixth after the seconds (other than zeros),
    which Python's parsing drops.

    :param text: an ISO 8601 date-time as given
    """
    fraction = _FRACTION.search(text.upper())
    return fraction is not None and len(fraction.group(1).rstrip("0")) > 6


def format_utc(moment: datetime, fractions: bool | None = None) -> str:
    """Format an aware datetime as the contract's UTC string.

    :param fractions: force `.ffffff` on or off; None writes it only when microseconds are set.
    """
    moment = moment.astimezone(UTC).replace(tzinfo=None)
    if fractions is None:
        fractions = moment.microsecond != 0
    return moment.isoformat(timespec="microseconds" if fractions else "seconds") + "Z"


def parse_utc(text: str) -> datetime:
    """Parse a canonical UTC string (as written by `format_utc`) into an aware datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


def record_from_json(value: Mapping[str, Any]) -> Record:
    """Rebuild a Record from a JSON value that was validated before (e.g. read from the archive)."""
    fields: dict[str, Any] = {name: value.get(name) for name in FIELDS}
    fields["has_parent_id"] = "parent_id" in value
    return Record(**fields)


def _required(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise InvalidRecord(f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind):
        expected = "string or null" if isinstance(kind, tuple) else "string"
        raise InvalidRecord(f"{name} must be a {expected}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return names.get(type(value), type(value).__name__)

