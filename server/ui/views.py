"""The web UI's pages: search, export, a record and its restore, the audit log, admin."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from flask import (
    Response,
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
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict

from archivist.audit import ACTIONS, AuditFilter, AuditPage
from archivist.errors import MomentOutOfRange
from archivist.holds import SCOPES
from archivist.records import MAX_ID_LENGTH
from archivist.tokens import TokenInfo
from indexer.errors import BadQuery
from indexer.hold_reach import no_record_held
from indexer.jobs.archiver import ArchiveReport
from indexer.jobs.backup import backup_status
from indexer.jobs.restore import BulkRestoreReport, PlanChanged
from indexer.jobs.runs import last_run, run_archive_job, run_dispose_job
from indexer.search import DATE_FIELDS, MAX_PER_PAGE, SORTS, SearchQuery
from indexer.search.dates import parse_moment
from indexer.services import Services
from server import actions
from server.api import head_or
from server.errors import status_of
from server.schemas import (
    AuditArgsSchema,
    BadSearchParameters,
    HoldSchema,
    args_to_dict,
    describe_errors,
    load_search_query,
)
from server.ui import bp, facets
from server.ui.filters import (
    AUDIT_PARAMS,
    DATE_FIELD_LABELS,
    EXPORT_PARAMS,
    PER_PAGE_CHOICES,
    SEARCH_PARAMS,
    SORT_LABELS,
    counted,
    current_args,
    url_with,
)
from server.ui.session import (
    DOMAIN_ERRORS,
    current_path,
    local_path,
    require_ui_role,
    started_here,
)


def _actor() -> actions.Actor:
    ext = current_app.extensions
    token: TokenInfo = g.ui_token
    services = ext["archivist"]
    return actions.Actor(token.name, services, ext["archivist_audit"],
                         recheck_seconds=services.config.server.token_cache_seconds,
                         web_session_id=session.get("sid"))


def _services() -> Services:
    services: Services = current_app.extensions["archivist"]
    return services


def _canonical_redirect(names: Iterable[str]) -> ResponseReturnValue | None:
    """Redirect to the same page without empty or unknown parameters (tidy, bookmarkable URLs)."""
    kept = list(current_args(names).items(multi=True))
    if kept == list(request.args.items(multi=True)):
        return None
    query = urlencode(kept)
    return redirect(request.path + (f"?{query}" if query else ""))


def given_twice(fields: MultiDict[str, str], names: Iterable[str]) -> str | None:
    """The first of `names` sent more than once, or None: a form reads a field's first value,
    and would act on part of what was sent (refused, as the API refuses it)."""
    return next((name for name in names if len(fields.getlist(name)) > 1), None)


def said_twice(name: str) -> str:
    """The refusal of a field sent more than once, in the API's words."""
    return f"{name}: given more than once; give it once"


# --- search, export ---------------------------------------------------------------------------


_known_lock = threading.Lock()


def known_categories(services: Services) -> list[str]:
    """Every category in the index (facets of the match-all search), the most frequent first,
    cached for a minute."""
    now = time.monotonic()
    cache: dict[str, tuple[float, list[str]]] = current_app.extensions.setdefault(
        "archivist_ui_cache", {}
    )
    with _known_lock:
        hit = cache.get("categories")
    if hit is not None and hit[0] > now:
        return hit[1]
    page = services.index.search(SearchQuery(per_page=1))
    found = page.facets.get("category", {})
    names = sorted(found, key=lambda name: (-found[name], name))
    with _known_lock:
        cache["categories"] = (now + 60.0, names)
    return names


