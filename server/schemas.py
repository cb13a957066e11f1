"""Marshmallow schemas: every query parameter, request body and response body of API v1.

Loading a parameter schema gives a value object the library understands (`SearchQuery`,
`AuditFilter`); dumping a response schema gives the contract's JSON. The OpenAPI document is
generated from these same classes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validates,
    validates_schema,
)
from marshmallow.validate import Length, OneOf, Range

from archivist.audit import ACTIONS, AuditFilter
from archivist.disposals import DisposalFilter
from archivist.holds import SCOPES, hold_value_problem
from archivist.records import format_utc
from indexer.errors import BadQuery
from indexer.search import DATE_FIELDS, MAX_PER_PAGE, SORTS, SearchQuery
from indexer.search.dates import parse_bound

MAX_PAGE = 100_000


class UtcTimestamp(fields.DateTime):
    """An aware datetime as the contract's `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_utc(value)


class Bound(fields.String):
    """A `from`/`to` parameter: an ISO date or datetime, kept as text until `post_load`."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"description": "ISO 8601 date or datetime (UTC when without offset)"}
        super().__init__(validate=Length(min=1, max=64), metadata=metadata, **kwargs)


def _bounds(data: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """Parse `from` and `to`; a date-only `to` covers its whole day; from must not pass to."""
    found: dict[str, datetime | None] = {}
    for key, name, end in (("date_from", "from", False), ("date_to", "to", True)):
        try:
            found[key] = parse_bound(data[key], end=end) if key in data else None
        except BadQuery as e:
            raise ValidationError(str(e), field_name=name) from None
    date_from, date_to = found["date_from"], found["date_to"]
    if date_from is not None and date_to is not None and date_from > date_to:
        raise ValidationError("later than 'to': nothing can match", field_name="from")
    return date_from, date_to


class PageNumber(fields.Integer):
    """A page or page size as ASCII digits: `int()` would also take `٣`, `３`, ` 3` or `1_0`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        digits = value.removeprefix("-") if isinstance(value, str) else ""
        if isinstance(value, str) and not (digits.isascii() and digits.isdigit()):
            raise ValidationError("must be a whole number in digits 0-9")
        # (a negative one is left to the field's range, whose message names the bounds)
        result: int = super()._deserialize(value, attr, data, **kwargs)
        return result


