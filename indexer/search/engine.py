"""The search engine protocol: what the jobs, the server and the CLI may ask of an engine.

Every caller holds a :class:`SearchEngine` and nothing else of the engine, so a second engine
(beside ``indexer/whoosh/``) plugs in by implementing this protocol and passing the
conformance suite (``tests/test_engine_conformance.py``). An engine raises only
:class:`indexer.errors.IndexerError` and its subclasses (``BadQuery``, ``IndexUnavailable``),
never its library's own exceptions.

Records arrive as ``(record, archived_at)`` pairs: the record's JSON value as imported and the
time it was archived. An engine keeps at most one copy of each record id.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from indexer.search.types import SearchHit, SearchPage, SearchQuery

ArchivedRecord = tuple[dict[str, Any], datetime]
"""A record's JSON value and the time it was archived: what an engine indexes."""


@dataclass(frozen=True)
class RebuildReplay:
    """What a rebuilt index takes in before it replaces the live one: the records that left
    the archive after the rebuild read them, and a note of the catch-up still to record."""

    removed: Sequence[str]
    """restored since: out of search"""
    erased: Sequence[str]
    """purged or erased since: out of search and out of every file of the index"""
    note: str
    """kept with the new index until the catch-up is recorded (see `unfinished_rebuild`)"""


class StagedBatch(Protocol):
    """Records an engine has written aside by :meth:`SearchEngine.stage`, not yet searchable."""

    @property
    def shards(self) -> Mapping[str, Sequence[str]]:
        """The record ids staged, by the part of the index each will join (attached per part)."""
        ...


class SearchEngine(Protocol):
    """A full-text index of archived records, searched as the contract's ``/api/v1/search``."""

    # --- reading -------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchPage:
        """Run a search: one page of hits with the exact total and facets over all matches.

        :param query: what to search for; raises ``BadQuery`` if it cannot run.
        """
        ...

    def iter_hits(self, query: SearchQuery) -> Iterator[SearchHit]:
        """Yield every matching record in the query's order, without snippets (exports).

        :param query: what to search for; ``page`` and ``per_page`` are ignored.
        """
        ...

    def iter_ids(self) -> Iterator[str]:
        """Yield every indexed record id (to check the index against the store)."""
        ...

    def doc_count(self) -> int:
        """Return how many records are indexed."""
        ...

    def check_readable(self) -> None:
        """Read the index as a search would; raises ``IndexerError`` if it cannot (health)."""
        ...

    def find_damage(self) -> list[str]:
        """Say what is wrong with the index's files that searches would pass over (verify);
        empty when nothing is."""
        ...

    def outdated(self) -> str | None:
        """Why the index cannot answer every query as this version would (built by an earlier
        one: `index --rebuild` makes it anew), or None (verify, init)."""
        ...

    def terms_of(self, text: str, *, query: bool = False) -> set[str]:
        """The terms the index makes of a text: as a record's (``query=False``), or as a
        query word's (stems, a phone number's digits) — what a search for it looks up."""
        ...

    # --- writing -------------------------------------------------------------------------

    def add(
        self,
        docs: Iterable[ArchivedRecord],
        *,
        first_versions: Collection[str] = (),
        merge: bool = True,
    ) -> int:
        """Index records, replacing any indexed copy of the same ids; returns how many.

        :param docs: the records with their archive times.
        :param first_versions: ids archived for the first time (a hint: no older copy can be
            indexed anywhere but where this version goes).
        :param merge: tidy up after the write now; False leaves it to :meth:`merge_segments`.
        """
        ...

    def delete(self, record_ids: Iterable[str], current: Iterable[dict[str, Any]] = ()) -> int:
        """Remove records from the index; returns how many were indexed.

        :param record_ids: the ids to remove.
        :param current: the latest archived version of some of them, as a hint where to look.
        """
        ...

    def merge_segments(self) -> int:
        """Tidy up after writes (merge small parts); never changes what searches answer."""
        ...

    def erase(self, record_ids: Iterable[str]) -> int:
        """Remove records and every trace of them in the index's files, deleted copies
        included (erasure); returns how many parts of the index were rewritten.

        :param record_ids: the records to erase.
        """
        ...

    def rebuild(
        self,
        docs: Iterable[ArchivedRecord],
        total: int | None = None,
        progress: bool = False,
        *,
        going_live: Callable[[], AbstractContextManager[RebuildReplay]] | None = None,
    ) -> int:
        """Build a fresh index from every record and swap it in whole; returns how many.

        :param docs: every record to index.
        :param total: how many there are, for the progress bar.
        :param progress: show a progress bar on stderr.
        :param going_live: entered once the new index is complete: the records it yields
            leave the new index, which then replaces the live one, all inside it; its note
            stays with the new index until it is left without an error.
        """
        ...

    def unfinished_rebuild(self) -> str | None:
        """The note of a rebuild whose index went live but whose ``going_live`` was never left
        (killed in between), or None."""
        ...

    def rebuild_finished(self, note: str) -> None:
        """Drop the note `unfinished_rebuild` returned, once its catch-up is recorded.

        :param note: the note, as returned (a newer rebuild's is kept).
        """
        ...

    # --- staging (optional: an engine that cannot stage returns None from stage) ----------

    def stage(
        self, docs: Iterable[ArchivedRecord], *, processes: bool = True
    ) -> StagedBatch | None:
        """Write records aside without holding any lock, or return None (then use :meth:`add`).

        :param docs: the records, each id once; may be a generator reading the store.
        :param processes: the batch is large enough to use every core.
        """
        ...

    def attach(
        self,
        staged: Any,
        keep: Collection[str],
        *,
        first_versions: Collection[str] = (),
        merge: bool = True,
        shards: Collection[str] | None = None,
    ) -> int | None:
        """Make the staged records in ``keep`` searchable; None if the index was rebuilt since.

        :param staged: what :meth:`stage` returned.
        :param keep: the ids still to index (the others changed since they were staged).
        :param first_versions: as for :meth:`add`.
        :param merge: as for :meth:`add`.
        :param shards: attach only these parts of ``staged.shards`` (None: all).
        """
        ...

    def discard(self, staged: Any) -> None:
        """Drop whatever of a staged batch was not attached.

        :param staged: what :meth:`stage` returned.
        """
        ...

    def remove_abandoned(self) -> None:
        """Drop what processes that are gone wrote aside and never attached (a batch staged,
        a merge), since it may hold records erased or purged since. Cheap when there is none."""
        ...

    # --- serving hooks (an engine without background work may make them no-ops) -----------

    def urgent(self) -> AbstractContextManager[None]:
        """A block that runs before this process's further search work (a restore waits)."""
        ...

    def keep_fresh(self) -> None:
        """Pick up other processes' changes in the background rather than in a search."""
        ...

    def prepare_deletes(self) -> None:
        """Open now what the first delete would open (so the first restore is not slow)."""
        ...

    def close(self) -> None:
        """Release files and threads; the engine can no longer be used."""
        ...
