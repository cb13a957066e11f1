"""Template helpers of the web UI: filters, URL builders, and the parameters each page keeps."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    current_app,
    request,
    url_for,
)
from markupsafe import Markup, escape
from werkzeug.datastructures import MultiDict

from archivist.crm_mapping import table_for_id

PER_PAGE_CHOICES = (10, 20, 50, 100)
SEARCH_PARAMS = (
    "q",
    "category",
    "kind",
    "customer_id",
    "owner",
    "process",
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
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment:%m-%d %H:%M} UTC"  # (%Y leaves year 1 unpadded)


def date_input_type(value: str) -> str:
    """The type of a form box holding `value`: `date` for nothing or a plain date, `text` for
    anything else (a time, a typo), which a browser's date box would show empty."""
    if not value:
        return "date"
    try:
        date.fromisoformat(value)
    except ValueError:
        return "text"
    return "date" if len(value) == 10 else "text"  # (not the basic form, 20240101)


# Han ideographs (every extension, radicals, compatibility forms), CJK symbols and punctuation,
# Bopomofo and the fullwidth forms: the characters of Chinese text. (Kana and Hangul are not.)
_CHINESE = re.compile(
    "[\u2e80-\u2fff\u3000-\u303f\u3100-\u312f\u31a0-\u31bf\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\ufe30-\ufe4f\uff01-\uff60\uffe0-\uffe6\U00020000-\U000323af]+"
)


def mark_chinese(text: str) -> Markup:
    """`text`, escaped unless it is markup already, with each run of Chinese characters in
    `<span lang="zh">`: the pages are English, and a screen reader reads Chinese as Chinese only
    where it is marked so.

    Markup (a snippet with its `<mark>`s) is kept as it is: its tags and entities are ASCII, so
    no run reaches into one.
    """
    return Markup(_CHINESE.sub(r'<span lang="zh">\g<0></span>', str(escape(text))))


def show_invisible(value: str) -> str:
    """An id, customer or category with each invisible or direction-changing character written
    as its code (`\u202eC00045`, not `54000C` drawn right to left): a value that differs
    from another only by one must not look the same.

    :param value: the text of one value, as stored
    """
    return "".join(
        f"\\u{ord(ch):04x}" if unicodedata.category(ch) in _INVISIBLE else ch for ch in value
    )


_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


def counted(n: int, noun: str) -> str:
    """`1 record`, `1,051 records`, `2 processes`: a count and its noun."""
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {plural}"


def pretty_json(value: Any) -> str:
    """JSON for reading: indented, non-ASCII kept (escaped by the template, like all text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def compact_json(value: Any) -> str:
    """JSON on one line, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


# Identifier filters typed or pasted into a form: a space around one is never meant (the holds
# form trims its value alike), and would silently match nothing.
_TRIMMED = frozenset({"customer_id", "owner", "actor"})


def current_args(names: Iterable[str]) -> MultiDict[str, str]:
    """This request's parameters among `names`, without empty values, identifiers trimmed."""
    allowed = set(names)
    return MultiDict(
        [(k, v.strip() if k in _TRIMMED else v)
         for k, v in request.args.items(multi=True) if k in allowed and v.strip()]
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
    """The current search with `value` added to or removed from the list parameter `name`
    (in any case: category and kind filters ignore it)."""
    values = request.args.getlist(name)
    kept = [v for v in values if v.casefold() != value.casefold()]
    values = kept if len(kept) < len(values) else [*values, value]
    return search_url(**{name: values})


def source_table(record_id: str) -> str | None:
    """The CRM table a record came from, when `[[active.table]]` maps tables."""
    return table_for_id(current_app.extensions["archivist"].config.tables, record_id)