class JsonBoolean(fields.Boolean):
    """`true` or `false` only: `"no"` or `0` read as false would make a real run of what was
    meant as a dry run."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class SearchArgsSchema(Schema):
    """Parameters of `GET /search` and `GET /export.csv`."""

    q = fields.String(
        load_default="",
        metadata={"description": "Whoosh query language; empty matches everything"},
    )
    category = fields.List(fields.String(validate=Length(min=1, max=128)))
    kind = fields.List(fields.String(validate=Length(min=1, max=64)))
    customer_id = fields.String(validate=Length(min=1, max=256))
    owner = fields.String(validate=Length(min=1, max=256))
    process = fields.String(
        validate=Length(min=1, max=128), metadata={"description": "a process's root id"}
    )
    date_from = Bound(data_key="from")
    date_to = Bound(data_key="to")
    date_field = fields.String(load_default="created_at", validate=OneOf(DATE_FIELDS))
    sort = fields.String(validate=OneOf(SORTS))
    page = PageNumber(load_default=1, validate=Range(min=1, max=MAX_PAGE))
    per_page = PageNumber(load_default=20, validate=Range(min=1, max=MAX_PER_PAGE))

    LIST_FIELDS = ("category", "kind")

    def __init__(self, *, max_query_length: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_query_length = max_query_length

    @validates("q")
    def _check_q(self, value: str, **kwargs: Any) -> None:
        if len(value) > self.max_query_length:
            raise ValidationError(f"longer than {self.max_query_length} characters")

    @post_load
    def _make_query(self, data: dict[str, Any], **kwargs: Any) -> SearchQuery:
        date_from, date_to = _bounds(data)
        return SearchQuery(
            q=data["q"],
            categories=tuple(data.get("category", ())),
            kinds=tuple(data.get("kind", ())),
            customer_id=data.get("customer_id"),
            owner=data.get("owner"),
            process=data.get("process"),
            date_from=date_from,
            date_to=date_to,
            date_field=data["date_field"],
            sort=data.get("sort"),
            page=data.get("page", 1),
            per_page=data.get("per_page", 20),
        )


class ExportArgsSchema(SearchArgsSchema):
    """Parameters of `GET /export.csv` and of a restore by search: the search's parameters,
    taken as for `GET /search` so that a search's URL can be reused; every match is exported
    or restored, so `page` and `per_page` are checked but do not apply."""


class AuditArgsSchema(Schema):
    """Parameters of `GET /audit`."""

    date_from = Bound(data_key="from")
    date_to = Bound(data_key="to")
    actor = fields.String(validate=Length(min=1, max=128))
    action = fields.String(validate=OneOf(ACTIONS))
    page = PageNumber(load_default=1, validate=Range(min=1, max=MAX_PAGE))
    per_page = PageNumber(load_default=50, validate=Range(min=1, max=MAX_PER_PAGE))

    LIST_FIELDS: tuple[str, ...] = ()

    @post_load
    def _make_filter(self, data: dict[str, Any], **kwargs: Any) -> AuditFilter:
        date_from, date_to = _bounds(data)
        return AuditFilter(
            date_from=date_from,
            date_to=date_to,
            actor=data.get("actor"),
            action=data.get("action"),
            page=data["page"],
            per_page=data["per_page"],
        )


class DisposalArgsSchema(Schema):
    """Parameters of `GET /disposals` and `GET /disposals.csv`."""

    date_from = Bound(data_key="from")
    date_to = Bound(data_key="to")
    category = fields.String(validate=Length(min=1, max=128))
    run_id = fields.String(data_key="run", validate=Length(min=1, max=32))
    page = PageNumber(load_default=1, validate=Range(min=1, max=MAX_PAGE))
    per_page = PageNumber(load_default=50, validate=Range(min=1, max=MAX_PER_PAGE))

    LIST_FIELDS: tuple[str, ...] = ()

    @post_load
    def _make_filter(self, data: dict[str, Any], **kwargs: Any) -> DisposalFilter:
        date_from, date_to = _bounds(data)
        return DisposalFilter(
            date_from=date_from,
            date_to=date_to,
            category=data.get("category"),
            run_id=data.get("run_id"),
            page=data["page"],
            per_page=data["per_page"],
        )


class HoldSchema(Schema):
    """A legal hold: `POST /holds` body, and an item of `GET /holds`."""

    scope = fields.String(required=True, validate=OneOf(SCOPES))
    value = fields.String(required=True, validate=Length(min=1, max=256))
    reason = fields.String(required=True, validate=Length(min=1, max=2000))
    created_at = UtcTimestamp(dump_only=True)

    @validates_schema
    def _check_reason(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("reason", "x").strip():
            raise ValidationError("a legal hold needs a reason", field_name="reason")
        problem = hold_value_problem(data.get("scope", ""), data.get("value", ""))
        if problem is not None and "reason" in data:  # placing one: a hold lifted is as it is
            raise ValidationError(problem, field_name="value")


class PlacedHoldSchema(HoldSchema):
    """Response of `POST /holds`: the hold, and a warning when it holds no record yet."""

    warning = fields.String(dump_only=True)


class HoldListSchema(Schema):
    """Response of `GET /holds`."""

    holds = fields.List(fields.Nested(HoldSchema))


class HitSchema(Schema):
    """One search result."""

    id = fields.String()
    kind = fields.String()
    category = fields.String()
    customer_id = fields.String(allow_none=True)
    owner = fields.String(allow_none=True)
    subject = fields.String()
    status = fields.String()
    created_at = fields.String()
    updated_at = fields.String()
    archived_at = fields.String()
    parent_id = fields.String(allow_none=True)
    process_id = fields.String(allow_none=True)
    score = fields.Float()
    snippet = fields.String(metadata={"description": "HTML-escaped; matches in <mark>"})


class SearchPageSchema(Schema):
    """Response of `GET /search`."""

    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()
    took_ms = fields.Float()
    hits = fields.List(fields.Nested(HitSchema))
    facets = fields.Dict(
        keys=fields.String(), values=fields.Dict(keys=fields.String(), values=fields.Integer())
    )


class ArchiveInfoSchema(Schema):
    """Where and in what state a record is archived."""

    state = fields.String()
    archived_at = UtcTimestamp()
    restored_at = UtcTimestamp(allow_none=True)
    purged_at = UtcTimestamp(attribute="disposed_at", allow_none=True)
    erased_at = UtcTimestamp(allow_none=True)
    segment = fields.Integer(attribute="segment_id")
    version = fields.Integer()
    sha256 = fields.String()


class HistoryEventSchema(Schema):
    """One step of a record's life."""

    at = UtcTimestamp()
    event = fields.String()
    actor = fields.String()
    reason = fields.String(allow_none=True)


