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
    "400": "Bad parameter or query (`bad_query`, `bad_request`)",
    "401": "Missing, unknown or revoked token",
    "403": "The token's role does not allow this",
    "404": "Not found",
    "409": "Conflict with the record's state",
    "429": "Rate limit of the token exceeded",
}


def _json(schema: type[Schema] | str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    role: str | None,
    ok: dict[str, Any],
    errors: tuple[str, ...],
    parameters: list[dict[str, Any]] | None = None,
    body: type[Schema] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok} if "description" in ok else ok
    for status in errors:
        responses[status] = _json("Error", _ERRORS[status])
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if role is not None:
        op["description"] = f"Needs a token with the `{role}` role (or a higher one)."
        op["security"] = [{"bearer": []}]
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return op


_RECORD_ID = {
    "in": "path",
    "name": "record_id",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"},
}
_AUTH = ("401", "403", "429")


def build_openapi() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    spec = APISpec(
        title="Archivist API",
        version="1.0.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Search, read, export and restore archived CRM records."},
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
                ("400", *_AUTH),
                search_args,
            )
        },
        "/api/v1/records/{record_id}": {
            "get": _operation(
                "An archived record, its archive state and its history",
                "agent",
                _json(schemas.RecordViewSchema, "The record"),
                (*_AUTH, "404"),
                [_RECORD_ID],
            )
        },
        "/api/v1/records/{record_id}/restore": {
            "post": _operation(
                "Restore an archived record and the rest of its process to the active database",
                "admin",
                _json(schemas.RestoreResultSchema, "Restored"),
                (*_AUTH, "404", "409"),
                [_RECORD_ID],
            )
        },
        "/api/v1/erase": {
            "post": _operation(
                "Erase a customer's or one record's archived text for good (GDPR/CCPA)",
                "admin",
                _json(schemas.EraseResultSchema, "Erased (or, in a dry run, would be)"),
                ("400", *_AUTH, "404", "409"),
                body=schemas.EraseSchema,
            )
        },
        "/api/v1/restore": {
            "post": _operation(
                "Restore archived records, by ids or by a search, with the rest of their "
                "processes (`too_many` above `server.max_bulk_restore`)",
                "admin",
                _json(schemas.BulkRestoreResultSchema, "Restored, or counted in a dry run"),
                ("400", *_AUTH),
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
                ("400", *_AUTH),
                export_args,
            )
        },
        "/api/v1/export.csv.sha256": {
            "get": _operation(
                "SHA-256 of what /export.csv sends for the same parameters",
                "auditor",
                _json(schemas.ChecksumSchema, "Checksum"),
                ("400", *_AUTH),
                export_args,
            )
        },
        "/api/v1/audit": {
            "get": _operation(
                "The audit log, newest first",
                "auditor",
                _json(schemas.AuditPageSchema, "One page of entries"),
                ("400", *_AUTH),
                [{"in": "query", "schema": schemas.AuditArgsSchema}],
            )
        },
        "/api/v1/disposals": {
            "get": _operation(
                "Proof of disposal: the records disposal runs purged, newest first",
                "auditor",
                _json(schemas.DisposalPageSchema, "One page of purged records"),
                ("400", *_AUTH),
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
                ("400", *_AUTH),
                [{"in": "query", "schema": schemas.DisposalArgsSchema}],
            )
        },
        "/api/v1/stats": {
            "get": _operation(
                "Counts and the last worker run",
                "agent",
                _json(schemas.StatsSchema, "Counts"),
                _AUTH,
            )
        },
        "/api/v1/holds": {
            "get": _operation(
                "The legal holds in force",
                "admin",
                _json(schemas.HoldListSchema, "Holds"),
                _AUTH,
            ),
            "post": _operation(
                "Place a legal hold",
                "admin",
                {"201": _json(schemas.PlacedHoldSchema, "Placed")},
                ("400", *_AUTH, "409"),
                body=schemas.HoldSchema,
            ),
        },
        "/api/v1/holds/{scope}/{value}": {
            "delete": _operation(
                "Lift a legal hold",
                "admin",
                {"204": {"description": "Lifted"}},
                ("400", *_AUTH, "404", "409"),
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
                _AUTH,
            )
        },
    }
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