def _per_page_choices(current: str) -> list[int]:
    """The page sizes offered, with the one in the URL (a bookmark's) among them."""
    choices = set(PER_PAGE_CHOICES)
    if current.isdecimal() and len(current) <= 4 and 1 <= int(current) <= MAX_PER_PAGE:
        choices.add(int(current))
    return sorted(choices)


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
    invalid: tuple[str, ...] = ()  # the parameters at fault, whose fields the page marks
    page = None
    try:
        query = load_search_query(args, services.config.server.max_query_length)
    except BadQuery as e:
        actions.audit_refused_query(_actor(), "search", args.get("q", ""), e)
        error = str(e)
        invalid = e.params if isinstance(e, BadSearchParameters) else ("q",)
    else:
        try:
            page = actions.search(_actor(), query)
        except BadQuery as e:  # the engine's: the query itself cannot be run
            error = str(e)
            invalid = ("q",)
    selected = {"category": args.getlist("category"), "kind": args.getlist("kind")}
    counts = page.facets if page is not None else {}
    offered = {
        "category": [*known_categories(services), *services.config.retention.categories],
        "kind": list(services.config.kinds),
    }
    boxes = {
        f: facets.choices(offered[f], counts.get(f, {}), selected[f]) for f in ("category", "kind")
    }
    chips = {f: facets.chips(counts.get(f, {}), selected[f]) for f in ("category", "kind")}
    years = {
        year: (count, facets.year_bounds(year, query, args))
        for year, count in counts.get("year", {}).items()
    }
    pages = 0
    if page is not None:
        pages = max(1, math.ceil(page.total / page.per_page))
    body = render_template(
        "ui/search.html",
        args=args,
        page=page,
        pages=pages,
        error=error,
        invalid=invalid,
        boxes=boxes,
        chips=chips,
        years=years,
        date_fields=[(f, DATE_FIELD_LABELS.get(f, f)) for f in DATE_FIELDS],
        sorts=[(s, SORT_LABELS.get(s, s)) for s in SORTS],
        per_page_choices=_per_page_choices(args.get("per_page", "")),
        export_url=url_with("ui.export_csv", EXPORT_PARAMS),
        # the bulk restore's way back: the same page of the same search
        search_qs=urlencode(list(args.items(multi=True))),
        here=current_path(),
    )
    return body, 400 if error else 200


