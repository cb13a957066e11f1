"""The web UI's session: sign-in with an API token, the session cookie and its key, CSRF,
security headers, error pages and the role check every page goes through."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sansio.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from archive_store import ArchiveStoreError
from archivist.active_db import utcnow
from archivist.config import Config
from archivist.errors import ArchivistError
from archivist.tokens import TokenInfo
from indexer.errors import IndexerError
from server import actions
from server.auth import TokenLookup, audit_denied
from server.errors import MALFORMED_BODY, request_id, status_of
from server.limits import RateLimiter
from server.ui import bp
from server.ui.filters import (
    compact_json,
    counted,
    date_input_type,
    format_when,
    mark_chinese,
    pretty_json,
    search_url,
    show_invisible,
    source_table,
    toggle_url,
    url_with,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

SECRET_KEY_FILE = "ui-secret-key"
SESSION_HOURS = 12
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOMAIN_ERRORS = (ArchivistError, ArchiveStoreError, IndexerError)


@bp.record_once
def _configure_app(state: BlueprintSetupState) -> None:
    """Give the app a secret key and safe session-cookie settings."""
    app = state.app
    config: Config = app.extensions["archivist"].config
    if not app.secret_key:
        app.secret_key = config.server.secret_key or load_secret_key(secret_key_path(config))
    app.config.update(
        SESSION_COOKIE_NAME="archivist_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.server.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    app.jinja_env.filters["utc"] = format_when
    app.jinja_env.filters["counted"] = counted
    app.jinja_env.filters["date_input_type"] = date_input_type
    app.jinja_env.filters["pretty_json"] = pretty_json
    app.jinja_env.filters["compact_json"] = compact_json
    app.jinja_env.filters["zh"] = mark_chinese
    app.jinja_env.filters["visible"] = show_invisible


def secret_key_path(config: Config) -> Path:
    """Where the generated session key lives: next to a SQLite database, else by the archive."""
    url = config.active_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        return Path(url[len(prefix) :].split("?", 1)[0]).parent / SECRET_KEY_FILE
    return config.archive_dir.parent / SECRET_KEY_FILE


def load_secret_key(path: Path) -> str:
    """Read the session key from `path`, creating it (mode 0600) on first use.

    Kept on disk so that a restart, or another server process, keeps everyone signed in. The
    key is written to a private file first and then linked into place, so a process that
    starts at the same moment reads either no file or the whole key, never an empty one.
    """
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:  # another process published its key first: use theirs
            return path.read_text(encoding="ascii").strip()
    finally:
        draft.unlink(missing_ok=True)
    return key


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "search_url": search_url,
        "toggle_url": toggle_url,
        "url_with": url_with,
        "source_table": source_table,
    }


@bp.context_processor
def _signed_in() -> dict[str, Any]:
    return {"me": g.get("ui_token")}


@bp.before_request
def _load_signed_in_token() -> None:
    g.ui_token = None
    session_id = session.get("sid")
    if not isinstance(session_id, str) or not session_id or len(session_id) > 128:
        return
    info = actions.web_session_token(current_app.extensions["archivist"], session_id, utcnow())
    if info is None:  # signed out elsewhere, expired, or its token revoked since sign-in
        session.pop("sid", None)
        return
    g.ui_token = info


@bp.before_request
def _check_csrf() -> ResponseReturnValue | None:
    """Refuse a form another site may have sent. After `_load_signed_in_token`, so that the
    refusal's page still says who is signed in."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    if request.endpoint == "ui.sign_out":
        # Always allowed: a form from an older tab must still end the session, and another
        # site signing someone out can do no more than that.
        return None
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    if isinstance(expected, str) and hmac.compare_digest(expected, given):
        return None
    log.warning("request %s: CSRF token missing or wrong on %s", request_id(), request.path)
    if request.endpoint == "ui.sign_in":  # a sign-in page from before another tab signed in
        next_url = local_path(request.values.get("next"), url_for("ui.search"))
        error = "The sign-in form was out of date (signed in or out in another tab): sign in again."
        return render_template("ui/sign_in.html", next_url=next_url, error=error), 400
    abort(403, "The form's security token is missing or out of date. Reload and try again.")


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "ui.static":
        # Pages show archived customer data: keep them out of shared and back-forward caches.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.record_once
def _offer_error_page(state: Any) -> None:
    # For a page path no route of this site matched (or not with this method): a person who
    # typed it or reopened a form's address gets a page, not the API's JSON.
    state.app.extensions["archivist_error_page"] = _error_page


