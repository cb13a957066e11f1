"""Whoosh's exceptions become ours at the engine's edge, so no caller ever sees one."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from indexer.errors import IndexUnavailable

F = TypeVar("F", bound=Callable[..., Any])


def is_whoosh_error(error: BaseException) -> bool:
    """Whether ``error`` is one of Whoosh's own exceptions (translated at the engine's edge)."""
    return type(error).__module__.split(".", 1)[0] == "whoosh"


def _unavailable(error: BaseException) -> IndexUnavailable:
    return IndexUnavailable(f"the search index failed: {type(error).__name__}: {error}"[:300])


def translate_errors(method: F) -> F:
    """Re-raise any Whoosh exception from ``method`` as :class:`IndexUnavailable`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as e:
            if is_whoosh_error(e):
                raise _unavailable(e) from e
            raise

    return cast(F, wrapper)


def translate_iter_errors(method: F) -> F:
    """As :func:`translate_errors`, for a method that returns an iterator (errors come later)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from method(*args, **kwargs)
        except Exception as e:
            if is_whoosh_error(e):
                raise _unavailable(e) from e
            raise

    return cast(F, wrapper)
