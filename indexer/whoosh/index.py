"""SearchIndex: Whoosh shards by ``created_at`` period, behind a narrow interface.

Layout on disk::

    <directory>/CURRENT          name of the live generation (replaced atomically by rebuild)
    <directory>/g000001/META     {"shard_period": "year"}
    <directory>/g000001/STAMP    rewritten after every commit; searchers refresh when it changes
    <directory>/g000001/2023/    one Whoosh index per period of created_at ("2023" or "2023-05")

A rebuild writes a new generation beside the live one with two worker processes, each writing
its own segment of every shard it receives documents for; the two segments of a shard are then
joined into one Whoosh index (one TOC listing both), and CURRENT is swapped.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import logging
import operator
import os
import pickle
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import types
import uuid
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from whoosh import index as windex
from whoosh.analysis import IDTokenizer
from whoosh.codec.whoosh3 import LENGTHS_COLUMN, WHOOSH3_HEADER_MAGIC, _lenfield
from whoosh.filedb.filestore import FileStorage
from whoosh.formats import Existence
from whoosh.index import TOC, LockError
from whoosh.reading import SegmentReader
from whoosh.util.filelock import try_for

from archivist.records import format_utc
from indexer.errors import IndexerError, IndexUnavailable
from indexer.search.dates import parse_timestamp, to_micros
from indexer.search.types import SearchHit, SearchPage, SearchQuery, validate
from indexer.whoosh.analysis import (
    SINGLE_POSITION_VALUES,
    ArchivePositions,
    PairTokenizer,
    choose_pair_terms,
    index_term_positions,
    pair_postings,
)
from indexer.whoosh.columns import byte_strings
from indexer.whoosh.errors import translate_errors, translate_iter_errors
from indexer.whoosh.mapped_files import install as install_mapped_files
from indexer.whoosh.merging import MergedSource, choose_merges, write_merged
from indexer.whoosh.query import CompiledQuery, compile_query, make_parser
from indexer.whoosh.readers import close_replaced, open_searcher, open_without_additions
from indexer.whoosh.schema import build_schema
from indexer.whoosh.search import order_matches, run_search
from indexer.whoosh.segment_format import (
    EXTENT,
    PACK_INT,
    SMALL_BLOCK,
    TERMINFO,
    TermTable,
    compress,
)
from indexer.whoosh.shards import GlobalStats, ShardCache, ShardView
from indexer.whoosh.snippets import make_snippet, plain_snippet
from indexer.whoosh.turns import Turns

PERIODS = ("year", "month")
_T = TypeVar("_T")
_SHARD_RE = {"year": re.compile(r"^\d{4}$"), "month": re.compile(r"^\d{4}-\d{2}$")}
_GEN_RE = re.compile(r"^g(\d{6})$")
SNIPPET_SOURCE_CHARS = 10_000
_BATCH = 500
WORKER_BUFFERED_DOCS = 300_000  # documents a rebuild worker holds in memory (~3.5 KiB each)
PAIR_SAMPLE = 20_000  # records a rebuild reads before choosing the pair terms
_READ_IDS_COST = 200  # one id look-up in a segment costs about as much as reading 200 ids
_WARM_QUERIES = 16  # the latest distinct queries run again after a change (keep_fresh)
# Seconds at most that the searches of a process with a freshener go without an indexing
# batch's new segments while the freshener warms them up (keep_fresh).
_ADDITIONS_WAIT = 10.0
log = logging.getLogger(__name__)


def shard_key(created_at: datetime, period: str) -> str:
    """Return the shard name of a ``created_at`` time.

    :param created_at: an aware datetime.
    :param period: ``year`` or ``month``.
    """
    created_at = created_at.astimezone(UTC)
    if period == "year":
        return f"{created_at.year:04d}"
    return f"{created_at.year:04d}-{created_at.month:02d}"


def shard_bounds(name: str) -> tuple[int, int]:
    """Return the first and last microsecond (epoch) of a shard's period.

    :param name: the shard name, ``2023`` or ``2023-05``.
    """
    if len(name) == 4:
        y = int(name)
        lo = datetime(y, 1, 1, tzinfo=UTC)
        hi = datetime(y + 1, 1, 1, tzinfo=UTC)
    else:
        y, m = int(name[:4]), int(name[5:7])
        lo = datetime(y, m, 1, tzinfo=UTC)
        hi = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
    return to_micros(lo), to_micros(hi) - 1


def _utc_text(value: str) -> str:
    """Return a record timestamp in the contract's UTC format (unchanged when already so)."""
    if value.endswith("Z"):
        return value
    return format_utc(parse_timestamp(value))


def build_document(record: dict[str, Any], archived_at: datetime) -> dict[str, Any]:
    """Turn a record and its archive time into the field values of one Whoosh document.

    :param record: the record as imported (contract JSON object).
    :param archived_at: when it was archived (aware).
    """
    created = _utc_text(record["created_at"])
    updated = _utc_text(record["updated_at"])
    archived = format_utc(archived_at)
    body = record.get("body") or ""
    subject = record.get("subject") or ""
    doc: dict[str, Any] = {
        "id": record["id"],
        "kind": record["kind"],
        "category": record["category"],
        "subject": subject,
        "body": body,
        "subject_pairs": subject,
        "body_pairs": body,
        "created_us": to_micros(parse_timestamp(created)),
        "updated_us": to_micros(parse_timestamp(updated)),
        "archived_us": to_micros(archived_at),
        "stored": (
            record["id"],
            record["kind"],
            record["category"],
            record.get("customer_id"),
            record.get("owner"),
            subject,
            record.get("status") or "",
            created,
            updated,
            archived,
            body[:SNIPPET_SOURCE_CHARS],
        ),
    }
    if record.get("customer_id") is not None:
        doc["customer_id"] = record["customer_id"]
    if record.get("owner") is not None:
        doc["owner"] = record["owner"]
    return doc