@bp.errorhandler(Exception)
def _error_page(e: Exception) -> tuple[str, int]:
    if isinstance(e, HTTPException):
        status = e.code or 500
        message = e.description or e.name
        if status == 404:
            message = "There is no such page."
        elif status == 405:
            message = ("This address is where a form sends its answer; it cannot be opened "
                       "on its own. Go back to the page the form was on.")
    elif isinstance(e, DOMAIN_ERRORS):
        status = status_of(e)
        message = str(e)
    elif isinstance(e, MALFORMED_BODY):
        status, message = 400, "The form was sent in malformed pieces (a broken connection?)."
    else:
        status = 500
    if status >= 500 and status != 503:
        log.error("request %s %s %s failed", request_id(), request.method, request.path, exc_info=e)
        message = f"Something went wrong on our side (request id {request_id()})."
    if "ui_token" not in g and status < 500:
        # a path no page of this site has (404), or not with this method (405): no page's
        # steps ran, so who is signed in is looked up here, for the page's header and links
        _load_signed_in_token()
    return render_template("ui/error.html", status=status, message=message,
                           me=g.get("ui_token")), status


def started_here(view: F) -> F:
    """Refuse a GET that does work in the user's name (an export) when another site started
    it: the session cookie rides along on a cross-site navigation (`SameSite=Lax`), so a page
    elsewhere could run an export, audited under the user's name, without a click here."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if started_elsewhere():
            abort(403, "Start this from Archivist's own pages, not from a link on another site.")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def started_elsewhere() -> bool:
    """Whether the browser says another site started this request.

    `Sec-Fetch-Site` says so where the browser sends it; browsers send none over plain HTTP
    (except to localhost), and older ones none at all, so then the `Origin`, else the `Referer`,
    is compared with the host this request was sent to (not the scheme: behind a proxy that
    ends TLS, the server sees HTTP). An unreadable one (`Origin: null`) counts as another
    site's; a request with none of them (a typed address, a referrer withheld) is let in.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site:
        return site in ("cross-site", "same-site")
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value:
            return urlsplit(value).netloc.lower() != request.host.lower()
    return False


def require_ui_role(role: str) -> Callable[[F], F]:
    """Let a request through only for a signed-in token whose role includes `role`."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token: TokenInfo | None = g.ui_token
            if token is None:
                if request.method == "GET":
                    return redirect(url_for("ui.sign_in", next=current_path()))
                abort(401, "Please sign in first.")
            if not token.allows(role):
                log.warning(
                    "request %s: 403 %s %s by token %r: needs role %s, has %s",
                    request_id(),
                    request.method,
                    request.path,
                    token.name,
                    role,
                    token.role,
                )
                audit_denied(token, role)
                abort(403, f"This needs the {role} role; you are signed in as {token.role}.")
            limiter: RateLimiter = current_app.extensions["archivist_limiter"]
            if limiter.take(token.name) is not None:
                abort(429, "Too many requests; wait a moment and try again.")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_path() -> str:
    query = request.query_string.decode("utf-8", "replace")
    return request.path + (f"?{query}" if query else "")


def local_path(target: str | None, default: str) -> str:
    """`target` if it is a path on this site (no scheme, no host), else `default`.

    Control characters are refused outright: `urlsplit` drops tabs and newlines before it
    looks, and a redirect cannot carry them.
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if not target.isprintable():
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


@bp.get("/")
def home() -> ResponseReturnValue:
    """The start page is the search page."""
    return redirect(url_for("ui.search"))


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Sign in with an API token."""
    next_url = local_path(request.values.get("next"), url_for("ui.search"))
    if request.method == "GET":
        return render_template("ui/sign_in.html", next_url=next_url, error=None)
    secret = request.form.get("token", "").strip()
    info = None
    if secret and len(secret) <= 256 and secret.isascii():
        lookup: TokenLookup = current_app.extensions["archivist_tokens"]
        info = lookup.find(secret)
    if info is None:
        log.warning("request %s: UI sign-in with an unknown or revoked token", request_id())
        error = "That token is unknown or revoked."
        return render_template("ui/sign_in.html", next_url=next_url, error=error,
                               bad_token=True), 401
    # The cookie holds a server-side session id, never the token: a copied cookie is not a
    # copied API token, and signing out ends it.
    session_id = actions.open_web_session(
        current_app.extensions["archivist"], secret, utcnow(), timedelta(hours=SESSION_HOURS)
    )
    if session_id is None:  # revoked a moment ago
        error = "That token is unknown or revoked."
        return render_template("ui/sign_in.html", next_url=next_url, error=error,
                               bad_token=True), 401
    previous = session.get("sid")
    if isinstance(previous, str) and previous:  # signing in again ends the one before
        actions.close_web_session(current_app.extensions["archivist"], previous)
    session.clear()  # no fixation: a fresh session (and CSRF token) for the signed-in user
    session.permanent = True
    session["sid"] = session_id
    csrf_token()
    log.info("request %s: UI sign-in by token %r (%s)", request_id(), info.name, info.role)
    return redirect(next_url, 303)


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    """End the server-side session; the session cookie is emptied."""
    session_id = session.get("sid")
    if isinstance(session_id, str) and session_id:
        actions.close_web_session(current_app.extensions["archivist"], session_id)
    session.clear()
    flash("You are signed out.", "success")
    return redirect(url_for("ui.sign_in"), 303)
