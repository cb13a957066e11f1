"""JSON request bodies: parsed with a depth limit, and text that is really text.

Python's JSON decoder accepts a lone surrogate escape (`"\\ud800"`), which no database or
file can store as UTF-8, and a NUL (`"\\u0000"`), which PostgreSQL's text cannot hold, and
recurses once per nesting level, so a body nested 100,000 deep ends in a RecursionError. All
are refused here as a 400, before any handler sees the body.
"""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, request
from flask.json.provider import DefaultJSONProvider

from archivist.json_objects import unique_keys
from server.errors import BadRequest

MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_json_value(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ValueError if `value` nests deeper than `max_depth` or holds a lone surrogate."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ValueError("a string holds a lone surrogate (\\ud800-\\udfff), not text")
            if "\x00" in item:  # PostgreSQL's text cannot hold one: the audit entry would fail
                raise ValueError("a string holds a NUL character (\\u0000)")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, refusing what `check_json_value` refuses (a ValueError: 400)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse JSON text; too deep, not text or a key named twice in one object is a
        ValueError, as any other bad JSON."""
        kwargs.setdefault("object_pairs_hook", unique_keys)
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        check_json_value(value)
        return value


def load_json_body() -> dict[str, Any]:
    """`load_json_object` of a body sent as JSON (`Content-Type: application/json`): a reason
    sent as a form (`curl -d`) would otherwise be read as no reason at all."""
    if not request.is_json:
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return load_json_object()


def load_json_object() -> dict[str, Any]:
    """This request's body as a JSON object, or a 400 saying what is wrong with it."""
    data = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
    try:
        body = current_app.json.loads(data)
    except ValueError as e:  # bad JSON, bad UTF-8, too deep, lone surrogates
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
