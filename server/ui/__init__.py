"""The web UI: server-rendered pages for agents, auditors and admins.

Every page calls the same functions as the JSON API (`server.actions`), so searches, reads,
exports, restores and hold changes made here land in the same audit log. Sign-in is with an API
token, kept in Flask's signed session cookie (HttpOnly, SameSite=Lax, Secure when configured)
and looked up again on every request, so a revoked token stops working here too. Every POST
carries a per-session CSRF token.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.sansio.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from archive_store import ArchiveStoreError
from archivist.audit import ACTIONS, AuditFilter
from archivist.config import Config
from archivist.errors import ArchivistError
from archivist.holds import SCOPES
from archivist.tokens import TokenInfo
from indexer.errors import BadQuery, IndexerError
from indexer.jobs.runs import last_run, run_archive_job, run_dispose_job
from indexer.search import DATE_FIELDS, SORTS, SearchQuery
from indexer.search.dates import parse_bound
from indexer.services import Services
from server import actions
from server.auth import TokenLookup
from server.errors import request_id, status_of
from server.limits import RateLimiter
from server.schemas import (
    AuditArgsSchema,
    HoldSchema,
    args_to_dict,
    describe_errors,
    load_search_query,
)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint(
    "ui",
    __name__,
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/assets",
)

SECRET_KEY_FILE = "ui-secret-key"
SESSION_HOURS = 12
PER_PAGE_CHOICES = (10, 20, 50, 100)
SEARCH_PARAMS = (
    "q",
    "category",
    "kind",
    "customer_id",
    "owner",
    "from",
    "to",
    "date_field",
    "sort",
    "page",
    "per_page",
)
EXPORT_PARAMS = tuple(p for p in SEARCH_PARAMS if p not in ("page", "per_page"))
AUDIT_PARAMS = ("from", "to", "actor", "action", "page", "per_page")
DATE_FIELD_LABELS = {
    "created_at": "Created",
    "updated_at": "Last updated",
    "archived_at": "Archived",
}
SORT_LABELS = {"relevance": "Relevance", "newest": "Newest first", "oldest": "Oldest first"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DOMAIN_ERRORS = (ArchivistError, ArchiveStoreError, IndexerError)


# --- setup ------------------------------------------------------------------------------------


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
    app.jinja_env.filters["pretty_json"] = pretty_json
    app.jinja_env.filters["compact_json"] = compact_json


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


# --- template helpers -------------------------------------------------------------------------


def format_when(value: datetime | str | None) -> str:
    """A timestamp for people: `2024-03-05 14:07 UTC` (empty for None)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def pretty_json(value: Any) -> str:
    """JSON for reading: indented, non-ASCII kept (escaped by the template, like all text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def compact_json(value: Any) -> str:
    """JSON on one line, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def current_args(names: Iterable[str]) -> MultiDict[str, str]:
    """This request's parameters among `names`, without empty values."""
    allowed = set(names)
    return MultiDict(
        [(k, v) for k, v in request.args.items(multi=True) if k in allowed and v.strip()]
    )


def url_with(endpoint: str, names: Iterable[str], **changes: Any) -> str:
    """The URL of `endpoint` with this request's `names` parameters, some changed.

    A change to None removes the parameter; a list sets every value of it.
    """
    args = current_args(names)
    for key, value in changes.items():
        args.poplist(key)
        if value is None:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            args.add(key, str(item))
    query = urlencode(list(args.items(multi=True)))
    return url_for(endpoint) + (f"?{query}" if query else "")


def search_url(**changes: Any) -> str:
    """The search page with the current search, some parameters changed (page reset)."""
    changes.setdefault("page", None)
    return url_with("ui.search", SEARCH_PARAMS, **changes)


def toggle_url(name: str, value: str) -> str:
    """The current search with `value` added to or removed from the list parameter `name`."""
    values = request.args.getlist(name)
    values = [v for v in values if v != value] if value in values else [*values, value]
    return search_url(**{name: values})


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "search_url": search_url,
        "toggle_url": toggle_url,
        "url_with": url_with,
    }


