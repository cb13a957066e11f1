"""The OpenAPI 3 document of API v1, generated from the marshmallow schemas with apispec."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from archivist.holds import SCOPES
from archivist.records import ID_PATTERN
from server import schemas

_ERRORS = {
    "400": "Bad parameter, query or body (`bad_query`, `bad_request`, `too_many`)",
    "401": "Missing, unknown or revoked token",
    "403": "The token's role does not allow this",
    "404": "No such archived record (`not_found`)",
    "409": "Conflict with the record's state or the holds (`not_archived`, "
           "`restore_in_progress`, `already_active`, `restore_refused`, `on_hold`, `bad_hold`)",
    "413": "The body is longer than `server.max_request_bytes` (`payload_too_large`)",
    "429": "Rate limit of the token exceeded",
    "503": "The index, a damaged archive segment, a read-only archive folder or CRM tables "
           "that no longer fit the mapping (`index_unavailable`, `segment_corrupt`, "
           "`read_only`, `crm_tables_changed`); nothing was changed",
}
# Answers any request may get, whatever its endpoint: in the document's description.
_ANY_REQUEST = (
    "Any request may also be answered 405 (a method the endpoint does not take, with `Allow`), "
    "408 (a request not sent in time), 414 or 431 (a request line or headers too long), "
    "503 `database_unavailable` (the active database down or unreachable: nothing was "
    "changed); an `/api/v1` request without a live token is 401 first."
)


def _json(schema: type[Schema] | str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    role: str | None,
    ok: dict[str, Any],
    errors: tuple[str, ...] = (),
    parameters: list[dict[str, Any]] | None = None,
    body: type[Schema] | None = None,
    body_required: bool = True,
) -> dict[str, Any]:
    """One operation, answering `ok`, `errors` and, with a `role`, what every API endpoint
    answers: 400 (its parameters are checked), 401, 429, and 403 above the agent role (every
    token has that one)."""
    responses: dict[str, Any] = {"200": ok} if "description" in ok else dict(ok)
    statuses = set(errors)
    if role is not None:
        statuses |= {"400", "401", "429"} | ({"403"} if role != "agent" else set())
    for status in sorted(statuses):
        responses[status] = _json("Error", _ERRORS[status])
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if role is not None:
        op["description"] = f"Needs a token with the `{role}` role (or a higher one)."
        op["security"] = [{"bearer": []}]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    return op


_RECORD_ID = {
    "in": "path",
    "name": "record_id",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"},
}


def build_openapi() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    spec = APISpec(
        title="Archivist API",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Search, read, export and restore archived CRM records. "
              + _ANY_REQUEST},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    search_args = [{"in": "query", "schema": schemas.SearchArgsSchema}]
    export_args = [{"in": "query", "schema": schemas.ExportArgsSchema}]
    paths: dict[str, dict[str, Any]] = {
        "/healthz": {
            "get": _operation(
                "Liveness and readiness: can the database and the index be read",
                None,
                {
                    "200": _json(schemas.HealthSchema, "Healthy"),
                    "503": _json(schemas.HealthSchema, "Database or index cannot be read"),
                },
                (),
            )
        },
        "/api/v1/search": {
            "get": _operation(
                "Search the archive",
                "agent",
                _json(schemas.SearchPageSchema, "One page of hits, the total and facets"),
                ("503",),
                search_args,
            )
        },
        "/api/v1/records/{record_id}": {
            "get": _operation(
                "An archived record, its archive state and its history",
                "agent",
                _json(schemas.RecordViewSchema, "The record"),
                ("404", "503"),
                [_RECORD_ID],
            )
        },
        "/api/v1/records/{record_id}/restore": {
            "post": _operation(
                "Restore an archived record and the rest of its process to the active database",
                "admin",
                _json(schemas.RestoreResultSchema, "Restored"),
                ("404", "409", "413", "503"),
                [_RECORD_ID],
                body=schemas.RestoreBodySchema,
                body_required=False,
            )
        },
        "/api/v1/erase": {
            "post": _operation(
                "Erase a customer's or one record's archived text for good (GDPR/CCPA)",
                "admin",
                _json(schemas.EraseResultSchema, "Erased (or, in a dry run, would be)"),
                ("404", "409", "413", "503"),
                body=schemas.EraseSchema,
            )
        },
        "/api/v1/restore": {
            "post": _operation(
                "Restore archived records, by ids or by a search, with the rest of their "
                "processes (`too_many` above `server.max_bulk_restore`)",
                "admin",
                _json(schemas.BulkRestoreResultSchema, "Restored, or counted in a dry run"),
                ("409", "413", "503"),
                body=schemas.BulkRestoreBodySchema,
            )
        },
        "/api/v1/export.csv": {
            "get": _operation(
                "Every matching record as CSV, streamed",
                "auditor",
                {
                    "description": "CSV with a header row",
                    "content": {"text/csv": {"schema": {"type": "string"}}},
                },
                ("503",),
                export_args,
            )
        },
        "/api/v1/export.csv.sha256": {
            "get": _operation(
                "SHA-256 of what /export.csv sends for the same parameters",
                "auditor",
                _json(schemas.ChecksumSchema, "Checksum"),
                ("503",),
                export_args,
            )
        },
        "/api/v1/audit": {
            "get": _operation(
                "The audit log, newest first",
                "auditor",
                _json(schemas.AuditPageSchema, "One page of entries"),
                (),
                [{"in": "query", "schema": schemas.AuditArgsSchema}],
            )
        },
        "/api/v1/disposals": {
            "get": _operation(
                "Proof of disposal: the records disposal runs purged, newest first",
                "auditor",
                _json(schemas.DisposalPageSchema, "One page of purged records"),
                (),
                [{"in": "query", "schema": schemas.DisposalArgsSchema}],
            )
        },
        "/api/v1/disposals.csv": {
            "get": _operation(
                "The disposal list as CSV (every page; the same filters)",
                "auditor",
                {"description": "CSV with a header row: "
                 "record_id, sha256, category, policy, keep_years, as_of, purged_at, actor, run",
                 "content": {"text/csv": {"schema": {"type": "string"}}}},
                (),
                [{"in": "query", "schema": schemas.DisposalArgsSchema}],
            )
        },
        "/api/v1/stats": {
            "get": _operation(
                "Counts and the last worker run",
                "agent",
                _json(schemas.StatsSchema, "Counts"),
                (),
            )
        },
        "/api/v1/holds": {
            "get": _operation(
                "The legal holds in force",
                "admin",
                _json(schemas.HoldListSchema, "Holds"),
                (),
            ),
            "post": _operation(
                "Place a legal hold",
                "admin",
                {"201": _json(schemas.PlacedHoldSchema, "Placed")},
                ("409", "413"),
                body=schemas.HoldSchema,
            ),
        },
        "/api/v1/holds/{scope}/{value}": {
            "delete": _operation(
                "Lift a legal hold",
                "admin",
                {"204": {"description": "Lifted"}},
                ("409",),
                [
                    {
                        "in": "path",
                        "name": "scope",
                        "required": True,
                        "schema": {"type": "string", "enum": list(SCOPES)},
                    },
                    {
                        "in": "path",
                        "name": "value",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                    },
                ],
            )
        },
        "/api/v1/openapi.json": {
            "get": _operation(
                "This document",
                "agent",
                {"200": {"description": "OpenAPI 3 document"}},
                (),
            )
        },
    }
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
