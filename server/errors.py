"""Every error as the contract's JSON body; the HTTP status of each domain error is decided here."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import unquote_to_bytes

import werkzeug.exceptions
from flask import Flask, Response, g, request
from gunicorn.http.errors import NoMoreData, ParseException
from marshmallow import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from archive_store import (
    AlreadyArchived,
    ArchiveStoreError,
    NotArchived,
    RecordNotFound,
    RestoreInProgress,
    SegmentCorrupt,
    StoreReadOnly,
)
from archivist.errors import ArchivistError, HoldError, InvalidRecord, MomentOutOfRange
from archivist.tokens import TokenError
from indexer.errors import (
    AlreadyActive,
    BadQuery,
    CrmTablesChanged,
    IndexerError,
    IndexUnavailable,
    RestoreRefused,
    TooMany,
)
from indexer.jobs.erasure import OnHold
from indexer.jobs.restore import PlanChanged
from server.schemas import describe_errors

log = logging.getLogger(__name__)

# Looked up along the exception's class hierarchy; a domain error not listed here is a 500.
STATUS: dict[type[Exception], int] = {
    BadQuery: 400,
    TooMany: 400,
    InvalidRecord: 400,
    MomentOutOfRange: 400,
    TokenError: 400,
    RecordNotFound: 404,
    NotArchived: 409,
    RestoreInProgress: 409,
    AlreadyArchived: 409,
    AlreadyActive: 409,
    PlanChanged: 409,
    RestoreRefused: 409,
    HoldError: 409,
    OnHold: 409,
    IndexUnavailable: 503,
    CrmTablesChanged: 503,  # the mapping needs fixing: named, nothing changed
    SegmentCorrupt: 503,  # the archived copy is damaged: named, logged, nothing changed
    StoreReadOnly: 503,  # the archive folder is mounted read-only: reads work, writes wait
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "headers_too_large",
}


class ApiError(Exception):
    """An HTTP-level refusal (auth, limits, encoding) with its status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class Unauthorized(ApiError):
    """No token, or one that is unknown or revoked."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """The token's role does not allow this endpoint."""

    status = 403
    code = "forbidden"


class RateLimited(ApiError):
    """The token made more requests than its rate limit allows."""

    status = 429
    code = "rate_limited"


class BadRequest(ApiError):
    """The request itself is malformed (encoding, body)."""


class ClientTooSlow(TimeoutError):
    """The client stopped sending its request part way (raised by the server's socket reads)."""

    status = 408
    code = "request_timeout"


# What the server raises reading a body sent in malformed chunks, or cut short: a 400.
MALFORMED_BODY = (ParseException, NoMoreData)


def code_for_status(status: int) -> str:
    """The error code of a plain HTTP refusal (`headers_too_large` for 431, ...)."""
    return _HTTP_CODES.get(status, "bad_request" if status < 500 else "internal_error")


def error_body(code: str, message: str) -> dict[str, Any]:
    """The contract's error body."""
    return {"error": {"code": code, "message": message}}


def status_of(error: Exception) -> int:
    """The HTTP status of a domain error: the entry of its nearest listed class, else 500."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def new_request_id() -> str:
    """A fresh request id (sent as `X-Request-Id`)."""
    return uuid.uuid4().hex[:16]


def request_id() -> str:
    """This request's id (also sent as `X-Request-Id` and written to the log)."""
    rid = getattr(g, "request_id", None)
    if rid is None:
        rid = g.request_id = new_request_id()
    return rid


def _is_page_path(path: str) -> bool:
    """A path a person opens in a browser: not the API's, not the health check's."""
    return not (path.startswith("/api/") or path == "/api" or path == "/healthz")