@bp.context_processor
def _signed_in() -> dict[str, Any]:
    return {"me": g.get("ui_token")}


# --- requests: who is signed in, CSRF, headers, errors ----------------------------------------


@bp.before_request
def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected, given):
        log.warning("request %s: CSRF token missing or wrong on %s", request_id(), request.path)
        abort(403, "The form's security token is missing or out of date. Reload and try again.")


@bp.before_request
def _load_signed_in_token() -> None:
    g.ui_token = None
    secret = session.get("token")
    if not isinstance(secret, str) or not secret:
        return
    lookup: TokenLookup = current_app.extensions["archivist_tokens"]
    info = lookup.find(secret)
    if info is None:  # revoked since sign-in
        session.pop("token", None)
        return
    g.ui_token = info


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


@bp.errorhandler(Exception)
def _error_page(e: Exception) -> tuple[str, int]:
    if isinstance(e, HTTPException):
        status = e.code or 500
        message = e.description or e.name
        if status == 404:
            message = "There is no such page."
    elif isinstance(e, _DOMAIN_ERRORS):
        status = status_of(e)
        message = str(e)
    else:
        status = 500
    if status >= 500 and status != 503:
        log.error("request %s %s %s failed", request_id(), request.method, request.path, exc_info=e)
        message = f"Something went wrong on our side (request id {request_id()})."
    return render_template("ui/error.html", status=status, message=message), status


def require_ui_role(role: str) -> Callable[[F], F]:
    """Let a request through only for a signed-in token whose role includes `role`."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token: TokenInfo | None = g.ui_token
            if token is None:
                if request.method == "GET":
                    return redirect(url_for("ui.sign_in", next=_here()))
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
                abort(403, f"This needs the {role} role; you are signed in as {token.role}.")
            limiter: RateLimiter = current_app.extensions["archivist_limiter"]
            if limiter.take(token.name) is not None:
                abort(429, "Too many requests; wait a moment and try again.")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _here() -> str:
    query = request.query_string.decode("utf-8", "replace")
    return request.path + (f"?{query}" if query else "")


def _local_path(target: str | None, default: str) -> str:
    """`target` if it is a path on this site (no scheme, no host), else `default`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    return default if parts.scheme or parts.netloc else target


def _actor() -> actions.Actor:
    ext = current_app.extensions
    token: TokenInfo = g.ui_token
    return actions.Actor(token.name, ext["archivist"], ext["archivist_audit"])


def _services() -> Services:
    services: Services = current_app.extensions["archivist"]
    return services


def _canonical_redirect(names: Iterable[str]) -> ResponseReturnValue | None:
    """Redirect to the same page without empty or unknown parameters (tidy, bookmarkable URLs)."""
    kept = list(current_args(names).items(multi=True))
    if len(kept) == len(list(request.args.items(multi=True))):
        return None
    query = urlencode(kept)
    return redirect(request.path + (f"?{query}" if query else ""))


# --- sign-in ----------------------------------------------------------------------------------


