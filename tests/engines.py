"""The search engines the conformance suite holds to the same tests.

Tests that take the ``engine_name``, ``open_engine`` or ``services`` fixtures (tests/conftest.py)
run once per engine listed here, through the ``SearchEngine`` protocol only; a second engine
joins the suite with one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from archivist.config import Config
from indexer.search import SearchEngine
from indexer.services import open_search_engine
from indexer.whoosh.index import SearchIndex


@dataclass(frozen=True)
class EngineKind:
    """How to open one engine: in a bare folder, or as an installation's config names it."""

    open_dir: Callable[[Path], SearchEngine]
    open_for: Callable[[Config], SearchEngine]


ENGINES: dict[str, EngineKind] = {
    "whoosh": EngineKind(
        open_dir=lambda path: SearchIndex.open(path), open_for=open_search_engine
    ),
}