@bp.get("/search/export.csv")
@require_ui_role("auditor")
@started_here
def export_csv() -> Response:
    """Every record of the current search as CSV, streamed (the same export as the API's);
    to a HEAD, the headers alone."""
    services = _services()
    args = current_args(EXPORT_PARAMS)
    try:
        query = load_search_query(args, services.config.server.max_query_length, export=True)
    except BadQuery as e:
        actions.audit_refused_query(_actor(), "export", args.get("q", ""), e)
        raise
    filename = actions.export_filename(query)
    return Response(
        head_or(lambda: stream_with_context(actions.export(_actor(), query)),
                lambda: actions.check_export(_actor(), query)),
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
    back = _search_back(request.args.get("back"))
    children: dict[str | None, list[Any]] = {}
    ids = {node.id for node in view.process.records}
    for node in view.process.records:
        parent = node.parent_id if node.parent_id in ids else None
        children.setdefault(parent, []).append(node)
    return render_template(
        "ui/record.html",
        view=view,
        record=view.record,
        archive=view.archive,
        history=view.history,
        process=view.process,
        process_children=children,
        # an active record restored earlier still has its page here (history, restore)
        with_pages=actions.archived_ever(
            _actor(), [n.id for n in view.process.records if n.state == "active"]),
        to_restore=view.process.archived,
        can_restore=me.allows("admin") and view.archive.state == "archived",
        holds=(actions.holds_on(_actor(), view)
               if view.archive.state in ("archived", "restored") else []),
        back=back or url_for("ui.search"),
    )


@bp.post("/records/<record_id>/restore")
@require_ui_role("admin")
def restore(record_id: str) -> ResponseReturnValue:
    """Restore an archived record's process to the active CRM, then show the record again."""
    reason = request.form.get("reason", "").strip()
    # back to the record's page, which keeps its way back to the search it was opened from
    again = url_for("ui.record", record_id=record_id, back=_search_back(request.form.get("back"))
                    or None)
    twice = given_twice(request.form, ("reason", "back"))
    if twice is not None:
        flash(f"The process was not restored: {said_twice(twice)}.", "error")
        return redirect(again, 303)
    if not reason or len(reason) > 500:
        flash("The process was not restored: give a reason (1-500 characters).", "error")
        return redirect(again, 303)
    try:
        result = actions.restore(_actor(), record_id, reason)
    except DOMAIN_ERRORS as e:
        if status_of(e) >= 500:
            raise
        flash(f"The process was not restored: {e}", "error")
    else:
        n = len(result.restored)
        flash(f"Restored: the process is back in the active CRM ({n} "
              f"{'record' if n == 1 else 'records'}).", "success")
    return redirect(again, 303)


def _search_back(value: str | None) -> str:
    """A link back to a search page of this site, from a request's `back`; else empty."""
    back = local_path(value, "")
    return back if back.startswith(url_for("ui.search")) else ""


@bp.post("/restore")
@require_ui_role("admin")
def bulk_restore() -> ResponseReturnValue:
    """Restore ticked search results, or everything a search matches, with the rest of their
    processes: first a confirmation page with the dry run's count, then, once confirmed, the
    restore of exactly what that page counted (`PlanChanged` shows the page again)."""
    services = _services()
    form = request.form
    search = form.get("search", "")
    back = url_for("ui.search") + (f"?{search}" if search and search.isprintable() else "")
    reason = form.get("reason", "").strip()
    mode = "search" if form.get("mode") == "search" else "ids"
    limit = services.config.server.max_bulk_restore
    ids = form.getlist("ids")

    def confirmation(plan: BulkRestoreReport, changed: bool = False) -> str:
        # a record skipped as restored already (as by this very form, sent again from the
        # browser's history) is said to be so, not merely that it cannot be restored
        restored = actions.restored_already(_actor(), [s.id for s in plan.skipped])
        already = sum(1 for s in plan.skipped if s.id in restored)
        return render_template("ui/restore_confirm.html", plan=plan, search=search, mode=mode,
                               ids=ids, reason=reason, back=back, changed=changed,
                               already=already)

    # What the search page sends holds only its own parameters and record ids: anything else
    # was not sent from it (a dropped parameter would widen the search to more records).
    unknown = sorted({k for k, _ in parse_qsl(search, keep_blank_values=True)}
                     - set(SEARCH_PARAMS))
    twice = given_twice(form, ("search", "reason", "mode", "confirmed", "plan"))
    if not search.isprintable():  # a query string never holds a raw control character
        if mode == "search":  # (for ticked ids, the search is only the way back)
            flash("Nothing was restored: the search holds a control character, which the "
                  "search page never sends.", "error")
            return redirect(back, 303)
        search = ""
    if twice is not None:
        flash(f"Nothing was restored: {said_twice(twice)}.", "error")
        return redirect(back, 303)
    if mode == "search" and unknown:
        flash(f"Nothing was restored: the search has no parameter {unknown[0]!r}.", "error")
        return redirect(back, 303)
    if mode == "ids" and any(not 1 <= len(i) <= MAX_ID_LENGTH for i in ids):
        flash(f"Nothing was restored: a record id has 1 to {MAX_ID_LENGTH} characters.",
              "error")
        return redirect(back, 303)
    try:
        query = None
        if mode == "search":
            params = MultiDict(
                [(k, v) for k, v in parse_qsl(search) if k in EXPORT_PARAMS and v.strip()]
            )
            query = load_search_query(params, services.config.server.max_query_length,
                                      export=True)
            ids = []
        elif not ids:
            flash("Nothing was restored: tick the records to restore first.", "error")
            return redirect(back, 303)
        if not form.get("confirmed"):
            return confirmation(actions.bulk_restore(
                _actor(), reason, ids=ids, query=query, dry_run=True, limit=limit
            ))
        if not reason or len(reason) > 500:
            flash("Nothing was restored: give a reason (1-500 characters).", "error")
            return redirect(back, 303)
        report = actions.bulk_restore(_actor(), reason, ids=ids, query=query, limit=limit,
                                      confirmed_plan=form.get("plan", ""))
    except PlanChanged as e:
        return confirmation(e.plan, changed=True)
    except DOMAIN_ERRORS as e:
        if status_of(e) >= 500:
            raise
        flash(f"Nothing was restored: {e}", "error")
        return redirect(back, 303)
    message = (f"Restored {counted(len(report.restored), 'record')} "
               f"({counted(report.processes, 'process')}) to the active CRM.")
    if report.skipped:
        message += " Skipped: " + ", ".join(
            f"{s.id} ({s.code})" for s in report.skipped[:20]
        ) + ("…" if len(report.skipped) > 20 else "")
    flash(message, "success" if report.restored else "error")
    return redirect(back, 303)


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
    invalid: list[str] = []  # the parameters at fault, whose fields the page marks
    try:
        selection: AuditFilter = AuditArgsSchema().load(args_to_dict(args, ()))
    except ValidationError as e:  # no rows: the whole log under the form would pass for an answer
        error = describe_errors(e.messages)
        invalid = list(e.messages) if isinstance(e.messages, dict) else []
    page = AuditPage(0, 1, 50, []) if error is not None else actions.read_audit(_actor(), selection)
    pages = max(1, math.ceil(page.total / page.per_page))
    # a target links to its record's page only if there is one (an id never archived has none)
    with_pages = actions.archived_ever(_actor(), [e.target for e in page.entries if e.target])
    body = render_template(
        "ui/audit.html", args=args, page=page, pages=pages, error=error, invalid=invalid,
        actions=ACTIONS, with_pages=with_pages,
    )
    return body, 400 if error else 200


# --- admin: holds, retention, jobs ------------------------------------------------------------


@bp.get("/admin/holds")
@require_ui_role("admin")
def holds() -> str:
    """The legal holds in force, with forms to add and lift them."""
    return _holds_page()


def _holds_page(refused: dict[str, str] | None = None, error: str | None = None,
                invalid: Iterable[str] = ()) -> str:
    """The holds page; `refused` is the form of a hold just refused, shown again with the
    `error` saying why and its fields at fault (`invalid`) marked."""
    held = actions.holds(_actor())
    # a record hold links to the record's page only if it has one (a held active record,
    # never archived, has none)
    with_pages = actions.archived_ever(_actor(), [h.value for h in held if h.scope == "record"])
    return render_template("ui/holds.html", holds=held, scopes=SCOPES, refused=refused,
                           error=error, invalid=list(invalid), with_pages=with_pages)


@bp.post("/admin/holds")
@require_ui_role("admin")
def add_hold() -> ResponseReturnValue:
    """Place a legal hold (scope, value, reason)."""
    form = {k: request.form.get(k, "") for k in ("scope", "value", "reason")}
    form["value"] = form["value"].strip()
    twice = given_twice(request.form, form)
    if twice is not None:
        error = f"The hold was not placed: {said_twice(twice)}"
        return _holds_page(refused=form, error=error, invalid=[twice]), 400
    try:
        data = HoldSchema().load(form)
        actions.place_hold(_actor(), data["scope"], data["value"], data["reason"].strip())
    except ValidationError as e:
        error = f"The hold was not placed: {describe_errors(e.messages)}"
        invalid = list(e.messages) if isinstance(e.messages, dict) else []
        return _holds_page(refused=form, error=error, invalid=invalid), 400
    except DOMAIN_ERRORS as e:
        if status_of(e) >= 500:
            raise
        # what the domain refuses here is the value (on hold already, or one no record has)
        error = f"The hold was not placed: {e}"
        return _holds_page(refused=form, error=error, invalid=["value"]), status_of(e)
    flash(f"Legal hold placed on {data['scope']} {data['value']}.", "success")
    if not actions.hold_reaches_a_record(_actor(), data["scope"], data["value"]):
        flash(no_record_held(data["scope"], data["value"]), "error")
    return redirect(url_for("ui.holds"), 303)


@bp.post("/admin/holds/remove")
@require_ui_role("admin")
def remove_hold() -> ResponseReturnValue:
    """Lift a legal hold."""
    scope = request.form.get("scope", "")
    value = request.form.get("value", "")
    twice = given_twice(request.form, ("scope", "value"))
    if twice is not None:
        flash(f"The hold was not lifted: {said_twice(twice)}.", "error")
        return redirect(url_for("ui.holds"), 303)
    try:
        actions.lift_hold(_actor(), scope, value)
    except DOMAIN_ERRORS as e:
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
    tidy = _canonical_redirect(("as_of",))
    if tidy is not None:
        return tidy
    services = _services()
    config = services.config
    now = datetime.now(UTC)
    as_of = now
    as_of_text = request.args.get("as_of", "").strip()
    error = None
    if given_twice(request.args, ("as_of",)):
        error = said_twice("as_of")
    elif len(as_of_text) > 64:
        error = "as_of: longer than 64 characters"
    elif as_of_text:
        try:
            as_of = parse_moment(as_of_text)
        except BadQuery as e:
            error = f"as_of: {e}"
    # no preview under an error: one for another moment would pass for the answer asked for
    archive_report: ArchiveReport | None = None
    dispose_preview: dict[str, int] = {}
    if error is None:
        try:
            archive_report = run_archive_job(services, as_of, dry_run=True)
            dispose_preview = run_dispose_job(services, as_of, dry_run=True).by_category
        except MomentOutOfRange as e:  # so early that a policy reaches before year 1
            error = f"as_of: {e}"
            archive_report = None
    archive_preview = archive_report.by_category if archive_report is not None else {}
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
        backup=backup_status(services, now),
        default_policy=rules.default,
        policies=policies,
        archive_total=sum(archive_preview.values()),
        preview=archive_report is not None,
        held_back=archive_report.held_back if archive_report is not None else 0,
        dispose_total=sum(dispose_preview.values()),
        as_of=as_of,
        as_of_text=as_of_text or as_of.date().isoformat(),
        worker=config.worker,
        error=error,
    )
    return body, 400 if error else 200