def register_error_handlers(app: Flask) -> None:
    """Answer every error, Flask's own included, with the contract's JSON error body."""

    @app.before_request
    def _assign_request_id() -> None:
        request_id()

    @app.before_request
    def _check_request_text() -> None:
        # Bytes of the path that are not UTF-8 would become U+FFFD on their way to the view,
        # which would then look up a record id nobody sent. (An HTTPException, so
        # that the web pages answer with their own error page.)
        environ = request.environ
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        try:
            if raw is not None:  # as sent, before any server decoded it
                path = raw.split("?", 1)[0].encode("latin-1")
                unquote_to_bytes(path).decode("utf-8")
            else:
                environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise werkzeug.exceptions.BadRequest("the path is not valid UTF-8") from None
        # Werkzeug decodes parameters leniently (bad bytes become U+FFFD): refused instead, so
        # nothing searches for or records text the client did not send.
        if request.query_string:
            try:
                unquote_to_bytes(request.query_string.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                raise werkzeug.exceptions.BadRequest(
                    "the query string is not valid UTF-8"
                ) from None
        # A NUL in a parameter or form field: PostgreSQL's text cannot hold one, so the
        # request's audit entry (which names what was asked) could not be written.
        if "\x00" in request.path:
            raise werkzeug.exceptions.BadRequest("the path holds a NUL character")
        fields = [request.args]
        if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            body = request.get_data(cache=True)  # first: the raw body stays readable after
            if request.mimetype == "application/x-www-form-urlencoded":  # the parse
                try:  # (bad bytes there are kept as the `%FF` text the client sent)
                    unquote_to_bytes(body.replace(b"+", b" ")).decode("utf-8")
                except UnicodeDecodeError:
                    raise werkzeug.exceptions.BadRequest("the form is not valid UTF-8") from None
            fields.append(request.form)
        for values in fields:
            if any("\x00" in k or "\x00" in v for k, v in values.items(multi=True)):
                raise werkzeug.exceptions.BadRequest("a parameter holds a NUL character")

    @app.after_request
    def _send_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = request_id()
        # Answers hold archived customer data (JSON, CSV, error bodies echoing it): kept out
        # of every cache. The UI's stylesheet and script may be cached.
        if request.endpoint != "ui.static":
            response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> tuple[dict[str, Any], int, dict[str, str]]:
        return error_body(e.code, str(e)), e.status, e.headers

    @app.errorhandler(ClientTooSlow)
    def _client_too_slow(e: ClientTooSlow) -> tuple[dict[str, Any], int]:
        return error_body(e.code, str(e)), e.status

    @app.errorhandler(ParseException)
    @app.errorhandler(NoMoreData)
    def _malformed_body(e: Exception) -> tuple[dict[str, Any], int]:
        # Raised by the server's reads of a body sent in bad chunks (a chunk size that is not
        # hex, a missing line break) or cut short: the client's error (gunicorn then closes
        # the connection, whose rest cannot be read as a next request).
        message = f"the request body is malformed ({type(e).__name__}: {e})"
        return error_body("bad_request", message[:300]), 400

    @app.errorhandler(ValidationError)
    def _validation_error(e: ValidationError) -> tuple[dict[str, Any], int]:
        return error_body("bad_request", describe_errors(e.messages)), 400

    def _domain_error(e: Exception) -> tuple[dict[str, Any], int]:
        status = status_of(e)
        if status >= 500 and status != 503:
            return _unexpected(e)
        if status == 503:
            log.error("request %s: %s", request_id(), e)
        return error_body(getattr(e, "code", "error"), str(e)), status

    for base in (ArchivistError, ArchiveStoreError, IndexerError):
        app.register_error_handler(base, _domain_error)

    @app.errorhandler(OperationalError)
    def _database_unavailable(e: OperationalError) -> Any:
        # The active database down, unreachable, locked past the timeout, out of space: the
        # service's condition (as /healthz says), not a bug in the request.
        log.error("request %s: the active database: %s", request_id(), e.orig or e)
        message = f"the active database is unavailable: {str(e.orig or e).strip()[:200]}"
        page = app.extensions.get("archivist_error_page")
        if page is not None and _is_page_path(request.path):
            return (*page(werkzeug.exceptions.ServiceUnavailable(message)), {})
        return error_body("database_unavailable", message), 503, {}

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        status = e.code or 500
        if status >= 500:
            return (*_unexpected(e), {})
        headers = {}
        if status == 405 and e.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
        page = app.extensions.get("archivist_error_page")
        if page is not None and _is_page_path(request.path):
            return (*page(e), headers)
        code = _HTTP_CODES.get(status, "bad_request")
        message = e.description or e.name
        if status == 404:
            message = f"no such endpoint: {request.path}"
        elif status == 413:
            message = f"the request body is over {app.config['MAX_CONTENT_LENGTH']:,} bytes " \
                "(server.max_request_bytes)"
        return error_body(code, message), status, headers

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> tuple[dict[str, Any], int]:
        rid = request_id()
        log.error("request %s %s %s failed", rid, request.method, request.path, exc_info=e)
        return error_body("internal_error", f"internal error (request id {rid})"), 500