class ProcessNodeSchema(Schema):
    """One record of a process."""

    id = fields.String()
    parent_id = fields.String(allow_none=True)
    kind = fields.String(allow_none=True)
    subject = fields.String(allow_none=True)
    state = fields.String(metadata={"description": "active, archived, restored or purged"})


class ProcessSchema(Schema):
    """A record's process: its root and up to 1,000 of its records, parents first."""

    root = fields.String()
    records = fields.List(fields.Nested(ProcessNodeSchema))


class RecordViewSchema(Schema):
    """Response of `GET /records/<id>`; `record` is null once purged."""

    record = fields.Dict(allow_none=True)
    archive = fields.Nested(ArchiveInfoSchema)
    history = fields.List(fields.Nested(HistoryEventSchema))
    process = fields.Nested(ProcessSchema)


class EraseSchema(Schema):
    """Body of `POST /erase`: `customer_id` or `record_id`, a reason, and `dry_run`."""

    customer_id = fields.String(validate=Length(min=1, max=256), load_default=None)
    record_id = fields.String(validate=Length(min=1, max=128), load_default=None)
    reason = fields.String(required=True, validate=Length(min=1, max=500))
    dry_run = JsonBoolean(load_default=False)

    @validates_schema
    def _check_target(self, data: dict[str, Any], **kwargs: Any) -> None:
        if (data.get("customer_id") is None) == (data.get("record_id") is None):
            raise ValidationError("give exactly one of customer_id and record_id")
        if not data.get("reason", "x").strip():
            raise ValidationError("an erasure needs a reason", field_name="reason")


class EraseResultSchema(Schema):
    """Response of `POST /erase`."""

    erased = fields.Integer()
    ids = fields.List(fields.String())
    active_remaining = fields.Integer()
    dry_run = fields.Boolean()


class RestoreResultSchema(Schema):
    """Response of `POST /records/<id>/restore`."""

    id = fields.String()
    state = fields.String()
    restored = fields.List(fields.String(), metadata={"description": "every record restored"})


class RestoreBodySchema(Schema):
    """Body of `POST /records/<id>/restore` (optional)."""

    reason = fields.String(validate=Length(min=1, max=500))


