"""The JSON API v1: each handler loads its arguments, calls one function and dumps the result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context

from indexer.errors import BadQuery
from indexer.hold_reach import no_record_held
from indexer.search import SearchQuery
from server import actions
from server.auth import current_token, require_role
from server.bodies import load_json_body, load_json_object
from server.errors import BadRequest
from server.schemas import (
    AuditArgsSchema,
    AuditPageSchema,
    BulkRestoreBodySchema,
    BulkRestoreResultSchema,
    ChecksumSchema,
    DisposalArgsSchema,
    DisposalPageSchema,
    EraseResultSchema,
    EraseSchema,
    HoldListSchema,
    HoldSchema,
    PlacedHoldSchema,
    RecordViewSchema,
    RestoreBodySchema,
    RestoreResultSchema,
    SearchArgsSchema,
    SearchPageSchema,
    StatsSchema,
    args_to_dict,
    load_restore_query,
    load_search_query,
)

bp = Blueprint("api", __name__)
_SEARCH_PAGE = SearchPageSchema()  # built once: construction costs about a millisecond


def actor() -> actions.Actor:
    """The acting token and the app's services."""
    ext = current_app.extensions
    services = ext["archivist"]
    return actions.Actor(current_token().name, services, ext["archivist_audit"],
                         recheck_seconds=services.config.server.token_cache_seconds)


def search_query(*, export: bool = False) -> SearchQuery:
    """This request's search parameters (a bad one raises `BadQuery`)."""
    max_length = current_app.extensions["archivist"].config.server.max_query_length
    try:
        return load_search_query(request.args, max_length, export=export)
    except BadQuery as e:
        action = "export" if export else "search"
        actions.audit_refused_query(actor(), action, request.args.get("q", ""), e)
        raise


# Endpoints that take no query parameters: one sent to them is refused, as on the others, not
# ignored (a client sending `?page=2` or a misspelt filter learns it had no effect).
_WITHOUT_PARAMETERS = frozenset({
    "api.record", "api.restore", "api.erase", "api.bulk_restore", "api.stats", "api.holds",
    "api.place_hold", "api.lift_hold", "api.openapi",
})


@bp.before_request
def _refuse_parameters_nowhere_taken() -> None:
    if request.args and request.endpoint in _WITHOUT_PARAMETERS:
        names = ", ".join(sorted(request.args))
        raise BadRequest(f"unknown parameters: {names} (this endpoint takes none)")


@bp.get("/search")
@require_role("agent")
def search() -> Any:
    """Search the archive."""
    page = actions.search(actor(), search_query())
    return _SEARCH_PAGE.dump(page)


@bp.get("/records/<record_id>")
@require_role("agent")
def record(record_id: str) -> Any:
    """One archived record with its archive state and history."""
    view = actions.read_record(actor(), record_id)
    return RecordViewSchema().dump(view)


@bp.post("/records/<record_id>/restore")
@require_role("admin")
def restore(record_id: str) -> Any:
    """Put an archived record and the rest of its process back into the active database."""
    # the raw body: `request.data` is empty for a form-encoded one, whose reason would be lost
    body = load_json_body() if request.get_data(cache=True) else {}
    data = RestoreBodySchema().load(body)
    result = actions.restore(actor(), record_id, data.get("reason"))
    return RestoreResultSchema().dump(result)


@bp.post("/erase")
@require_role("admin")
def erase() -> Any:
    """Erase a customer's or one record's archived text for good (GDPR/CCPA)."""
    data = EraseSchema().load(load_json_body())
    report = actions.erase(
        actor(), data["customer_id"], data["record_id"], data["reason"].strip(), data["dry_run"]
    )
    return EraseResultSchema().dump(report)


@bp.post("/restore")
@require_role("admin")
def bulk_restore() -> Any:
    """Restore archived records, by ids or by a search, with the rest of their processes."""
    data = BulkRestoreBodySchema().load(load_json_body())
    services = current_app.extensions["archivist"]
    query = None
    if "search" in data:
        search = {  # a single category or kind may be given as a string
            k: [v] if k in SearchArgsSchema.LIST_FIELDS and isinstance(v, str) else v
            for k, v in data["search"].items()
        }
        query = load_restore_query(search, services.config.server.max_query_length)
    report = actions.bulk_restore(
        actor(), data["reason"].strip(), ids=data.get("ids"), query=query,
        dry_run=data["dry_run"], limit=services.config.server.max_bulk_restore,
    )
    return BulkRestoreResultSchema().dump(report)