@bp.get("/")
def home() -> ResponseReturnValue:
    """The start page is the search page."""
    return redirect(url_for("ui.search"))


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Sign in with an API token."""
    next_url = _local_path(request.values.get("next"), url_for("ui.search"))
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
        return render_template("ui/sign_in.html", next_url=next_url, error=error), 401
    session.clear()  # no fixation: a fresh session (and CSRF token) for the signed-in user
    session.permanent = True
    session["token"] = secret
    csrf_token()
    log.info("request %s: UI sign-in by token %r (%s)", request_id(), info.name, info.role)
    return redirect(next_url, 303)


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    """Forget the token; the session cookie is emptied."""
    session.clear()
    flash("You are signed out.", "success")
    return redirect(url_for("ui.sign_in"), 303)


# --- search, export ---------------------------------------------------------------------------


_known_lock = threading.Lock()


def known_categories(services: Services) -> list[str]:
    """Every category in the index (facets of the match-all search), cached for a minute."""
    now = time.monotonic()
    cache: dict[str, tuple[float, list[str]]] = current_app.extensions.setdefault(
        "archivist_ui_cache", {}
    )
    with _known_lock:
        hit = cache.get("categories")
    if hit is not None and hit[0] > now:
        return hit[1]
    page = services.index.search(SearchQuery(per_page=1))
    names = sorted(page.facets.get("category", {}))
    with _known_lock:
        cache["categories"] = (now + 60.0, names)
    return names


@bp.get("/search")
@require_ui_role("agent")
def search() -> Any:
    """Search the archive; the whole state of the page is in the URL."""
    tidy = _canonical_redirect(SEARCH_PARAMS)
    if tidy is not None:
        return tidy
    services = _services()
    args = current_args(SEARCH_PARAMS)
    error = None
    page = None
    try:
        query = load_search_query(args, services.config.server.max_query_length)
        page = actions.search(_actor(), query)
    except BadQuery as e:
        error = str(e)
    selected = {"category": args.getlist("category"), "kind": args.getlist("kind")}
    categories = sorted(
        set(known_categories(services))
        | set(services.config.retention.categories)
        | set(selected["category"])
    )
    kinds = sorted(set(services.config.kinds) | set(selected["kind"]))
    pages = 0
    if page is not None:
        pages = max(1, math.ceil(page.total / page.per_page))
    body = render_template(
        "ui/search.html",
        args=args,
        page=page,
        pages=pages,
        error=error,
        selected=selected,
        categories=categories,
        kinds=kinds,
        date_fields=[(f, DATE_FIELD_LABELS.get(f, f)) for f in DATE_FIELDS],
        sorts=[(s, SORT_LABELS.get(s, s)) for s in SORTS],
        per_page_choices=PER_PAGE_CHOICES,
        export_url=url_with("ui.export_csv", EXPORT_PARAMS),
        here=_here(),
    )
    return body, 400 if error else 200


@bp.get("/search/export.csv")
@require_ui_role("auditor")
def export_csv() -> Response:
    """Every record of the current search as CSV, streamed (the same export as the API's)."""
    services = _services()
    args = current_args(EXPORT_PARAMS)
    query = load_search_query(args, services.config.server.max_query_length, export=True)
    chunks = actions.export(_actor(), query)
    filename = actions.export_filename(query)
    return Response(
        stream_with_context(chunks),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- one record, restore ----------------------------------------------------------------------


@bp.get("/records/<record_id>")
@require_ui_role("agent")
def record(record_id: str) -> Any:
    """One archived record: its fields, archive facts and history."""
    view = actions.read_record(_actor(), record_id)
    me: TokenInfo = g.ui_token
    back = _local_path(request.args.get("back"), "")
    if back and not back.startswith(url_for("ui.search")):
        back = ""
    return render_template(
        "ui/record.html",
        view=view,
        record=view.record,
        archive=view.archive,
        history=view.history,
        can_restore=me.allows("admin") and view.archive.state == "archived",
        back=back or url_for("ui.search"),
    )


@bp.post("/records/<record_id>/restore")
@require_ui_role("admin")
def restore(record_id: str) -> ResponseReturnValue:
    """Restore an archived record to the active CRM, then show the record again."""
    try:
        actions.restore(_actor(), record_id)
    except _DOMAIN_ERRORS as e:
        if status_of(e) >= 500:
            raise
        flash(f"The record was not restored: {e}", "error")
    else:
        flash("Restored: the record is back in the active CRM.", "success")
    return redirect(url_for("ui.record", record_id=record_id), 303)


# --- auditor: audit log -----------------------------------------------------------------------


@bp.get("/audit")
@require_ui_role("auditor")
def audit() -> Any:
    """The audit log, filtered by time, actor and action."""
    tidy = _canonical_redirect(AUDIT_PARAMS)
    if tidy is not None:
        return tidy
    args = current_args(AUDIT_PARAMS)
    error = None
    try:
        selection: AuditFilter = AuditArgsSchema().load(args_to_dict(args, ()))
    except ValidationError as e:
        error = describe_errors(e.messages)
        selection = AuditFilter()
    page = actions.read_audit(_actor(), selection)
    pages = max(1, math.ceil(page.total / page.per_page))
    body = render_template(
        "ui/audit.html", args=args, page=page, pages=pages, error=error, actions=ACTIONS
    )
    return body, 400 if error else 200


# --- admin: holds, retention, jobs ------------------------------------------------------------


@bp.get("/admin/holds")
@require_ui_role("admin")
def holds() -> str:
    """The legal holds in force, with forms to add and lift them."""
    return render_template("ui/holds.html", holds=actions.holds(_actor()), scopes=SCOPES)


@bp.post("/admin/holds")
@require_ui_role("admin")
def add_hold() -> ResponseReturnValue:
    """Place a legal hold (scope, value, reason)."""
    form = {k: request.form.get(k, "") for k in ("scope", "value", "reason")}
    form["value"] = form["value"].strip()
    try:
        data = HoldSchema().load(form)
        actions.place_hold(_actor(), data["scope"], data["value"], data["reason"].strip())
    except ValidationError as e:
        flash(f"The hold was not placed: {describe_errors(e.messages)}", "error")
    except _DOMAIN_ERRORS as e:
        if status_of(e) >= 500:
            raise
        flash(f"The hold was not placed: {e}", "error")
    else:
        flash(f"Legal hold placed on {data['scope']} {data['value']}.", "success")
    return redirect(url_for("ui.holds"), 303)


@bp.post("/admin/holds/remove")
@require_ui_role("admin")
def remove_hold() -> ResponseReturnValue:
    """Lift a legal hold."""
    scope = request.form.get("scope", "")
    value = request.form.get("value", "")
    try:
        actions.lift_hold(_actor(), scope, value)
    except _DOMAIN_ERRORS as e:
        if status_of(e) >= 500:
            raise
        flash(f"The hold was not lifted: {e}", "error")
    else:
        flash(f"Legal hold on {scope} {value} lifted.", "success")
    return redirect(url_for("ui.holds"), 303)


@bp.get("/admin")
@require_ui_role("admin")
def admin() -> Any:
    """Counts, the worker's last runs, the retention policies and a preview of the next runs."""
    services = _services()
    config = services.config
    error = None
    now = datetime.now(UTC)
    as_of = now
    as_of_text = request.args.get("as_of", "").strip()
    if as_of_text:
        try:
            as_of = parse_bound(as_of_text, end=False)
        except BadQuery as e:
            error = str(e)
    archive_preview = run_archive_job(services, as_of, dry_run=True).by_category
    dispose_preview = run_dispose_job(services, as_of, dry_run=True).by_category
    rules = config.retention
    names = sorted(set(rules.categories) | set(archive_preview) | set(dispose_preview))
    policies = [
        {
            "category": name,
            "own": name in rules.categories,
            "policy": rules.policy_for(name),
            "archive": archive_preview.get(name, 0),
            "dispose": dispose_preview.get(name, 0),
        }
        for name in names
    ]
    runs = [(job, last_run(services, job)) for job in ("archive", "dispose")]
    body = render_template(
        "ui/admin.html",
        stats=actions.stats(_actor()),
        runs=runs,
        default_policy=rules.default,
        policies=policies,
        archive_total=sum(archive_preview.values()),
        dispose_total=sum(dispose_preview.values()),
        as_of=as_of,
        as_of_text=as_of_text or as_of.strftime("%Y-%m-%d"),
        worker=config.worker,
        error=error,
    )
    return body, 400 if error else 200
