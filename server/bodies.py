"""Request bodies: no longer than `server.max_request_bytes`, chunked or not; JSON parsed with
a depth limit, and text that is really text.

Werkzeug reads a body sent without a length (`Transfer-Encoding: chunked`) up to the limit and
then stops, as if the body ended there: JSON that is whole within the limit would be obeyed,
the rest never seen. Here one byte past the limit is a 413, as a Content-Length over it is.
It also made a client that stops sending a body (`ClientTooSlow`, a TimeoutError) a 400 "client
disconnected"; here it stays a 408.

Python's JSON decoder accepts a lone surrogate escape (`"\\ud800"`), which no database or
file can store as UTF-8, and a NUL (`"\\u0000"`), which PostgreSQL's text cannot hold, and
recurses once per nesting level, so a body nested 100,000 deep ends in a RecursionError. All
are refused here as a 400, before any handler sees the body.
"""

from __future__ import annotations

import re
from typing import IO, Any, cast

from flask import Request, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from archivist.json_objects import unique_keys
from server.errors import BadRequest, ClientTooSlow

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


class _Body(LimitedStream):
    """A body read from a server that ends it (gunicorn: at its Content-Length or last chunk),
    to that end: a byte past `limit` is a 413, and a client too slow stays a 408."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__(stream, limit + 1, is_max=True)  # +1: the byte past it, if sent
        self._max = limit

    def readinto(self, b: bytearray) -> int | None:  # type: ignore[override]
        """Read into `b`; past the limit, `RequestEntityTooLarge`."""
        size = super().readinto(b)
        if self.tell() > self._max:
            raise RequestEntityTooLarge()
        return size

    def on_disconnect(self, error: Exception | None = None) -> None:
        """A read that failed: werkzeug makes every OSError a 400 "client disconnected"; a
        client that stopped sending (a TimeoutError) is a 408 instead."""
        if isinstance(error, ClientTooSlow):
            raise error
        super().on_disconnect(error)


class LimitedRequest(Request):
    """Flask's request, whose body is refused past `MAX_CONTENT_LENGTH` however it is sent."""

    @cached_property
    def stream(self) -> IO[bytes]:
        """The body; one sent in chunks longer than the limit is a 413 once read that far."""
        limit = self.max_content_length
        length = self.content_length
        if limit is not None and "wsgi.input_terminated" in self.environ:
            if length is not None and length > limit:
                raise RequestEntityTooLarge()
            return cast(IO[bytes], _Body(self.environ["wsgi.input"], limit))
        return super().stream


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