def _texts(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Yield the subject and body of records (for choosing pair terms)."""
    for record in records:
        yield record.get("subject") or ""
        yield record.get("body") or ""


def _segment_id_set(leaf: Any) -> frozenset[bytes]:
    """Return the ids of a segment's documents (deleted ones included), UTF-8 encoded."""
    column = leaf.column_reader("id", translate=False)
    return frozenset(byte_strings(column, leaf.segment().doc_count_all()).tolist())


def _record_shard(record: dict[str, Any], period: str) -> str:
    created = record["created_at"]
    if created.endswith("Z") and len(created) >= 10:
        return created[:4] if period == "year" else created[:7]
    return shard_key(parse_timestamp(created), period)


def _write_atomic(path: Path, text: str, durable: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _stat_key(path: Path) -> str | None:
    # Content, not mtime: two commits within the file system's timestamp granularity would
    # otherwise look like one.
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


install_mapped_files()


_STAGED = "_staged"  # folder of a generation where stage() writes


@dataclass
class StagedRecords:
    """Segments written by :meth:`SearchIndex.stage`, not yet part of any shard."""

    gen: Path
    root: Path
    shards: dict[str, list[str]]  # shard name -> the record ids staged for it


def _delete_unkept(ix: windex.Index, segment: Any, keep: Collection[str]) -> int:
    """Mark the documents of a staged segment whose ids are not in ``keep`` deleted.

    Returns how many are kept.
    """
    reader = SegmentReader(ix.storage, ix.schema, segment)
    try:
        ids = list(reader.column_reader("id", translate=False))
    finally:
        reader.close()
    kept = 0
    for docnum, rid in enumerate(ids):
        if rid.decode("utf-8") in keep:
            kept += 1
        else:
            segment.delete_document(docnum)
    return kept


def _remove_abandoned_stages(root: Path) -> None:
    """Remove staging folders of processes that are gone (a crash between stage and attach)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _remove_stage(folder: Path) -> None:
    """Remove a staging folder, and the folder of stages if no other is left."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Snapshot:
    """Searchers and caches for one state of the index.

    ``partial`` names the shards whose searcher leaves out segments added since ``pending``
    (a monotonic time), or that are left out themselves (see ``SearchIndex.keep_fresh``).
    """

    def __init__(
        self,
        gen: Path,
        key: tuple[Any, ...],
        views: list[ShardView],
        partial: frozenset[str] = frozenset(),
        pending: float | None = None,
    ) -> None:
        self.gen = gen
        self.key = key
        self.views = views
        self.stats = GlobalStats([v.cache for v in views])
        self.partial = partial
        self.pending = pending if partial else None


class SearchIndex:
    """The archive's search index: time shards of Whoosh indexes, searched as one."""

    def __init__(self, directory: Path, shard_period: str, worker_nice: int = 0) -> None:
        self.directory = Path(directory)
        self._period = shard_period
        self._worker_nice = worker_nice
        self._background = _Background(worker_nice)
        self._lock = threading.RLock()
        self._turns = Turns()
        self._shard_lists: dict[str, tuple[int, list[str]]] = {}
        self._write_lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._indexes: dict[tuple[str, str], windex.Index] = {}
        # Record ids per segment id (segments never change; deletions live in the TOC), so that
        # an add need not look every id up in every segment: about 80 bytes per indexed record.
        self._segment_ids: dict[str, frozenset[bytes]] = {}
        self._segment_probes: dict[str, int] = {}
        # Searchers for looking ids up before writes (used under _write_lock), kept while
        # their shard is unchanged: opening one per shard cost most of a restore's delete.
        self._id_searchers: dict[tuple[str, str], Any] = {}
        self._pair_sets: dict[str, frozenset[bytes]] = {}
        self._parser: Any = None
        self._closed = False
        self._recent: dict[SearchQuery, None] = {}  # the latest distinct queries, oldest first
        self._freshener: threading.Thread | None = None
        self._stop_freshening = threading.Event()

    # --- opening and layout -------------------------------------------------------------

    @classmethod
    @translate_errors
    def open(
        cls, directory: Path, *, shard_period: str = "year", worker_nice: int = 0
    ) -> SearchIndex:
        """Open the index in a directory, creating an empty one if missing.

        :param directory: the index folder.
        :param shard_period: ``year`` or ``month`` for a new index (an existing one keeps its own).
        :param worker_nice: niceness of the processes that analyse records for it.
        """
        if shard_period not in PERIODS:
            raise IndexerError(f"shard_period must be one of {', '.join(PERIODS)}")
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self = cls(directory, shard_period, worker_nice)
            if not (directory / "CURRENT").exists():
                gen = self._new_generation(shard_period)
                _write_atomic(directory / "CURRENT", gen.name)
            self._period = self._load_meta(self._current_gen())["shard_period"]
        except OSError as e:
            raise IndexUnavailable(f"cannot open index at {directory}: {e}") from e
        self._parser = make_parser(build_schema())
        return self

    def _new_generation(self, period: str, pair_terms: list[str] | None = None) -> Path:
        """Create an empty generation; ``pair_terms`` None leaves them to its first records."""
        numbers = [
            int(m.group(1)) for p in self.directory.iterdir() if (m := _GEN_RE.match(p.name))
        ]
        gen = self.directory / f"g{max(numbers, default=0) + 1:06d}"
        gen.mkdir()
        meta: dict[str, Any] = {"shard_period": period}
        if pair_terms is not None:
            meta["pair_terms"] = pair_terms
        _write_atomic(gen / "META", json.dumps(meta))
        _write_atomic(gen / "STAMP", "0")
        return gen

    @staticmethod
    def _load_meta(gen: Path) -> dict[str, Any]:
        return dict(json.loads((gen / "META").read_text(encoding="utf-8")))

    def _chosen_pair_terms(self, gen: Path) -> frozenset[bytes]:
        """Return the generation's pair terms, none if not chosen yet (nothing is written)."""
        got = self._pair_sets.get(str(gen))
        if got is None:
            chosen = self._load_meta(gen).get("pair_terms")
            if chosen is None:
                return frozenset()
            got = self._pair_sets[str(gen)] = frozenset(t.encode("utf-8") for t in chosen)
        return got

    def _pair_terms(self, gen: Path, sample: Iterable[dict[str, Any]]) -> frozenset[bytes]:
        """Return the generation's pair terms, choosing them from ``sample`` if not chosen yet.

        Chosen once per generation (by a rebuild, else by the first add) and never changed, so
        every segment of a generation pairs the same terms. Index writes are serialised across
        processes by the archive store's index lock, so two cannot choose at once.
        """
        if str(gen) not in self._pair_sets:
            meta = self._load_meta(gen)
            if "pair_terms" not in meta:
                meta["pair_terms"] = choose_pair_terms(_texts(sample))
                _write_atomic(gen / "META", json.dumps(meta))
        return self._chosen_pair_terms(gen)

    def _current_gen(self) -> Path:
        try:
            name = (self.directory / "CURRENT").read_text(encoding="utf-8").strip()
        except OSError as e:
            raise IndexUnavailable(f"no index at {self.directory}: {e}") from e
        gen = self.directory / name
        if not _GEN_RE.match(name) or not gen.is_dir():
            raise IndexUnavailable(f"index generation {name!r} is missing")
        return gen

    def _shard_names(self, gen: Path) -> list[str]:
        """Return the generation's shards, listed again only when its folder changed."""
        stamp = gen.stat().st_mtime_ns
        cached = self._shard_lists.get(str(gen))
        if cached is not None and cached[0] == stamp:
            return list(cached[1])
        pattern = _SHARD_RE[self._load_meta(gen)["shard_period"]]
        folders = [p for p in gen.iterdir() if pattern.match(p.name)]
        # The folder changes at every index change (its STAMP is replaced); a shard found
        # complete once stays so, and is not opened again to check.
        known = set(cached[1]) if cached is not None else set()
        names = sorted(p.name for p in folders if p.name in known or windex.exists_in(str(p)))
        if len(names) == len(folders):  # (a shard being created is listed again next time)
            self._shard_lists[str(gen)] = (stamp, list(names))
        return names

    def _shard_index(self, gen: Path, name: str, create: bool = False) -> windex.Index:
        key = (str(gen), name)
        ix = self._indexes.get(key)
        if ix is None:
            path = gen / name
            if windex.exists_in(str(path)):
                ix = windex.open_dir(str(path))
            elif create:
                path.mkdir(exist_ok=True)
                ix = windex.create_in(str(path), build_schema())
            else:
                raise IndexUnavailable(f"shard {name} is missing")
            self._indexes[key] = ix
        return ix

    def _bump(self, gen: Path) -> None:
        """Tell searchers in every process that the generation's shards changed. Not fsynced:
        after a crash, every process opens the shards afresh whatever the stamp says."""
        stamp = f"{time.time_ns()} {os.getpid()} {uuid.uuid4().hex}"
        _write_atomic(gen / "STAMP", stamp, durable=False)

    # --- searching ------------------------------------------------------------------------

    def _current_snapshot(self) -> _Snapshot:
        """Return searchers for the current state, refreshing what changed since last time.

        With a freshener running, an indexing batch's new segments are left out until it has
        warmed them up (for at most ``_ADDITIONS_WAIT`` seconds); deletions show at once.
        """
        current = _stat_key(self.directory / "CURRENT")
        with self._lock:
            snap = self._snapshot
            overdue = (
                snap is not None
                and snap.pending is not None
                and time.monotonic() - snap.pending > _ADDITIONS_WAIT
            )
            if snap is not None and not overdue and not self._changed(snap, current):
                return snap
            defer = self._freshener is not None and not overdue
            self._snapshot = self._open_snapshot(snap, defer=defer, install=True)
            return self._snapshot

    def _whole_snapshot(self) -> _Snapshot:
        """The current state with nothing left out (for counts and checks)."""
        snap = self._current_snapshot()
        if snap.pending is None:
            return snap
        with self._lock:
            self._snapshot = self._open_snapshot(snap, defer=False, install=True)
            return self._snapshot

    def _open_snapshot(
        self,
        snap: _Snapshot | None,
        *,
        defer: bool,
        install: bool,
        take: Collection[str] = (),
    ) -> _Snapshot:
        """Open searchers for the index's state, reusing ``snap``'s where a shard is unchanged.

        :param defer: leave out segments and shards added since ``snap`` (deletions in the
            segments it has are taken all the same), except in the shards named in ``take``.
        :param install: the result replaces ``snap`` now, so that searchers it no longer uses
            are closed; otherwise :meth:`_install` does that later.
        """
        current = _stat_key(self.directory / "CURRENT")
        gen = self._current_gen()
        full_key = (current, _stat_key(gen / "STAMP"))
        same_gen = snap is not None and snap.gen == gen
        old = {v.name: v for v in snap.views} if snap is not None and same_gen else {}
        left_out = snap.partial if snap is not None and same_gen else frozenset()
        views: list[ShardView] = []
        partial: set[str] = set()
        pair_terms = self._chosen_pair_terms(gen)
        for name in self._shard_names(gen):
            view = old.get(name)
            complete = name not in left_out
            defer_here = defer and name not in take
            if view is not None and view.cache.searcher.up_to_date() and (complete or defer_here):
                views.append(ShardView(name, view.lo_us, view.hi_us, view.cache, pair_terms))
                if not complete:
                    partial.add(name)
                continue
            if view is None and defer_here and same_gen:
                partial.add(name)  # a new shard: taken in whole once warmed up
                continue
            ix = self._shard_index(gen, name)
            previous_searcher = view.cache.searcher if view is not None else None
            searcher = None
            if defer_here and previous_searcher is not None:
                searcher = open_without_additions(ix, previous_searcher)
                if searcher is not None:
                    partial.add(name)
            if searcher is None:
                searcher = open_searcher(ix, previous_searcher)
            if previous_searcher is not None and install:
                close_replaced(previous_searcher, searcher)
            lo, hi = shard_bounds(name)
            previous = view.cache if view is not None else None
            views.append(ShardView(name, lo, hi, ShardCache(searcher, previous), pair_terms))
        if install and snap is not None and not same_gen:
            for v in snap.views:
                v.cache.searcher.close()
        pending = (snap.pending if snap is not None else None) or time.monotonic()
        return _Snapshot(gen, full_key, views, frozenset(partial), pending)

    def _install(self, snap: _Snapshot) -> None:
        """Make ``snap`` (opened with ``install=False``) the one searches use (under _lock)."""
        installed = self._snapshot
        if installed is not None:
            kept = {v.name: v.cache.searcher for v in snap.views}
            for v in installed.views:
                searcher = kept.get(v.name)
                if searcher is not v.cache.searcher:
                    close_replaced(v.cache.searcher, searcher)
        self._snapshot = snap

    @translate_errors
    def search(self, query: SearchQuery) -> SearchPage:
        """Run a search and return one page with the exact total and facets.

        :param query: what to search for.
        """
        started = time.perf_counter()
        self._check_open()
        validate(query)
        # Whoosh searchers share file handles (seek + read), so one query runs at a time (in
        # arrival order, see turns); the work is Python that holds the GIL anyway.
        with self._turns.turn():
            self._recent.pop(query, None)  # (searches change it one at a time, in their turn)
            self._recent[query] = None
            if len(self._recent) > _WARM_QUERIES:
                del self._recent[next(iter(self._recent))]
            return self._run(self._current_snapshot(), query, started)

    def _run(self, snap: _Snapshot, query: SearchQuery, started: float) -> SearchPage:
        readers = [v.cache.searcher.reader() for v in snap.views]
        compiled = compile_query(query.q, self._parser, readers)
        return run_search(
            snap.views, query, compiled, snap.stats, _load_hit, started, self._turns.checkpoint
        )

    def keep_fresh(self, interval: float = 0.5) -> None:
        """Reopen changed shards in a background thread rather than in the next search, and
        warm an indexing batch's new segments up before searches use them.

        A query's first run on new segments (gathering their postings, scoring, merging date
        orders) takes about 3 times its usual time. Taken by searches at once, an archive
        run's hand-over held every search under way in each process for half a second. With
        a freshener, searches go on without the new segments (deletions in the others show
        at once) while it runs the latest distinct queries on them, one per search turn
        between the others' turns; then searches use them. After other changes it runs those
        queries again while no search waits.

        :param interval: seconds between looks at the index's change stamp.
        """
        self._check_open()
        if self._freshener is None:
            self._freshener = threading.Thread(
                target=self._freshen, args=(interval,), name="index-freshener", daemon=True
            )
            self._freshener.start()

    def _freshen(self, interval: float) -> None:
        while not self._stop_freshening.wait(interval):
            try:
                stale = self._stale()
                if stale:
                    with self._turns.turn():
                        self._current_snapshot()
                snap = self._snapshot
                if snap is not None and snap.pending is not None:
                    self._adopt_additions()
                    continue
                if not stale:
                    continue
                for query in list(self._recent):
                    if not self._turns.idle() or self._stop_freshening.is_set():
                        break
                    self.search(query)
            except IndexUnavailable:  # searches and /healthz report it; keep looking
                continue
            except Exception:
                log.exception("refreshing the index in the background failed")

    def _adopt_additions(self) -> None:
        """Open the new segments a shard per turn, run the latest queries on them a query per
        turn, then let searches use them (with whatever was deleted meanwhile)."""
        warm = self._snapshot
        if warm is None or warm.pending is None:
            return
        for name in sorted(warm.partial):
            if self._stop_freshening.is_set():
                return
            with self._turns.turn(), self._lock:
                warm = self._open_snapshot(warm, defer=True, install=False, take={name})
        with self._turns.turn(), self._lock:  # and what was added meanwhile, if anything
            warm = self._open_snapshot(warm, defer=False, install=False)
        for query in list(self._recent):
            if self._stop_freshening.is_set():
                return
            with self._turns.turn():
                self._run(warm, query, time.perf_counter())
        with self._turns.turn(), self._lock:
            installed = self._snapshot
            if installed is None or installed.gen != warm.gen or installed.pending is None:
                return  # searches opened the whole index meanwhile
            if self._changed(warm, _stat_key(self.directory / "CURRENT")):
                warm = self._open_snapshot(warm, defer=False, install=False)
            self._install(warm)

    def _stale(self) -> bool:
        """Whether searches would reopen shards now (False before the first search)."""
        snap = self._snapshot
        return snap is not None and self._changed(snap, _stat_key(self.directory / "CURRENT"))

    @staticmethod
    def _changed(snap: _Snapshot, current: str | None) -> bool:
        """Whether the index changed since ``snap`` (``current``: CURRENT's stat key now)."""
        return snap.key[0] != current or snap.key[1] != _stat_key(snap.gen / "STAMP")

    def urgent(self) -> AbstractContextManager[None]:
        """A block that runs before any further step of this process's searches (a restore:
        short, and someone waits on it), for up to a tenth of a second."""
        return self._turns.urgent()

    @translate_iter_errors
    def iter_hits(self, query: SearchQuery, chunk: int = 500) -> Iterator[SearchHit]:
        """Every matching record, in the query's order, without snippets (for exports).

        The matches are ordered once; their stored fields are then read a chunk at a time, each
        chunk in a turn of its own, so other searches interleave with a long export. A record
        that leaves the index meanwhile (restored, purged) is skipped.

        :param query: what to search for; `page` and `per_page` are ignored.
        :param chunk: how many hits to load per turn.
        """
        self._check_open()
        validate(query)
        with self._turns.turn():
            snap = self._current_snapshot()
            readers = [v.cache.searcher.reader() for v in snap.views]
            compiled = compile_query(query.q, self._parser, readers)
            ordered = order_matches(snap.views, query, compiled, snap.stats)
        for start in range(0, len(ordered), chunk):
            with self._turns.turn():
                views = {v.name: v for v in self._current_snapshot().views}
                hits = []
                for i in range(start, min(start + chunk, len(ordered))):
                    view = views.get(ordered.shard_names[ordered.shards[i]])
                    rid = ordered.record_ids[i]
                    docnum = None if view is None else view.cache.searcher.document_number(id=rid)
                    if view is not None and docnum is not None:
                        score = ordered.scores[i] if ordered.scores is not None else 0.0
                        hits.append(_load_hit(view, docnum, score, compiled, snippet=False))
            yield from hits

    @translate_iter_errors
    def iter_ids(self) -> Iterator[str]:
        """Yield every indexed record id (for checking the index against the store)."""
        self._check_open()
        with self._turns.turn():
            snap = self._whole_snapshot()
            ids = [v.cache.record_id(d) for v in snap.views for d in v.cache.live_docs.tolist()]
        yield from ids

    @translate_errors
    def check_readable(self) -> None:
        """Open this process's searchers as a search would (the health check); raises
        IndexUnavailable if the index cannot be read."""
        self._check_open()
        with self._turns.turn():
            self._current_snapshot()

    @translate_errors
    def doc_count(self) -> int:
        """Return the number of indexed records."""
        self._check_open()
        with self._turns.turn():
            snap = self._whole_snapshot()
            return sum(len(v.cache.live_docs) for v in snap.views)

    # --- writing --------------------------------------------------------------------------

    @translate_errors
    def add(
        self,
        docs: Iterable[tuple[dict[str, Any], datetime]],
        *,
        first_versions: Collection[str] = (),
        merge: bool = True,
    ) -> int:
        """Index records, replacing any indexed record with the same id (in whichever shard).

        :param docs: ``(record, archived_at)`` pairs.
        :param merge: then merge small segments as the policy says; False leaves that to a
            later :meth:`merge_segments` (the catch-up runs it outside the index lock).
        :param first_versions: ids of records archived for the first time. An indexed copy of
            one can only be that same version, in the shard of its own ``created_at``, so only
            that shard is searched for it (at 1,000,000 records, looking every id up in every
            segment of every shard was a third of the archive job's indexing time).
        """
        self._check_open()
        batch: dict[str, tuple[dict[str, Any], datetime]] = {}
        for record, archived_at in docs:
            batch[record["id"]] = (record, archived_at)
        if not batch:
            return 0
        with self._write_lock:
            gen = self._current_gen()
            period = self._load_meta(gen)["shard_period"]
            by_shard: dict[str, list[dict[str, Any]]] = {}
            home: dict[str, str] = {}
            first = set(first_versions)
            for record, archived_at in batch.values():
                name = _record_shard(record, period)
                by_shard.setdefault(name, []).append(build_document(record, archived_at))
                if record["id"] in first:
                    home[record["id"]] = name
            holders = self._find_ids(gen, list(batch), home)
            pair_terms = self._pair_terms(gen, (record for record, _at in batch.values()))
            for name, documents in sorted(by_shard.items()):
                ix = self._shard_index(gen, name, create=True)
                writer = open_writer(ix, pair_terms, timeout=60.0)
                try:
                    for doc in documents:
                        if name in holders.get(doc["id"], ()):
                            writer.delete_by_term("id", doc["id"])
                        _add_record(writer, doc)
                except BaseException:
                    writer.cancel()
                    raise
                self._commit(ix, writer, merge=merge)
            # Then drop the copies that moved to another shard (created_at changed).
            stale: dict[str, list[str]] = {}
            for name, documents in by_shard.items():
                for doc in documents:
                    for other in holders.get(doc["id"], ()):
                        if other != name:
                            stale.setdefault(other, []).append(doc["id"])
            self._delete_in(gen, stale)
            self._bump(gen)
        return len(batch)

    @translate_errors
    def delete(self, record_ids: Iterable[str], current: Iterable[dict[str, Any]] = ()) -> int:
        """Remove records from the index; returns how many were indexed.

        :param record_ids: the ids to remove.
        :param current: the latest archived version of some of them (a restore has it). Indexing
            keeps a record's only copy in the shard of its latest version's ``created_at``, so
            each is looked for there first, and in the other shards only if it is not there.
        """
        self._check_open()
        ids = list(dict.fromkeys(record_ids))
        if not ids:
            return 0
        with self._write_lock:
            gen = self._current_gen()
            period = self._load_meta(gen)["shard_period"]
            wanted = set(ids)
            home = {r["id"]: _record_shard(r, period) for r in current if r["id"] in wanted}
            holders = self._find_ids(gen, ids, home)
            elsewhere = [rid for rid in home if rid not in holders]
            if elsewhere:  # not indexed yet, or a copy the rule above does not account for
                holders.update(self._find_ids(gen, elsewhere))
            by_shard: dict[str, list[str]] = {}
            for rid, names in holders.items():
                for name in names:
                    by_shard.setdefault(name, []).append(rid)
            self._delete_in(gen, by_shard)
            if by_shard:
                self._bump(gen)
        return len(holders)

    @translate_errors
    def prepare_deletes(self) -> None:
        """Open every shard's id look-up searcher now, so that the first restore after start
        does not (a reader per segment: about 150 ms at 1,000,000 records). No-op without an
        index."""
        self._check_open()
        with self._write_lock:
            try:
                gen = self._current_gen()
            except IndexUnavailable:
                return
            for name in self._shard_names(gen):
                self._id_searcher(gen, name)

    def _delete_in(self, gen: Path, by_shard: dict[str, list[str]]) -> None:
        """Mark records deleted shard by shard, each in a commit that writes only a new table
        of contents (Whoosh's writer would first create, then throw away, a new segment's
        files: most of a restore's index time). The shard keeps its segments, so searchers
        keep their column caches."""
        for name, rids in sorted(by_shard.items()):
            ix = self._shard_index(gen, name)
            lock = ix.lock("WRITELOCK")
            if not try_for(lock.acquire, timeout=60.0, delay=0.05):
                raise LockError(f"shard {name} stayed locked for 60 s")
            try:
                toc = ix._read_toc()
                searcher = self._id_searcher(gen, name)  # up to date: the shard is locked
                offsets = list(
                    itertools.accumulate((s.doc_count_all() for s in toc.segments), initial=0)
                )
                for rid in rids:
                    for docnum in searcher.document_numbers(id=rid):
                        i = bisect.bisect_right(offsets, docnum) - 1
                        toc.segments[i].delete_document(docnum - offsets[i])
                generation = toc.generation + 1
                TOC(toc.schema, toc.segments, generation).write(ix.storage, ix.indexname)
                windex.clean_files(ix.storage, ix.indexname, generation, toc.segments)
            finally:
                lock.release()

    # --- adding in parallel -------------------------------------------------------------

    @translate_errors
    def stage(
        self, docs: Iterable[tuple[dict[str, Any], datetime]], *, processes: bool = True
    ) -> StagedRecords | None:
        """Analyse and write records as segments beside the live shards, at the index workers'
        priority.

        Nothing becomes searchable and no lock is held: :meth:`attach` then adds the segments
        to their shards in one short commit each, or :meth:`discard` drops them. ``docs`` is
        read while they are written, so it may be a generator reading the store. Returns None
        when the index has shards that predate the current schema (use :meth:`add`).

        :param docs: ``(record, archived_at)`` pairs, each id once.
        :param processes: write on both cores, in the two index worker processes; else in a
            thread of this process (for a few records, not worth starting processes).
        """
        self._check_open()
        gen = self._current_gen()
        period = self._load_meta(gen)["shard_period"]
        fields = set(build_schema().names())
        stream = iter(docs)
        with self._write_lock:
            for name in self._shard_names(gen):
                if set(self._shard_index(gen, name).schema.names()) != fields:
                    return None
            if not self._chosen_pair_terms(gen):
                head = list(itertools.islice(stream, PAIR_SAMPLE))
                self._pair_terms(gen, (record for record, _at in head))
                stream = itertools.chain(head, stream)
        shards: dict[str, list[str]] = {}

        def noted() -> Iterator[tuple[dict[str, Any], datetime]]:
            for record, archived_at in stream:
                shards.setdefault(_record_shard(record, period), []).append(record["id"])
                yield record, archived_at

        _remove_abandoned_stages(gen / _STAGED)
        root = gen / _STAGED / f"{os.getpid()}-{uuid.uuid4().hex}"
        root.mkdir(parents=True)
        try:
            if processes:
                _parallel_build(gen, period, noted(), None, False, root, self._worker_nice)
            else:
                pair_terms = self._chosen_pair_terms(gen)
                self._background.run(
                    lambda: _write_parts(_shard_batches(noted(), period), root, "w0", pair_terms)
                )
            with self._write_lock:
                self._background.run(lambda: self._read_segment_ids(gen))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return StagedRecords(gen, root, shards)

    @translate_errors
    def attach(
        self,
        staged: StagedRecords,
        keep: Collection[str],
        *,
        first_versions: Collection[str] = (),
        merge: bool = True,
        shards: Collection[str] | None = None,
    ) -> int | None:
        """Make staged records searchable, replacing indexed copies of the same ids.

        Staged records not in ``keep`` (changed since they were staged) are marked deleted in
        their new segment. Returns how many records were attached, or None if the index was
        rebuilt since staging (nothing is attached). Unless ``shards`` is given, the staged
        files are gone afterwards either way.

        :param keep: ids of the staged records to attach.
        :param first_versions: ids archived for the first time (see :meth:`add`).
        :param merge: as for :meth:`add`.
        :param shards: attach only the records staged for these shards; the others stay
            staged (for a later call, or :meth:`discard`).
        """
        self._check_open()
        try:
            with self._write_lock:
                gen = self._current_gen()
                if gen != staged.gen:
                    return None
                keep = set(keep)
                first = set(first_versions)
                chosen = {
                    name: ids
                    for name, ids in staged.shards.items()
                    if shards is None or name in shards
                }
                home = {
                    rid: name
                    for name, ids in chosen.items()
                    for rid in ids
                    if rid in keep and rid in first
                }
                wanted = [rid for ids in chosen.values() for rid in ids if rid in keep]
                holders = self._find_ids(gen, wanted, home)
                pair_terms = self._chosen_pair_terms(gen)
                count = 0
                for name, ids in sorted(chosen.items()):
                    ix = self._shard_index(gen, name, create=True)
                    writer = open_writer(ix, pair_terms, timeout=60.0)
                    try:
                        replaced = [r for r in ids if r in keep and name in holders.get(r, ())]
                        self._delete_ids(writer, gen, name, replaced)
                        segments = []
                        for part in sorted((staged.root / name).iterdir()):
                            part_ix = windex.open_dir(str(part))
                            for segment in part_ix._segments():
                                left = _delete_unkept(part_ix, segment, keep)
                                if left:  # else its files go with the staging folder
                                    _move_segment_files(part, gen / name, segment)
                                    segments.append(segment)
                                    count += left
                            part_ix.close()
                    except BaseException:
                        writer.cancel()
                        raise
                    self._commit(ix, writer, merge=merge, attach=segments)
                stale: dict[str, list[str]] = {}
                for rid, names in holders.items():
                    for other in names:
                        if rid not in staged.shards.get(other, ()):
                            stale.setdefault(other, []).append(rid)
                self._delete_in(gen, stale)
                self._bump(gen)
                return count
        finally:
            if shards is None:
                self.discard(staged)

    @translate_errors
    def discard(self, staged: StagedRecords) -> None:
        """Remove staged segments that were not attached."""
        _remove_stage(staged.root)

    def _find_ids(
        self, gen: Path, ids: list[str], home: Mapping[str, str] | None = None
    ) -> dict[str, list[str]]:
        """Return, for each indexed id among ``ids``, the shards holding a live copy.

        :param home: ids to look for in one shard only (``add``'s first versions).
        """
        home = home or {}
        anywhere = {rid.encode("utf-8"): rid for rid in ids if rid not in home}
        found: dict[str, list[str]] = {}
        known: dict[str, frozenset[bytes]] = {}
        probed: dict[str, int] = {}
        names = self._shard_names(gen)
        self._close_id_searchers(keep={(str(gen), name) for name in names})
        skipped = False
        for name in names:
            wanted = dict(anywhere)
            wanted.update((rid.encode("utf-8"), rid) for rid, at in home.items() if at == name)
            if not wanted:
                skipped = True
                continue
            searcher = self._id_searcher(gen, name)
            hits: set[bytes] = set()
            for leaf, _base in searcher.reader().leaf_readers():
                segment = leaf.segment()
                if segment is None:
                    continue
                segid = segment.segid
                seg_ids = self._segment_ids.get(segid)
                if seg_ids is None:
                    # Look ids up in a segment until that has cost as much as reading all
                    # of its ids once would have, then read them (a long catch-up).
                    spent = self._segment_probes.get(segid, 0) + len(wanted)
                    if spent * _READ_IDS_COST < segment.doc_count_all():
                        probed[segid] = spent
                        hits.update(b for b in wanted if ("id", b) in leaf)
                        continue
                    seg_ids = _segment_id_set(leaf)
                known[segid] = seg_ids
                hits.update(b for b in wanted if b in seg_ids)  # (not &: it walks seg_ids)
            for btext in sorted(hits):
                rid = wanted[btext]
                if searcher.document_number(id=rid) is not None:
                    found.setdefault(rid, []).append(name)
        if skipped:  # keep what the shards not searched know; a full look-up prunes it
            known = {**self._segment_ids, **known}
            probed = {**self._segment_probes, **probed}
        self._segment_ids = known
        self._segment_probes = probed
        return found

    def _read_segment_ids(self, gen: Path) -> None:
        """Read the ids of every segment not read yet (under _write_lock).

        Done after staging, before the store's index lock is taken: attaching then looks ids
        up in memory, except in segments written since.
        """
        for name in self._shard_names(gen):
            for leaf, _base in self._id_searcher(gen, name).reader().leaf_readers():
                segment = leaf.segment()
                if segment is not None and segment.segid not in self._segment_ids:
                    self._segment_ids[segment.segid] = _segment_id_set(leaf)

    def _delete_ids(self, writer: Any, gen: Path, name: str, record_ids: Iterable[str]) -> None:
        """Mark a shard's live copies of records deleted in a writer holding its lock.

        Whoosh's ``delete_by_term`` opens a reader on every segment of the shard first (most of
        a restore's time); the id searcher, brought up to date under the writer's lock, reads
        the same segments with readers already open.
        """
        searcher = self._id_searcher(gen, name)
        for rid in record_ids:
            for docnum in list(searcher.document_numbers(id=rid)):
                writer.delete_document(docnum)

    def _id_searcher(self, gen: Path, name: str) -> Any:
        """Return an up-to-date searcher of a shard for id look-ups (under _write_lock)."""
        key = (str(gen), name)
        searcher = self._id_searchers.get(key)
        if searcher is None or not searcher.up_to_date():
            fresh = open_searcher(self._shard_index(gen, name), searcher)
            if searcher is not None:
                close_replaced(searcher, fresh)
            searcher = self._id_searchers[key] = fresh
        return searcher

    def _close_id_searchers(self, keep: set[tuple[str, str]] | None = None) -> None:
        for key in [k for k in self._id_searchers if keep is None or k not in keep]:
            self._id_searchers.pop(key).close()

    def _commit(
        self, ix: windex.Index, writer: Any, merge: bool = True, attach: Sequence[Any] = ()
    ) -> None:
        """Commit a writer from :func:`open_writer`, remembering the ids of the segment it wrote.

        :param merge: then merge the shard's small segments if the policy says so, in a commit
            of their own (see ``merging``: a writer with no new documents stitches them).
        :param attach: finished segments whose files were moved into the shard, to list too.
        """
        writer.commit(mergetype=lambda w, segments: [*segments, *attach])
        self._remember_ids(writer)
        if merge:
            self._merge_shard(ix)

    def _merge_shard(self, ix: windex.Index) -> bool:
        """Merge a shard's segments if the policy picks any (under _write_lock).

        The merged segment is written beside the shard holding no lock on it, in a thread at
        the index workers' lower priority: restores and other writers go on meanwhile. Then,
        under the shard's write lock, documents deleted meanwhile in its sources are marked
        deleted in it too, and it replaces them in one commit. If a source is gone by then,
        nothing changes.
        """
        segments = ix._segments()
        picks = choose_merges(0, [(s.doc_count_all(), s.deleted_count()) for s in segments])
        if not picks:
            return False
        shard = Path(ix.storage.folder)
        folder = shard.parent / _STAGED / f"{os.getpid()}-merge-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        try:
            merged, sources = self._background.run(
                lambda: _write_merge(ix, [segments[i] for i in picks], folder)
            )
            writer = open_writer(ix, frozenset(), timeout=60.0)
            try:
                current = {segment.segid: segment for segment in writer.segments}
                if any(source.segid not in current for source in sources):
                    writer.cancel()
                    return False
                for source in sources:
                    for docnum in set(current[source.segid].deleted_docs()) - source.deleted:
                        merged.delete_document(source.new_number(docnum))
                _move_segment_files(folder, shard, merged)
            except BaseException:
                writer.cancel()
                raise
            gone = {source.segid for source in sources}
            writer.commit(
                mergetype=lambda w, segments: [s for s in segments if s.segid not in gone]
                + [merged]
            )
            known = [self._segment_ids[segid] for segid in gone if segid in self._segment_ids]
            if len(known) == len(gone):  # a superset is enough: see _find_ids
                self._segment_ids[merged.segid] = frozenset[bytes]().union(*known)
            return True
        finally:
            _remove_stage(folder)

    @translate_errors
    def merge_segments(self) -> int:
        """Merge small segments in every shard as the policy says; returns how many merged.

        A merge does not change what the index answers, so it needs no archive store lock;
        it holds the shard's own write lock while it runs.
        """
        self._check_open()
        with self._write_lock:
            gen = self._current_gen()
            merged = sum(
                self._merge_shard(self._shard_index(gen, name)) for name in self._shard_names(gen)
            )
            if merged:
                self._bump(gen)
        return merged

    def _remember_ids(self, writer: Any) -> None:
        ids = getattr(writer, "segment_ids", None)
        if ids is not None and writer._added:
            self._segment_ids[writer.newsegment.segid] = ids

    # --- rebuild ----------------------------------------------------------------------------

    @translate_errors
    def rebuild(
        self,
        docs: Iterable[tuple[dict[str, Any], datetime]],
        total: int | None = None,
        progress: bool = False,
    ) -> int:
        """Build a fresh index from ``docs`` beside the live one and swap it in when complete.

        Searches keep using the old shards until the swap. Two worker processes analyse and
        write; each shard ends up as one Whoosh index with (at most) one segment per worker.

        :param docs: ``(record, archived_at)`` pairs, every record to index.
        :param total: how many docs there are, for the progress bar.
        :param progress: show a tqdm progress bar on stderr.
        """
        self._check_open()
        stream = iter(docs)
        head = list(itertools.islice(stream, PAIR_SAMPLE))
        pair_terms = choose_pair_terms(_texts(record for record, _at in head))
        with self._write_lock:
            gen = self._new_generation(self._period, pair_terms)
            try:
                count = _parallel_build(
                    gen,
                    self._period,
                    itertools.chain(head, stream),
                    total,
                    progress,
                    gen / "_parts",
                    self._worker_nice,
                )
                _join_parts(gen)
            except BaseException:
                shutil.rmtree(gen, ignore_errors=True)
                raise
            _write_atomic(gen / "STAMP", f"{time.time_ns()} {os.getpid()}")
            old = self._current_gen()
            _write_atomic(self.directory / "CURRENT", gen.name)
            self._remove_old_generations(keep={gen.name, old.name})
        return count

    def _remove_old_generations(self, keep: set[str]) -> None:
        # The previous generation stays until the next rebuild: other processes may still have
        # searchers open on it.
        for p in self.directory.iterdir():
            if _GEN_RE.match(p.name) and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                for key in [k for k in self._indexes if k[0] == str(p)]:
                    del self._indexes[key]

    def close(self) -> None:
        """Close searchers; the index can no longer be used."""
        self._stop_freshening.set()
        if self._freshener is not None:
            self._freshener.join()
        with self._lock:
            if self._snapshot is not None:
                for v in self._snapshot.views:
                    v.cache.searcher.close()
            self._snapshot = None
            self._close_id_searchers()
            self._indexes.clear()
            self._closed = True
        self._background.close()

    def _check_open(self) -> None:
        if self._closed:
            raise IndexUnavailable("the index is closed")

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _MemoryPool:
    """The postings of the segment being written, grouped by field and term in memory.

    Stands in for Whoosh's PostingPool, which pickles every posting into sorted run files and
    merges them back through a heap: that, and the generic per-posting path around it, was
    over half of indexing time. Postings of one term arrive in increasing document order
    (documents are numbered as they are added, merged segments after them), so nothing needs
    sorting but the terms, once, when the segment is flushed.
    """

    def __init__(self) -> None:
        self.fields: dict[str, dict[bytes, tuple[array[int], array[float], list[bytes]]]] = {}

    def terms(self, fieldname: str) -> dict[bytes, tuple[array[int], array[float], list[bytes]]]:
        """Return the term table of a field."""
        terms = self.fields.get(fieldname)
        if terms is None:
            terms = self.fields[fieldname] = {}
        return terms

    def postings(
        self, fieldname: str, btext: bytes
    ) -> tuple[array[int], array[float], list[bytes]]:
        """Return a term's buffered document numbers, weights and values, made if new."""
        terms = self.terms(fieldname)
        entry = terms.get(btext)
        if entry is None:
            entry = terms[btext] = (array("I"), array("f"), [])
        return entry

    def add(self, item: tuple[str, bytes, int, float, bytes | None]) -> None:
        """Add one ``(fieldname, btext, docnum, weight, value)`` posting (Whoosh merges)."""
        fieldname, btext, docnum, weight, value = item
        entry = self.postings(fieldname, btext)
        entry[0].append(docnum)
        entry[1].append(weight)
        if value:
            entry[2].append(value)

    def cleanup(self) -> None:
        """Drop the buffered postings."""
        self.fields.clear()


def _add_record(writer: Any, doc: dict[str, Any]) -> None:
    """SegmentWriter.add_document for our schema, straight into the writer's _MemoryPool.

    Same segment content as ``add_document(**doc)``: each text is analysed by
    :func:`index_term_positions` once (its word-pair field reuses the result), and ID fields
    (one whole term each) skip the analyzer. Fields the shard's schema lacks are skipped: a
    shard made before the word-pair fields existed keeps its schema.
    """
    schema = writer.schema
    pool: _MemoryPool = writer.pool
    docnum = writer.docnum
    # Analyse first: a failure here leaves neither the pool nor the per-document writer touched.
    entries: list[tuple[str, Any, Any, Any]] = []
    analysed: dict[str, dict[bytes, list[int]]] = {}
    for fieldname in sorted(doc):
        value = doc[fieldname]
        if value is None or fieldname not in schema:
            continue
        field = schema[fieldname]
        postings: Any = None
        if field.indexed:
            fmt = field.format
            if type(fmt) is ArchivePositions:
                postings = analysed[value] = index_term_positions(value)
            elif type(field.analyzer) is PairTokenizer:
                positions = analysed.get(value)
                if positions is None:
                    positions = index_term_positions(value)
                postings = pair_postings(positions, writer.pair_terms)
            elif type(fmt) is Existence and type(field.analyzer) is IDTokenizer:
                postings = ((value.encode("utf-8"), 1, fmt.field_boost, b""),)
            else:
                postings = list(field.index(value))
        entries.append((fieldname, field, value, postings))
    pdw = writer.perdocwriter
    columns = pdw._colwriters
    pdw.start_doc(docnum)
    single = SINGLE_POSITION_VALUES
    nsingle = len(single)
    for fieldname, field, value, postings in entries:
        length = 0
        if postings is not None:
            terms = pool.terms(fieldname)
            if type(postings) is dict:
                encode = field.format.encode
                for btext, poslist in postings.items():
                    entry = terms.get(btext)
                    if entry is None:
                        entry = terms[btext] = (array("I"), array("f"), [])
                    n = len(poslist)
                    entry[0].append(docnum)
                    entry[1].append(n)
                    p = poslist[0]
                    entry[2].append(single[p] if n == 1 and p < nsingle else encode(poslist))
                    length += n
                if not field.scorable:
                    length = 0
            else:
                scorable = field.scorable
                for btext, freq, weight, vbytes in postings:
                    entry = terms.get(btext)
                    if entry is None:
                        entry = terms[btext] = (array("I"), array("f"), [])
                    entry[0].append(docnum)
                    entry[1].append(weight)
                    if vbytes:
                        entry[2].append(vbytes)
                    if scorable:
                        length += freq
        pdw.add_field(fieldname, field, value if field.stored else None, length)
        column = field.column_type
        if column:
            cw = columns.get(fieldname)
            if cw is None:
                pdw.add_column_value(fieldname, column, field.to_column_value(value))
            else:
                cw.add(docnum, field.to_column_value(value))
    pdw.finish_doc()
    writer._added = True
    writer.docnum += 1


def _doc_length_bytes(pdr: Any, fieldname: str, doccount: int) -> bytes | None:
    """Return a field's length byte per document of a new segment (Whoosh's lengths column).

    The bytes order like the lengths they stand for, and Whoosh's block and term statistics
    store lengths as these bytes, so they are used as they are.
    """
    reader = pdr._cached_reader(_lenfield(fieldname), LENGTHS_COLUMN)
    if reader is None:
        return None
    got = bytes(reader)
    return got + bytes(doccount - len(got))


def _write_field(
    fw: Any,
    terms: dict[bytes, tuple[array[int], array[float], list[bytes]]],
    lengths: bytes | None,
) -> None:
    """Write one field's posting lists and term infos as W3FieldWriter would, a field at a time.

    The bytes are those of Whoosh's W3PostingsWriter and OrderedHashWriter, except for
    compression: a block whose pickled data is under SMALL_BLOCK bytes is stored uncompressed
    (flag 0 in its header, which the reader honours; zlib would not make it smaller), others
    through :func:`segment_format.compress`. Output is gathered in memory and written once per
    field.
    """
    postfile = fw._postfile
    table = TermTable(fw)
    limit = fw._codec._blocklimit
    comp = fw._codec._compression
    fixed = fw._format.fixed_value_size()
    pack_values = fixed is None or fixed < 0
    dumps = pickle.dumps
    pack_int = PACK_INT
    out: list[bytes] = []
    offset = postfile.tell()
    for btext in sorted(terms):
        docs, weights, values = terms[btext]
        start = offset
        out.append(WHOOSH3_HEADER_MAGIC)
        offset += 4
        total = 0.0
        maxweight = 0.0
        minlength = 0  # length bytes, 0 for none
        maxlength = 0
        n = len(docs)
        for i in range(0, n, limit):
            ids = docs[i : i + limit] if n > limit else docs
            ws = weights[i : i + limit] if n > limit else weights
            count = len(ids)
            first = ws[0]
            if count == 1:
                deltas: tuple[int, ...] = (ids[0],)
                miniw: Any = None if first == 1.0 else first
                bmax = first
                bsum = first
            else:
                deltas = tuple([ids[0], *map(operator.sub, ids[1:], ids)])
                if first == 1.0 and ws.count(1.0) == count:
                    miniw = None
                elif ws.count(first) == count:
                    miniw = first
                else:
                    miniw = tuple(ws)
                bmax = max(ws)
                bsum = sum(ws)
            if pack_values:
                miniv: Any = tuple(values[i : i + limit])
            elif fixed == 0:
                miniv = None
            else:
                miniv = b"".join(values[i : i + limit])
            data = dumps((deltas, miniw, miniv), 2)
            bcomp = comp if len(data) >= SMALL_BLOCK else 0
            if bcomp:
                data = compress(data, bcomp)
            bmin = bmaxlen = 0
            if lengths is not None:
                if count == 1:
                    bmin = bmaxlen = lengths[ids[0]]
                else:
                    ls = [x for x in map(lengths.__getitem__, ids) if x]
                    if ls:
                        bmin = min(ls)
                        bmaxlen = max(ls)
            info = dumps((count, ids[-1], bmax, bcomp, bmin, bmaxlen), 2)
            size = len(info) + len(data)
            out.append(pack_int(-size if i + limit >= n else size))
            out.append(info)
            out.append(data)
            offset += 4 + size
            total += bsum
            if bmin and (not minlength or bmin < minlength):
                minlength = bmin
            if bmaxlen > maxlength:
                maxlength = bmaxlen
            if bmax > maxweight:
                maxweight = bmax
        value = TERMINFO.pack(
            False,
            total,
            n,
            minlength,
            maxlength,
            maxweight,
            docs[0],
            docs[-1],
        ) + EXTENT.pack(start, offset - start)
        table.add(btext, value)
    postfile.write(b"".join(out))
    table.flush()


def _flush_pool(writer: Any) -> None:
    """SegmentWriter._flush_segment from a _MemoryPool, a whole field at a time."""
    writer.perdocwriter.close()
    pdr = writer.per_document_reader()
    doccount = writer.docnum
    fw = writer.fieldwriter
    pool: _MemoryPool = writer.pool
    schema = writer.schema
    writer.segment_ids = frozenset(pool.fields.get("id", ())) | getattr(
        writer, "merged_ids", frozenset()
    )
    try:
        for fieldname in sorted(pool.fields):
            if fieldname not in schema:
                continue
            fw.start_field(fieldname, schema[fieldname])
            lengths = _doc_length_bytes(pdr, fieldname, doccount)
            _write_field(fw, pool.fields[fieldname], lengths)
            fw.finish_field()
            pool.fields[fieldname] = {}
    finally:
        pdr.close()
    fw.close()


def open_writer(ix: windex.Index, pair_terms: frozenset[bytes], **kwargs: Any) -> Any:
    """Open a Whoosh writer on a shard that buffers postings in memory (see _MemoryPool).

    Add documents with :func:`_add_record`; Whoosh's own ``add_document`` would bypass the pool.

    :param ix: the shard index.
    :param pair_terms: the generation's pair terms (see ``analysis.choose_pair_terms``).
    """
    writer = ix.writer(**kwargs)
    writer.pool = _MemoryPool()
    writer.pair_terms = pair_terms
    writer._flush_segment = types.MethodType(_flush_pool, writer)
    return writer


def _load_hit(
    view: ShardView, docnum: int, score: float, compiled: CompiledQuery, snippet: bool = True
) -> SearchHit:
    stored = view.cache.searcher.stored_fields(docnum)["stored"]
    (rid, kind, category, customer_id, owner, subject, status, created, updated, archived, body) = (
        stored
    )
    text = ""
    if snippet:
        text = (
            make_snippet(body, "body", compiled)
            or make_snippet(subject, "subject", compiled)
            or plain_snippet(body)
        )
    return SearchHit(
        id=rid,
        kind=kind,
        category=category,
        customer_id=customer_id,
        owner=owner,
        subject=subject,
        status=status,
        created_at=created,
        updated_at=updated,
        archived_at=archived,
        score=round(score, 6),
        snippet=text,
    )


# --- parallel rebuild ---------------------------------------------------------------------------


def run_build_worker() -> None:
    """Entry point of a rebuild worker process: pickled batches on stdin, a JSON line out."""
    gen, worker, parts_root = sys.argv[1], int(sys.argv[3]), Path(sys.argv[4])
    _lower_priority(0, int(sys.argv[5]))
    meta = json.loads((Path(gen) / "META").read_text(encoding="utf-8"))
    pair_terms = frozenset(t.encode("utf-8") for t in meta["pair_terms"])
    inbox = sys.stdin.buffer

    def batches() -> Iterator[tuple[str, list[tuple[dict[str, Any], datetime]]]]:
        while (item := pickle.load(inbox)) is not None:
            yield item

    try:
        count = _write_parts(batches(), parts_root, f"w{worker}", pair_terms)
        print(json.dumps({"ok": True, "count": count}), flush=True)
    except BaseException as e:  # report, the parent raises
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)


def _write_parts(
    batches: Iterable[tuple[str, list[tuple[dict[str, Any], datetime]]]],
    parts_root: Path,
    part: str,
    pair_terms: frozenset[bytes],
) -> int:
    """Write batches of one shard's records each as segments under ``parts_root/<shard>/<part>``;
    returns how many records were written."""
    writers: dict[str, Any] = {}
    buffered = 0
    count = 0
    try:
        for name, batch in batches:
            writer = writers.get(name)
            if writer is None:
                path = parts_root / name / part
                path.mkdir(parents=True, exist_ok=True)
                if windex.exists_in(str(path)):
                    ix = windex.open_dir(str(path))
                else:
                    ix = windex.create_in(str(path), build_schema())
                writer = writers[name] = open_writer(ix, pair_terms)
            for record, archived_at in batch:
                _add_record(writer, build_document(record, archived_at))
            count += len(batch)
            buffered += len(batch)
            if buffered > WORKER_BUFFERED_DOCS:
                # Bound memory: the fullest shard gets a segment now and starts another.
                name = max(writers, key=lambda n: writers[n].doc_count())
                buffered -= writers[name].doc_count()
                writers.pop(name).commit(merge=False)
        while writers:
            writers.popitem()[1].commit(merge=False)
    except BaseException:
        for writer in writers.values():
            try:
                writer.cancel()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        raise
    return count


def _shard_batches(
    docs: Iterable[tuple[dict[str, Any], datetime]], period: str
) -> Iterator[tuple[str, list[tuple[dict[str, Any], datetime]]]]:
    """Group records into batches of one shard's records each (ids checked unique)."""
    buffers: dict[str, list[tuple[dict[str, Any], datetime]]] = {}
    seen: set[str] = set()
    for record, archived_at in docs:
        if record["id"] in seen:
            raise IndexerError(f"duplicate record id in rebuild input: {record['id']}")
        seen.add(record["id"])
        name = _record_shard(record, period)
        buf = buffers.setdefault(name, [])
        buf.append((record, archived_at))
        if len(buf) >= _BATCH:
            yield name, buf
            buffers[name] = []
    for name, buf in buffers.items():
        if buf:
            yield name, buf


def _start_worker(
    gen: Path, period: str, worker: int, parts_root: Path, nice: int
) -> subprocess.Popen[bytes]:
    # A plain subprocess (not multiprocessing): no dependence on how the parent's __main__
    # was started, and no fork of a possibly multi-threaded server process.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    code = "from indexer.whoosh.index import run_build_worker; run_build_worker()"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(gen), period, str(worker), str(parts_root), str(nice)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


def _feed(proc: subprocess.Popen[bytes], batches: queue.Queue[Any], failed: list[str]) -> None:
    """Feeder thread: move batches from the shared queue into one worker's stdin."""
    assert proc.stdin is not None
    while True:
        item = batches.get()
        try:
            if not failed or item is None:
                pickle.dump(item, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError as e:  # the worker died; its report says why
            failed.append(str(e))
        if item is None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            return


def _parallel_build(
    gen: Path,
    period: str,
    docs: Iterable[tuple[dict[str, Any], datetime]],
    total: int | None,
    progress: bool,
    parts_root: Path,
    nice: int,
    workers: int = 2,
) -> int:
    """Feed batches to worker processes (whichever is free); each writes its segments of each
    shard under ``parts_root/<shard>/w<worker>``.

    :param nice: the workers' niceness. They hold no lock, so running them below the server's
        priority slows nothing but themselves: on a busy machine searches get the cores first.
    """
    procs = [_start_worker(gen, period, i, parts_root, nice) for i in range(workers)]
    batches: queue.Queue[Any] = queue.Queue(maxsize=8 * workers)
    failed: list[str] = []
    feeders = [
        threading.Thread(target=_feed, args=(p, batches, failed), daemon=True) for p in procs
    ]
    for t in feeders:
        t.start()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="rec", desc="rebuild")
    count = 0
    try:
        for name, buf in _shard_batches(docs, period):
            batches.put((name, buf))
            count += len(buf)
            if bar is not None:
                bar.update(len(buf))
            if failed:
                break
    finally:
        for _ in procs:
            batches.put(None)
        for t in feeders:
            t.join()
    errors = list(failed)
    for p in procs:
        assert p.stdout is not None
        out = p.stdout.read()
        p.stdout.close()
        p.wait()
        lines = out.decode("utf-8", "replace").strip().splitlines()
        report = json.loads(lines[-1]) if lines else {"ok": False, "error": "no report"}
        if not report.get("ok") or p.returncode:
            errors.append(str(report.get("error") or f"exit {p.returncode}"))
    if bar is not None:
        bar.close()
    if errors:
        raise IndexerError("index workers failed: " + "; ".join(errors))
    return count


def _join_parts(gen: Path) -> None:
    """Make each shard one Whoosh index holding the segments every worker wrote for it."""
    parts_root = gen / "_parts"
    if not parts_root.exists():
        return
    for shard_dir in sorted(parts_root.iterdir()):
        parts = sorted(p for p in shard_dir.iterdir() if windex.exists_in(str(p)))
        target = gen / shard_dir.name
        target.mkdir()
        storage = FileStorage(str(target))
        segments = []
        schema = None
        for part in parts:
            ix = windex.open_dir(str(part))
            schema = ix.schema
            segs = ix._segments()
            for seg in segs:
                _move_segment_files(part, target, seg)
            segments.extend(segs)
            ix.close()
        assert schema is not None
        TOC(schema, segments, 1).write(storage, windex._DEF_INDEX_NAME)
    shutil.rmtree(parts_root)


def _write_merge(
    ix: windex.Index, segments: list[Any], folder: Path
) -> tuple[Any, list[MergedSource]]:
    """Write segments of a shard merged into one, as the only segment of a new index in
    ``folder``; returns that segment and where each source's documents went."""
    target = windex.create_in(str(folder), ix.schema)
    writer = open_writer(target, frozenset())  # a merge analyses nothing
    readers = [SegmentReader(ix.storage, ix.schema, segment) for segment in segments]
    try:
        sources = write_merged(writer, readers)
        writer.commit(merge=False)
    except BaseException:
        if not writer.is_closed:
            writer.cancel()
        raise
    finally:
        for reader in readers:
            reader.close()
    (merged,) = target._segments()
    target.close()
    return merged, sources


class _Background:
    """One thread, at the index workers' niceness, for index work nothing waits on but its
    caller (staging a few records, writing a merge).

    On Linux niceness is per thread, so the process's other threads keep theirs; elsewhere the
    work runs at the process's priority. The thread lives as long as the index, so that what
    it opens per thread (the archive store's connection) is opened once.
    """

    def __init__(self, nice: int) -> None:
        self._nice = nice
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` on the background thread and wait for it (inline if called from it)."""
        if threading.current_thread().name.startswith("index-background"):
            return work()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    1, thread_name_prefix="index-background", initializer=self._lower_priority
                )
            pool = self._pool
        return pool.submit(work).result()

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _lower_priority(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            _lower_priority(threading.get_native_id(), self._nice)


def _lower_priority(who: int, nice: int) -> None:
    """Set the niceness of a process (0: this one) or, on Linux, a thread, never raising it."""
    if nice > os.getpriority(os.PRIO_PROCESS, who):
        os.setpriority(os.PRIO_PROCESS, who, nice)


def _move_segment_files(source: Path, target: Path, segment: Any) -> None:
    """Move one segment's files from one Whoosh index folder to another (same file system)."""
    prefix = f"{segment.indexname}_{segment.segid}"
    for fname in os.listdir(source):
        if fname.startswith(prefix):
            os.replace(source / fname, target / fname)