@bp.get("/export.csv")
@require_role("auditor")
def export_csv() -> Response:
    """Every matching record as CSV, streamed; to a HEAD, the headers alone."""
    query = search_query(export=True)
    filename = actions.export_filename(query)
    return Response(
        head_or(lambda: stream_with_context(actions.export(actor(), query)),
                lambda: actions.check_export(actor(), query)),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


def head_or(stream: Callable[[], Iterator[bytes]], check: Callable[[], None]) -> Iterator[bytes]:
    """The body of a streamed answer, or to a HEAD none, without running what makes it: a
    HEAD would otherwise run an export (audited) whose rows the server then drops unsent.
    A HEAD still runs `check`, which refuses what the GET would refuse before its first byte.
    (An iterator, not `()`: an empty sequence would be answered `Content-Length: 0`.)"""
    if request.method != "HEAD":
        return stream()
    check()
    return iter(())


@bp.get("/export.csv.sha256")
@require_role("auditor")
def export_checksum() -> Any:
    """The SHA-256 of what `/export.csv` sends for the same parameters."""
    result = actions.export_checksum(actor(), search_query(export=True))
    return ChecksumSchema().dump(result)


@bp.get("/audit")
@require_role("auditor")
def audit() -> Any:
    """Who searched, read, exported, restored and held what, when."""
    selection = AuditArgsSchema().load(args_to_dict(request.args, AuditArgsSchema.LIST_FIELDS))
    page = actions.read_audit(actor(), selection)
    return AuditPageSchema().dump(page)


@bp.get("/disposals")
@require_role("auditor")
def disposals() -> Any:
    """Proof of disposal: which records disposal runs purged, with hash, category and policy."""
    selection = DisposalArgsSchema().load(args_to_dict(request.args, ()))
    return DisposalPageSchema().dump(actions.read_disposals(actor(), selection))


@bp.get("/disposals.csv")
@require_role("auditor")
def disposals_csv() -> Response:
    """The disposal list (the same filters, every page) as CSV, streamed."""
    selection = DisposalArgsSchema().load(args_to_dict(request.args, ()))
    return Response(
        stream_with_context(actions.export_disposals(actor(), selection)),
        mimetype="text/csv",
        headers={
            "Content-Disposition": 'attachment; filename="disposals.csv"',
            "Cache-Control": "no-store",
        },
    )


@bp.get("/stats")
@require_role("agent")
def stats() -> Any:
    """Counts of active, archived, indexed, restored and purged records; the last run."""
    return StatsSchema().dump(actions.stats(actor()))


@bp.get("/holds")
@require_role("admin")
def holds() -> Any:
    """The legal holds in force."""
    return HoldListSchema().dump({"holds": actions.holds(actor())})


@bp.post("/holds")
@require_role("admin")
def place_hold() -> Any:
    """Place a legal hold: `{"scope", "value", "reason"}`."""
    data = HoldSchema().load(load_json_object())
    hold = actions.place_hold(actor(), data["scope"], data["value"], data["reason"].strip())
    placed = PlacedHoldSchema().dump(hold)
    if not actions.hold_reaches_a_record(actor(), data["scope"], data["value"]):
        placed["warning"] = no_record_held(data["scope"], data["value"])
    return placed, 201


@bp.delete("/holds/<scope>/<path:value>")
@require_role("admin")
def lift_hold(scope: str, value: str) -> Any:
    """Lift a legal hold."""
    data = HoldSchema(only=("scope", "value")).load({"scope": scope, "value": value})
    actions.lift_hold(actor(), data["scope"], data["value"])
    return "", 204


@bp.get("/openapi.json")
@require_role("agent")
def openapi() -> Any:
    """The OpenAPI 3 document of this API, generated from the schemas."""
    return current_app.extensions["archivist_openapi"]