class BulkRestoreBodySchema(Schema):
    """Body of `POST /restore`: ids or a search, a reason, and whether to only count."""

    ids = fields.List(fields.String(validate=Length(min=1, max=128)))
    search = fields.Dict(keys=fields.String())
    reason = fields.String(required=True, validate=Length(min=1, max=500))
    dry_run = JsonBoolean(load_default=False)

    @validates_schema
    def _check_target(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("ids" in data) == ("search" in data):
            raise ValidationError("give either 'ids' or 'search'", field_name="ids")
        if not data.get("reason", "x").strip():
            raise ValidationError("a restore needs a reason", field_name="reason")


class SkippedSchema(Schema):
    """A record a bulk restore skipped, and why."""

    id = fields.String()
    code = fields.String()


class BulkRestoreResultSchema(Schema):
    """Response of `POST /restore`."""

    matched = fields.Integer()
    restored = fields.Function(
        lambda r: len(r.restored), metadata={"type": "integer"}
    )
    processes = fields.Integer()
    ids = fields.Function(
        lambda r: r.restored[:1000],
        metadata={"type": "array", "items": {"type": "string"}, "description": "up to 1,000"},
    )
    skipped = fields.List(fields.Nested(SkippedSchema))
    dry_run = fields.Boolean()


class AuditEntrySchema(Schema):
    """One audit log entry."""

    seq = fields.Integer()
    at = UtcTimestamp()
    actor = fields.String()
    action = fields.String()
    target = fields.String()
    outcome = fields.String()
    details = fields.Dict()


class AuditPageSchema(Schema):
    """Response of `GET /audit`."""

    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()
    entries = fields.List(fields.Nested(AuditEntrySchema))


class DisposalSchema(Schema):
    """One purged record in the disposal list."""

    record_id = fields.String()
    sha256 = fields.String()
    category = fields.String()
    policy = fields.String(metadata={"description": "`default` or `category.<name>`"})
    keep_years = fields.Integer()
    as_of = UtcTimestamp()
    purged_at = UtcTimestamp()
    actor = fields.String()
    run_id = fields.String()  # (as the CSV's column; the filter is `run`)


class DisposalPageSchema(Schema):
    """Response of `GET /disposals`."""

    total = fields.Integer()
    page = fields.Integer()
    per_page = fields.Integer()
    disposals = fields.List(fields.Nested(DisposalSchema))


class LastRunSchema(Schema):
    """The last archive run, as `/stats` reports it."""

    started_at = fields.String()
    finished_at = fields.String(allow_none=True)
    archived = fields.Integer()
    error = fields.String(allow_none=True)


class StatsSchema(Schema):
    """Response of `GET /stats`."""

    active = fields.Integer()
    archived = fields.Integer()
    indexed = fields.Integer()
    restored = fields.Integer()
    purged = fields.Integer()
    last_run = fields.Nested(LastRunSchema, allow_none=True)


class ChecksumSchema(Schema):
    """Response of `GET /export.csv.sha256`."""

    sha256 = fields.String()
    rows = fields.Integer()
    bytes = fields.Integer()
    filename = fields.String()


class HealthSchema(Schema):
    """Response of `GET /healthz`."""

    status = fields.String()
    reason = fields.String()


class ErrorBodySchema(Schema):
    """The inside of every error response."""

    code = fields.String()
    message = fields.String()


class ErrorSchema(Schema):
    """Every error response: `{"error": {"code", "message"}}`."""

    error = fields.Nested(ErrorBodySchema)


def args_to_dict(args: Mapping[str, Any], list_fields: Iterable[str]) -> dict[str, Any]:
    """Query parameters as a plain dict: repeatable ones as lists, others their one value.

    :raises ValidationError: a parameter that is not repeatable given twice (`q=a&q=b`):
        taking the first would act on part of what was asked, a bulk restore included
    """
    getlist = getattr(args, "getlist", None)
    lists = set(list_fields)
    out: dict[str, Any] = {}
    for key in args:
        if key in lists and getlist is not None:
            out[key] = getlist(key)
        elif getlist is not None and len(getlist(key)) > 1:
            raise ValidationError({key: ["given more than once; give it once"]})
        else:
            out[key] = args[key]
    return out


@functools.cache
def _search_args_schema(max_query_length: int, export: bool) -> SearchArgsSchema:
    # Built once: a schema's construction costs about a millisecond, and load() keeps no state.
    cls = ExportArgsSchema if export else SearchArgsSchema
    return cls(max_query_length=max_query_length)


class BadSearchParameters(BadQuery):
    """Search parameters refused before the search runs; `params` names those at fault (a
    form marks their fields, not the query box)."""

    def __init__(self, message: str, params: Iterable[str]) -> None:
        super().__init__(message)
        self.params = tuple(params)


def load_search_query(
    args: Mapping[str, Any], max_query_length: int, *, export: bool = False
) -> SearchQuery:
    """Load search parameters; any bad one is a `BadSearchParameters` (400 `bad_query`)
    naming it."""
    schema = _search_args_schema(max_query_length, export)
    try:
        query: SearchQuery = schema.load(args_to_dict(args, SearchArgsSchema.LIST_FIELDS))
    except ValidationError as e:
        params = e.messages if isinstance(e.messages, dict) else {}
        raise BadSearchParameters(describe_errors(e.messages), params) from None
    return query


def load_restore_query(args: Mapping[str, Any], max_query_length: int) -> SearchQuery:
    """A restore's search: loaded as an export's, but `page` and `per_page` are refused, not
    ignored: a restore by search restores every match, and "page 2" must not restore the rest."""
    for name in ("page", "per_page"):
        if name in args:
            raise BadQuery(f"{name}: a restore by search restores every match; "
                           "page and per_page do not apply")
    return load_search_query(args, max_query_length, export=True)


def describe_errors(messages: Any, prefix: str = "") -> str:
    """Marshmallow's error messages as one line: `field: message; other: message`."""
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            name = "request" if key == "_schema" else str(key)
            parts.append(describe_errors(value, f"{prefix}{name}: " if not prefix else prefix))
        return "; ".join(parts)
    if isinstance(messages, list):
        return "; ".join(describe_errors(m, prefix) for m in messages)
    return f"{prefix}{messages}"
