"""SearchIndex: Whoosh shards by ``created_at`` period, behind a narrow interface.

Layout on disk::

    <directory>/CURRENT          name of the live generation (replaced atomically by rebuild)
    <directory>/g000001/META     {"shard_period": "year"}
    <directory>/g000001/STAMP    rewritten after every commit; searchers refresh when it changes
    <directory>/g000001/2023/    one Whoosh index per period of created_at ("2023" or "2023-05")
    <directory>/g000001/REBUILT  only while a rebuild that swapped it in has not recorded its
                                 catch-up (see `rebuild`)

A rebuild writes a new generation beside the live one with two worker processes, each writing
its own segment of every shard it receives documents for; the two segments of a shard are then
joined into one Whoosh index (one TOC listing both); the records that left the archive since
they were read are taken out of it, and CURRENT is swapped.

Around the class: ``documents`` (record <-> Whoosh document), ``segment_writer`` (how a segment
is written), ``workers`` (rebuild processes, background thread), ``staging`` (segments written
aside), ``snapshots`` (what searches see) and ``errors`` (Whoosh's exceptions made ours).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

from whoosh import index as windex
from whoosh.index import TOC, LockError
from whoosh.reading import SegmentReader
from whoosh.searching import Searcher
from whoosh.util.filelock import try_for

from indexer.errors import (
    REBUILD_HINT,
    BadQuery,
    IndexerError,
    IndexMissing,
    IndexOutdated,
    IndexUnavailable,
)
from indexer.search.engine import RebuildReplay
from indexer.search.types import SearchHit, SearchPage, SearchQuery, validate
from indexer.whoosh.analysis import (
    choose_pair_terms,
    iter_tokens,
)
from indexer.whoosh.columns import byte_strings, live_docnums
from indexer.whoosh.documents import (
    build_document,
    load_hit,
    record_shard,
    record_texts,
    shard_bounds,
)
from indexer.whoosh.errors import is_whoosh_error, translate_errors, translate_iter_errors
from indexer.whoosh.mapped_files import install as install_mapped_files
from indexer.whoosh.merging import choose_merges
from indexer.whoosh.query import CompiledQuery, compile_query, make_parser
from indexer.whoosh.readers import (
    close_all,
    close_replaced,
    open_searcher,
    open_without_additions,
    replaced_segments,
    segment_ids,
)
from indexer.whoosh.schema import TEXT_FIELDS, build_schema
from indexer.whoosh.search import order_matches, run_search
from indexer.whoosh.segment_writer import add_record, open_writer, write_merge
from indexer.whoosh.shards import ShardCache, ShardView
from indexer.whoosh.snapshots import GenerationHolds, Snapshot, stat_key, write_atomic
from indexer.whoosh.staging import (
    STAGED_DIR,
    StagedRecords,
    delete_unkept,
    remove_abandoned_stages,
    remove_stage,
)
from indexer.whoosh.turns import Turns
from indexer.whoosh.workers import (
    Background,
    join_parts,
    move_segment_files,
    parallel_build,
    shard_batches,
    write_parts,
)

PERIODS = ("year", "month")
_SHARD_RE = {"year": re.compile(r"^\d{4}$"), "month": re.compile(r"^\d{4}-\d{2}$")}
_GEN_RE = re.compile(r"^g(\d{6})$")
REBUILD_NOTE = "REBUILT"  # a generation's file while its rebuild's catch-up is unrecorded
PAIR_SAMPLE = 20_000  # records a rebuild reads before choosing the pair terms
_BULK_IDS = 64  # ids to delete from which a segment's id column is read whole
_READ_IDS_COST = 200  # one id look-up in a segment costs about as much as reading 200 ids
_WARM_QUERIES = 16  # the latest distinct queries run again after a change (keep_fresh)
# Seconds at most that the searches of a process with a freshener go without an indexing
# batch's new segments while the freshener warms them up (keep_fresh).
_ADDITIONS_WAIT = 10.0
# Seconds a replaced searcher's readers stay open for searches still on it (a search runs in
# one turn, pausing only for urgent work; the freshener's warm-up of one batch, a few seconds).
_RETIRED_GRACE = 60.0
log = logging.getLogger(__name__)
_ERASE_ROUNDS = 10  # looks at a shard an erasure takes at most (see `erase`)

install_mapped_files()  # see mapped_files: segment files are read in place, not copied

_PROCESS_FIELDS = ("parent_id", "process_id")


def _without_processes(readers: Sequence[Any]) -> str | None:
    """Why shards built before processes cannot answer by process, or None if none is."""
    missing = sorted({f for r in readers for f in _PROCESS_FIELDS if f not in r.schema})
    if not missing:
        return None
    fields = " and ".join(missing) + (" fields" if len(missing) > 1 else " field")
    return f"it has no {fields}, so it cannot search by process"


EARLIER = "was built by an earlier version"


def _segment_id_set(leaf: Any) -> frozenset[bytes]:
    """Return the ids of a segment's documents (deleted ones included), UTF-8 encoded."""
    column = leaf.column_reader("id", translate=False)
    return frozenset(byte_strings(column, leaf.segment().doc_count_all()).tolist())


def shard_lost_toc(path: Path, settle_seconds: float = 10.0) -> bool:
    """True when a shard folder holds segment files but no table of contents.

    Whoosh writes a new shard's first segment just before its first table of contents, so a
    folder whose segments are all younger than `settle_seconds` is taken as being created.
    """
    segments = [p for p in path.iterdir() if p.suffix == ".seg"]
    if not segments or any(p.name.endswith(".toc") for p in path.iterdir()):
        return False
    newest = max(p.stat().st_mtime for p in segments)
    return time.time() - newest > settle_seconds


class SearchIndex:
    """The archive's search index: time shards of Whoosh indexes, searched as one."""

    def __init__(
        self, directory: Path, shard_period: str, worker_nice: int = 0, store_text: bool = True
    ) -> None:
        self.directory = Path(directory)
        self._store_text = store_text
        # The generation `open` made because the folder held no index: a rebuild that fails
        # takes it away again (see `_unmake_empty`).
        self._made_empty: Path | None = None
        self._made_folder = False
        # record id -> (subject, body): where hits read the text of documents that do not
        # store it (see build_document); set by whoever opens the archive store beside it.
        self.text_source: Callable[[str], tuple[str, str] | None] | None = None
        # ... and for many record ids at once (iter_hits reads its hits a chunk at a time)
        self.texts_source: Callable[[list[str]], dict[str, tuple[str, str]]] | None = None
        self._period = shard_period
        self._worker_nice = worker_nice
        self._background = Background(worker_nice)
        self._lock = threading.RLock()
        self._turns = Turns()
        self._shard_lists: dict[str, tuple[int, list[str]]] = {}
        self._write_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        # Searchers a newer snapshot replaced, with when: what they hold that is not shared
        # is closed once no search can still be on them (see _retire).
        self._retired: list[tuple[float, Searcher, Searcher | None]] = []
        self._retired_grace = _RETIRED_GRACE
        self._indexes: dict[tuple[str, str], windex.Index] = {}
        # Record ids per segment id (segments never change; deletions live in the TOC), so that
        # an add need not look every id up in every segment: about 80 bytes per indexed record.
        self._segment_ids: dict[str, frozenset[bytes]] = {}
        self._segment_probes: dict[str, int] = {}
        # Searchers for looking ids up before writes (used under _write_lock), kept while
        # their shard is unchanged: opening one per shard cost most of a restore's delete.
        self._id_searchers: dict[tuple[str, str], Any] = {}
        # Each generation's pair terms, with the META file's identity they were read from
        # (an erasure drops the words no document holds any more).
        self._pair_sets: dict[str, tuple[tuple[int, int, int], frozenset[bytes]]] = {}
        self._parser: Any = None
        self._closed = False
        self._recent: dict[SearchQuery, None] = {}  # the latest distinct queries, oldest first
        self._freshener: threading.Thread | None = None
        self._stop_freshening = threading.Event()
        self._holds = GenerationHolds()

    # --- opening and layout -------------------------------------------------------------

    @staticmethod
    def exists_in(directory: Path) -> bool:
        """Whether the folder holds an index (sound or not), as opposed to nothing at all.

        :param directory: the index folder
        """
        directory = Path(directory)
        if (directory / "CURRENT").exists():
            return True
        try:
            return any(_GEN_RE.match(p.name) for p in directory.iterdir())
        except FileNotFoundError:
            return False

    @classmethod
    @translate_errors
    def open(
        cls,
        directory: Path,
        *,
        shard_period: str = "year",
        worker_nice: int = 0,
        store_text: bool = True,
    ) -> SearchIndex:
        """Open the index in a directory, creating an empty one if missing.

        :param directory: the index folder.
        :param shard_period: ``year`` or ``month`` for a new index (an existing one keeps its own).
        :param worker_nice: niceness of the processes that analyse records for it.
        :param store_text: for a new generation (a new index or a rebuild): keep record text
            in stored fields; False leaves it to `text_source` (an existing generation keeps
            what it was made with).
        """
        if shard_period not in PERIODS:
            raise IndexerError(f"shard_period must be one of {', '.join(PERIODS)}")
        directory = Path(directory)
        try:
            made_folder = not directory.exists()
            directory.mkdir(parents=True, exist_ok=True)
            self = cls(directory, shard_period, worker_nice, store_text)
            fresh = not any(_GEN_RE.match(p.name) for p in directory.iterdir())
            if fresh and not (directory / "CURRENT").exists():
                gen = self._new_generation(shard_period)
                write_atomic(directory / "CURRENT", gen.name)
                self._made_empty = gen
                self._made_folder = made_folder
        except OSError as e:
            raise IndexUnavailable(f"cannot open index at {directory}: {e}") from e
        try:
            self._period = self._load_meta(self._current_gen())["shard_period"]
        except IndexUnavailable:
            # Opened all the same (a lost CURRENT is not replaced by an empty index): searches
            # answer index_unavailable (the server logs each) and /healthz says why, until a
            # rebuild mends it.
            self._period = shard_period
        self._remove_unused_generations()  # a previous generation nobody reads any more
        self._parser = make_parser(build_schema())
        return self

    def _new_generation(self, period: str, pair_terms: list[str] | None = None) -> Path:
        """Create an empty generation; ``pair_terms`` None leaves them to its first records."""
        while True:
            numbers = [
                int(m.group(1)) for p in self.directory.iterdir() if (m := _GEN_RE.match(p.name))
            ]
            gen = self.directory / f"g{max(numbers, default=0) + 1:06d}"
            gen.mkdir()
            # Not yet CURRENT: nobody may take it for unused. False: another process took it
            # for a dead rebuild's just before, and deleted it.
            if self._holds.take(gen, new=True):
                break
        meta: dict[str, Any] = {"shard_period": period}
        if not self._store_text:
            meta["stored_text"] = False
        if pair_terms is not None:
            meta["pair_terms"] = pair_terms
        write_atomic(gen / "META", json.dumps(meta))
        write_atomic(gen / "STAMP", "0")
        return gen

    @staticmethod
    def _load_meta(gen: Path) -> dict[str, Any]:
        try:
            meta = dict(json.loads((gen / "META").read_text(encoding="utf-8")))
            if meta.get("shard_period") not in PERIODS:
                raise ValueError(f"shard_period {meta.get('shard_period')!r}")
        except (OSError, ValueError, TypeError) as e:
            raise IndexUnavailable(
                f"the index's {gen.name}/META file is missing or damaged: {e}"
            ) from e
        return meta

    def _chosen_pair_terms(self, gen: Path) -> frozenset[bytes]:
        """Return the generation's pair terms, none if not chosen yet (nothing is written)."""
        try:
            st = (gen / "META").stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = (0, 0, 0)  # _load_meta says what is wrong
        got = self._pair_sets.get(str(gen))
        if got is None or got[0] != key:
            chosen = self._load_meta(gen).get("pair_terms")
            if chosen is None:
                return frozenset()
            got = self._pair_sets[str(gen)] = (key, frozenset(t.encode("utf-8") for t in chosen))
        return got[1]

    def _pair_terms(self, gen: Path, sample: Iterable[dict[str, Any]]) -> frozenset[bytes]:
        """Return the generation's pair terms, choosing them from ``sample`` if not chosen yet.

        Chosen once per generation (by a rebuild, else by the first add) and never changed, so
        every segment of a generation pairs the same terms. Index writes are serialised across
        processes by the archive store's index lock, so two cannot choose at once.
        """
        if str(gen) not in self._pair_sets:
            meta = self._load_meta(gen)
            if "pair_terms" not in meta:
                meta["pair_terms"] = choose_pair_terms(record_texts(sample))
                write_atomic(gen / "META", json.dumps(meta))
        return self._chosen_pair_terms(gen)

    def _current_gen(self) -> Path:
        try:
            name = (self.directory / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError as e:
            raise IndexMissing(f"no index at {self.directory}: {e}") from e
        except (OSError, UnicodeError) as e:
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
        for p in folders:
            if p.name not in names and shard_lost_toc(p):
                raise IndexUnavailable(f"index shard {gen.name}/{p.name} has lost its .toc")
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
        write_atomic(gen / "STAMP", stamp, durable=False)

    # --- searching ------------------------------------------------------------------------

    def _current_snapshot(self) -> Snapshot:
        """Return searchers for the current state, refreshing what changed since last time.

        With a freshener running, an indexing batch's new segments are left out until it has
        warmed them up (for at most ``_ADDITIONS_WAIT`` seconds); deletions show at once.
        """
        current = stat_key(self.directory / "CURRENT")
        with self._lock:
            self._close_retired()
            snap = self._snapshot
            overdue = (
                snap is not None
                and snap.pending is not None
                and time.monotonic() - snap.pending > _ADDITIONS_WAIT
            )
            if snap is not None and not overdue and not self._changed(snap, current):
                return snap
            defer = self._freshener is not None and not overdue
            try:
                self._snapshot = snap = self._open_snapshot(snap, defer=defer, install=True)
            except IndexerError:
                raise
            except Exception as e:  # a file of the index gone, cut short or garbled
                if is_whoosh_error(e):
                    raise  # translate_errors names it as Whoosh's
                # (not logged here: the server logs its 503s, and verify says it once)
                raise IndexUnavailable(
                    f"the index cannot be read: {type(e).__name__}: {e}"
                ) from e
        self._refresh_id_searchers()  # the index changed: theirs may hold replaced segments
        return snap

    def _whole_snapshot(self) -> Snapshot:
        """The current state with nothing left out (for counts and checks)."""
        snap = self._current_snapshot()
        if snap.pending is None:
            return snap
        with self._lock:
            self._snapshot = self._open_snapshot(snap, defer=False, install=True)
            return self._snapshot

    def _open_snapshot(
        self,
        snap: Snapshot | None,
        *,
        defer: bool,
        install: bool,
        take: Collection[str] = (),
    ) -> Snapshot:
        """Open searchers for the index's state, reusing ``snap``'s where a shard is unchanged.

        :param defer: leave out segments and shards added since ``snap`` (deletions in the
            segments it has are taken all the same), except in the shards named in ``take``.
        :param install: the result replaces ``snap`` now, so that searchers it no longer uses
            are closed; otherwise :meth:`_install` does that later.
        """
        current = stat_key(self.directory / "CURRENT")
        gen = self._current_gen()
        if not self._holds.take(gen):  # a rebuild replaced it just now: take the new one
            current = stat_key(self.directory / "CURRENT")
            gen = self._current_gen()
            if not self._holds.take(gen):
                raise IndexUnavailable(f"index generation {gen.name} vanished while opening it")
        full_key = (current, stat_key(gen / "STAMP"))
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
                self._retire(previous_searcher, searcher)
            lo, hi = shard_bounds(name)
            previous = view.cache if view is not None else None
            views.append(ShardView(name, lo, hi, ShardCache(searcher, previous), pair_terms))
        if install and snap is not None and not same_gen:
            for v in snap.views:
                self._retire(v.cache.searcher, None)
            self._holds.release_except(gen)  # done with the previous generation
            self._remove_unused_generations()
        pending = (snap.pending if snap is not None else None) or time.monotonic()
        return Snapshot(gen, full_key, views, frozenset(partial), pending)

    def _install(self, snap: Snapshot) -> None:
        """Make ``snap`` (opened with ``install=False``) the one searches use (under _lock)."""
        installed = self._snapshot
        if installed is not None:
            kept = {v.name: v.cache.searcher for v in snap.views}
            for v in installed.views:
                searcher = kept.get(v.name)
                if searcher is not v.cache.searcher:
                    self._retire(v.cache.searcher, searcher)
        self._snapshot = snap

    def _retire(self, old: Searcher, new: Searcher | None) -> None:
        """Close, in a while, what a searcher replaced by ``new`` holds that ``new`` does not.

        Not at once: a search paused at a checkpoint (while a restore's deletion goes first)
        and the freshener's warm-up run on snapshots opened before, and may share their
        readers; closing those under them failed the search (`ReaderClosed`, a 503). See
        :meth:`_close_retired`. Call under ``_lock``.
        """
        self._retired.append((time.monotonic(), old, new))

    def _close_retired(self) -> None:
        """Close the readers replaced ``_RETIRED_GRACE`` seconds ago or more whose segment no
        installed snapshot reads. Called by every search and the freshener, so that a replaced
        generation's deleted files are not held open until the next change. Under ``_lock``."""
        now = time.monotonic()
        if not self._retired or now - self._retired[0][0] < self._retired_grace:
            return  # (the oldest first)
        views = self._snapshot.views if self._snapshot is not None else []
        in_use = set().union(*(segment_ids(v.cache.searcher) for v in views))
        keep: list[tuple[float, Searcher, Searcher | None]] = []
        for retired_at, searcher, successor in self._retired:
            if now - retired_at < self._retired_grace or (
                replaced_segments(searcher, successor) & in_use
            ):
                keep.append((retired_at, searcher, successor))
                continue
            try:
                close_replaced(searcher, successor)
            except Exception:  # housekeeping: never the search's failure, never retried
                log.exception("closing a replaced index reader failed; it is left to the GC")
        self._retired = keep

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
            # (searches change _recent one at a time, in their turn)
            self._recent.pop(query, None)
            page = self._run(self._current_snapshot(), query, started)
            # Only a query that ran is remembered: the freshener runs them again, and a
            # refused one would only log its refusal there after every change.
            self._recent[query] = None
            if len(self._recent) > _WARM_QUERIES:
                del self._recent[next(iter(self._recent))]
            return page

    def _compile(self, query: SearchQuery, readers: Sequence[Any]) -> CompiledQuery:
        """The query's text compiled; refused if it asks for processes of shards that have
        none (an index from before them would answer nothing, as if there were none)."""
        compiled = compile_query(query.q, self._parser, readers)
        if query.wanted_roots() is not None or any(
            f in compiled.fields for f in _PROCESS_FIELDS
        ):
            reason = _without_processes(readers)
            if reason is not None:
                raise IndexOutdated(f"the index {EARLIER}: {reason}; {REBUILD_HINT}")
        return compiled

    def _run(self, snap: Snapshot, query: SearchQuery, started: float) -> SearchPage:
        readers = [v.cache.searcher.reader() for v in snap.views]
        compiled = self._compile(query, readers)
        hit_loader = functools.partial(load_hit, text_source=self.text_source)
        return run_search(
            snap.views, query, compiled, snap.stats, hit_loader, started, self._turns.checkpoint
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
            with self._lock:
                self._close_retired()
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
                    with contextlib.suppress(BadQuery):  # (then forgotten, see search)
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
                try:
                    self._run(warm, query, time.perf_counter())
                except BadQuery:  # too costly on the new segments: no longer worth warming
                    self._recent.pop(query, None)
        with self._turns.turn(), self._lock:
            installed = self._snapshot
            if installed is None or installed.gen != warm.gen or installed.pending is None:
                return  # searches opened the whole index meanwhile
            if self._changed(warm, stat_key(self.directory / "CURRENT")):
                warm = self._open_snapshot(warm, defer=False, install=False)
            self._install(warm)

    def _stale(self) -> bool:
        """Whether searches would reopen shards now (False before the first search)."""
        snap = self._snapshot
        return snap is not None and self._changed(snap, stat_key(self.directory / "CURRENT"))

    @staticmethod
    def _changed(snap: Snapshot, current: str | None) -> bool:
        """Whether the index changed since ``snap`` (``current``: CURRENT's stat key now)."""
        return snap.key[0] != current or snap.key[1] != stat_key(snap.gen / "STAMP")

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
            compiled = self._compile(query, readers)
            ordered = order_matches(snap.views, query, compiled, snap.stats)
        for start in range(0, len(ordered), chunk):
            end = min(start + chunk, len(ordered))
            text_source = self.text_source
            if self.texts_source is not None:  # the chunk's texts in one pass over the store
                texts = self.texts_source([ordered.record_ids[i] for i in range(start, end)])
                text_source = texts.get
            with self._turns.turn():
                views = {v.name: v for v in self._current_snapshot().views}
                hits = []
                for i in range(start, end):
                    view = views.get(ordered.shard_names[ordered.shards[i]])
                    rid = ordered.record_ids[i]
                    docnum = None if view is None else view.cache.searcher.document_number(id=rid)
                    if view is not None and docnum is not None:
                        score = ordered.scores[i] if ordered.scores is not None else 0.0
                        hits.append(load_hit(
                            view, docnum, score, compiled, snippet=False,
                            text_source=text_source,
                        ))
            yield from hits

    @translate_iter_errors
    def iter_ids(self) -> Iterator[str]:
        """Yield every indexed record id (for checking the index against the store)."""
        self._check_open()
        with self._turns.turn():
            snap = self._whole_snapshot()
            ids = [v.cache.record_id(d) for v in snap.views for d in v.cache.live_docs.tolist()]
        yield from ids

    def terms_of(self, text: str, *, query: bool = False) -> set[str]:
        """The terms the index makes of a text (see `SearchEngine.terms_of`)."""
        mode = "query" if query else "index"
        return {term for term, _pos, _start, _end in iter_tokens(text, mode)}

    @translate_errors
    def check_readable(self) -> None:
        """Open this process's searchers as a search would (the health check), then check the
        index's files as the next process to start would open them (a file deleted or damaged
        under this process's open searchers goes unnoticed by them); raises IndexUnavailable
        if the index cannot be read."""
        # (imported here: index_files takes the layout's names from this module)
        from indexer.whoosh.index_files import check_index_files

        self._check_open()
        with self._turns.turn():
            self._current_snapshot()
        check_index_files(self.directory)

    @translate_errors
    def find_damage(self) -> list[str]:
        """What is wrong with the live generation's files that searches would pass over: a
        shard folder that is no whole Whoosh index (its table of contents is gone)."""
        self._check_open()
        gen = self._current_gen()
        pattern = _SHARD_RE[self._load_meta(gen)["shard_period"]]
        return [
            f"shard {p.name} has no table of contents"
            for p in sorted(gen.iterdir())
            if pattern.match(p.name) and not windex.exists_in(str(p))
        ]

    @translate_errors
    def outdated(self) -> str | None:
        """Why the index falls short of what this version makes (it was built by an earlier
        one: before processes, or keeping record text in plain text), or None."""
        self._check_open()
        with self._turns.turn():
            snap = self._whole_snapshot()
            readers = [v.cache.searcher.reader() for v in snap.views]
            reasons = [_without_processes(readers)]
            plain = self._load_meta(self._current_gen()).get("stored_text", True)
            # An empty one too: records indexed into it later would keep their text as well.
            if plain and not self._store_text:
                reasons.append("it keeps record text in plain text in its stored fields")
        found = [r for r in reasons if r is not None]
        return f"{EARLIER}: {', and '.join(found)}" if found else None

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
            meta = self._load_meta(gen)
            period, store_text = meta["shard_period"], meta.get("stored_text", True)
            by_shard: dict[str, list[dict[str, Any]]] = {}
            home: dict[str, str] = {}
            first = set(first_versions)
            for record, archived_at in batch.values():
                name = record_shard(record, period)
                by_shard.setdefault(name, []).append(
                    build_document(record, archived_at, store_text)
                )
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
                        add_record(writer, doc)
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
        with self._write_lock:
            return self._delete_from(self._current_gen(), record_ids, current)

    def _delete_from(
        self, gen: Path, record_ids: Iterable[str], current: Iterable[dict[str, Any]] = ()
    ) -> int:
        """`delete` in one generation (under _write_lock)."""
        ids = list(dict.fromkeys(record_ids))
        if not ids:
            return 0
        period = self._load_meta(gen)["shard_period"]
        wanted = set(ids)
        home = {r["id"]: record_shard(r, period) for r in current if r["id"] in wanted}
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
        index; a damaged one is left for searches to report (503 with the reason) and for
        restores to go on without it, rather than stopping the server at start."""
        self._check_open()
        with self._write_lock:
            try:
                gen = self._current_gen()
                for name in self._shard_names(gen):
                    self._id_searcher(gen, name)
            except Exception as e:  # noqa: BLE001 (a warm-up: any damage is the searches' to report)
                log.error("the index cannot be read (%s): searches answer index_unavailable "
                          "until `archivist index --rebuild`", e)

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
                if len(rids) >= _BULK_IDS:  # a bulk restore: one column read per segment
                    wanted = {rid.encode("utf-8") for rid in rids}
                    by_segid = {s.segid: s for s in toc.segments}
                    for leaf, _base in searcher.reader().leaf_readers():
                        segment = leaf.segment()
                        if segment is None or segment.segid not in by_segid:
                            continue
                        for docnums in live_docnums(leaf, wanted).values():
                            for docnum in docnums:
                                by_segid[segment.segid].delete_document(docnum)
                    rids = []
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
                shards.setdefault(record_shard(record, period), []).append(record["id"])
                yield record, archived_at

        remove_abandoned_stages(gen / STAGED_DIR)
        root = gen / STAGED_DIR / f"{os.getpid()}-{uuid.uuid4().hex}"
        root.mkdir(parents=True)
        try:
            if processes:
                parallel_build(gen, period, noted(), None, False, root, self._worker_nice)
            else:
                pair_terms = self._chosen_pair_terms(gen)
                store_text = self._load_meta(gen).get("stored_text", True)
                self._background.run(
                    lambda: write_parts(
                        shard_batches(noted(), period), root, "w0", pair_terms, store_text
                    )
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
                                left = delete_unkept(part_ix, segment, keep)
                                if left:  # else its files go with the staging folder
                                    move_segment_files(part, gen / name, segment)
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
        remove_stage(staged.root)

    @translate_errors
    def remove_abandoned(self) -> None:
        """Remove the staged segments and unfinished merges of processes that are gone (killed
        between stage and attach, or mid-merge), in every generation, and the generations no
        process reads (a rebuild's killed before its swap): nothing else removes them until the
        next stage or the next process to open the index, and they may hold the words of
        records erased since."""
        self._check_open()
        try:
            folders = [p for p in self.directory.iterdir() if _GEN_RE.match(p.name)]
        except OSError:  # no index folder (yet): nothing left behind
            return
        for gen in folders:
            remove_abandoned_stages(gen / STAGED_DIR)
        if len(folders) > 1:
            self._remove_unused_generations()

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
            if len(hits) >= _BULK_IDS:  # one column read per segment, not a look-up per id
                live: set[bytes] = set()
                for leaf, _base in searcher.reader().leaf_readers():
                    if leaf.segment() is not None:
                        live.update(live_docnums(leaf, hits))
                for btext in sorted(live):
                    found.setdefault(wanted[btext], []).append(name)
                continue
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

    def _refresh_id_searchers(self) -> None:
        """Bring the id look-up searchers up to date once the index changed, closing their
        readers of segments that are gone and those of a replaced generation.

        Else a process that searches but seldom writes (a server) kept the files of segments
        another process merged away or erased open, deleted but readable, with the erased
        records' words in them, until its own next write. Skipped while this process writes:
        its writer brings them up to date itself.
        """
        if not self._write_lock.acquire(blocking=False):
            return
        try:
            try:
                current = str(self._current_gen())
            except IndexUnavailable:
                current = None
            for key, searcher in list(self._id_searchers.items()):
                try:
                    if key[0] == current and searcher.up_to_date():
                        continue
                    self._id_searchers.pop(key)
                    if key[0] == current:
                        fresh = open_searcher(self._shard_index(Path(key[0]), key[1]), searcher)
                        close_replaced(searcher, fresh)
                        self._id_searchers[key] = fresh
                    else:
                        searcher.close()
                except Exception:  # housekeeping: the next write opens what it needs
                    log.warning("could not refresh the id look-up searcher of shard %s", key[1],
                                exc_info=True)
                    with contextlib.suppress(Exception):
                        searcher.close()
        finally:
            self._write_lock.release()

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

    def _merge_shard(self, ix: windex.Index, picks: list[int] | None = None) -> bool:
        """Merge a shard's segments if the policy picks any (under _write_lock).

        :param picks: merge these segments (by position) instead of the policy's choice; one
            segment alone is rewritten without its deleted documents.

        The merged segment is written beside the shard holding no lock on it, in a thread at
        the index workers' lower priority: restores and other writers go on meanwhile. Then,
        under the shard's write lock, documents deleted meanwhile in its sources are marked
        deleted in it too, and it replaces them in one commit. If a source is gone by then
        (another process merged it meanwhile), nothing changes.
        """
        segments = ix._segments()
        if picks is None:
            picks = choose_merges(0, [(s.doc_count_all(), s.deleted_count()) for s in segments])
        if not picks:
            return False
        shard = Path(ix.storage.folder)
        folder = shard.parent / STAGED_DIR / f"{os.getpid()}-merge-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        try:
            try:
                merged, sources = self._background.run(
                    lambda: write_merge(ix, [segments[i] for i in picks], folder)
                )
            except FileNotFoundError as e:  # another process merged a source away meanwhile
                log.info("merge in %s skipped: a source segment is gone (%s)", shard, e)
                return False
            writer = open_writer(ix, frozenset(), timeout=60.0)
            try:
                current = {segment.segid: segment for segment in writer.segments}
                if any(source.segid not in current for source in sources):
                    writer.cancel()
                    return False
                for source in sources:
                    for docnum in set(current[source.segid].deleted_docs()) - source.deleted:
                        merged.delete_document(source.new_number(docnum))
                move_segment_files(folder, shard, merged)
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
            remove_stage(folder)

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

    @translate_errors
    def erase(self, record_ids: Iterable[str]) -> int:
        """Remove records and rewrite every segment holding any copy of them, live or deleted;
        returns how many segments were rewritten.

        A deleted document's terms, postings and stored fields stay in its segment's files
        until that segment is rewritten, so erasure cannot stop at marking it deleted: each
        segment that ever held one of the records is merged into a new one without them (or
        dropped, if nothing else in it is live), and Whoosh removes the old files.

        :param record_ids: the records to erase.
        """
        self._check_open()
        self.remove_abandoned()  # a killed run's staged copies of them are not in any shard
        with self._write_lock:
            return self._erase_from(self._current_gen(), record_ids)

    def _erase_from(self, gen: Path, record_ids: Iterable[str]) -> int:
        """`erase` in one generation (under _write_lock)."""
        ids = list(dict.fromkeys(record_ids))
        wanted = {rid.encode("utf-8") for rid in ids}
        if not wanted:
            return 0
        self._delete_from(gen, ids)
        rewritten = 0
        for name in self._shard_names(gen):
            ix = self._shard_index(gen, name)
            # Another process may merge this shard meanwhile (its merges take no store
            # lock): a segment listed may be gone when read, or merged with copies of the
            # records still in it. Look again until no segment holds any.
            for _ in range(_ERASE_ROUNDS):
                try:
                    count = self._erase_in_shard(ix, wanted)
                except FileNotFoundError:
                    time.sleep(0.05)  # (as `open_searcher` does) the merge commits
                    continue
                if count is None:
                    break
                rewritten += count
            else:
                raise IndexUnavailable(
                    f"cannot erase from index shard {name}: its segments kept changing "
                    f"under {_ERASE_ROUNDS} attempts; run the erasure again"
                )
        if rewritten:
            self._drop_dead_pair_terms(gen)
            self._bump(gen)
        return rewritten

    def _erase_in_shard(self, ix: windex.Index, wanted: set[bytes]) -> int | None:
        """Rewrite (or drop) the segments of a shard holding any copy of the `wanted` ids;
        returns how many, None when none holds one. Under ``_write_lock``."""
        segments = ix._segments()
        holding: set[str] = set()
        for segment in segments:
            reader = SegmentReader(ix.storage, ix.schema, segment)
            try:
                if _segment_id_set(reader) & wanted:
                    holding.add(segment.segid)
            finally:
                reader.close()
        if not holding:
            return None
        rewritten = 0
        empty = {s.segid for s in segments if s.segid in holding and s.doc_count() == 0}
        if empty:
            self._drop_segments(ix, empty)
            rewritten += len(empty)
        picks = [
            i for i, segment in enumerate(ix._segments()) if segment.segid in holding - empty
        ]
        if picks and self._merge_shard(ix, picks):
            rewritten += len(picks)
        return rewritten

    def _drop_dead_pair_terms(self, gen: Path) -> None:
        """Drop from the generation's pair terms (written in plain text in its META file) the
        words no document holds any more: after an erasure, the erased customer's own words.

        Pair terms are chosen among words of several customers (``choose_pair_terms``), but a
        generation made before that rule, or whose other holders are gone, may list one. A
        dropped word is no longer paired by writers; phrases with it are answered from positions.
        """
        chosen = self._chosen_pair_terms(gen)
        alive: set[bytes] = set()
        for name in self._shard_names(gen):
            with self._shard_index(gen, name).reader() as reader:
                alive.update(
                    term for term in chosen - alive
                    if any((field, term) in reader for field in TEXT_FIELDS)
                )
        dead = chosen - alive
        if dead:
            meta = self._load_meta(gen)
            meta["pair_terms"] = [t for t in meta["pair_terms"] if t.encode("utf-8") not in dead]
            write_atomic(gen / "META", json.dumps(meta))

    def _drop_segments(self, ix: windex.Index, segids: set[str]) -> None:
        """Take segments with no live document out of a shard; Whoosh deletes their files."""
        writer = open_writer(ix, frozenset(), timeout=60.0)
        writer.commit(mergetype=lambda w, segments: [s for s in segments if s.segid not in segids])

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
        *,
        going_live: Callable[[], AbstractContextManager[RebuildReplay]] | None = None,
    ) -> int:
        """Build a fresh index from ``docs`` beside the live one and swap it in when complete.

        Searches keep using the old shards until the swap. Two worker processes analyse and
        write; each shard ends up as one Whoosh index with (at most) one segment per worker.

        :param docs: ``(record, archived_at)`` pairs, every record to index.
        :param total: how many docs there are, for the progress bar.
        :param progress: show a tqdm progress bar on stderr.
        :param going_live: entered once the new generation is complete (the caller takes its
            lock there, see `indexing.rebuild_index`): the records it yields are deleted from
            the new generation (the erased ones rewritten out of its segments) before CURRENT
            names it, so no search ever sees them there. Its note is written into the
            generation before the swap and removed once the block is left without an error:
            a process killed in between leaves it for `unfinished_rebuild`.
        """
        self._check_open()
        try:
            return self._rebuild(iter(docs), total, progress, going_live)
        except BaseException:
            self._unmake_empty()
            raise

    def _rebuild(
        self,
        stream: Iterator[tuple[dict[str, Any], datetime]],
        total: int | None,
        progress: bool,
        going_live: Callable[[], AbstractContextManager[RebuildReplay]] | None,
    ) -> int:
        head = list(itertools.islice(stream, PAIR_SAMPLE))
        pair_terms = choose_pair_terms(record_texts(record for record, _at in head))
        live = False
        with self._write_lock:
            gen = self._new_generation(self._period, pair_terms)
        try:
            with self._write_lock:
                count = parallel_build(
                    gen,
                    self._period,
                    itertools.chain(head, stream),
                    total,
                    progress,
                    gen / "_parts",
                    self._worker_nice,
                )
                join_parts(gen)
            if going_live is None:
                with self._write_lock:
                    self._swap_in(gen)
                    live = True
            else:
                # (the caller's lock first, then this process's write lock, as every writer
                # takes them: the new generation is held, so no process deletes it meanwhile)
                with going_live() as replay, self._write_lock:
                    self._delete_from(gen, replay.removed)
                    self._erase_from(gen, replay.erased)
                    write_atomic(gen / REBUILD_NOTE, replay.note)
                    self._swap_in(gen)
                    live = True
                (gen / REBUILD_NOTE).unlink()
        except BaseException:
            if not live:
                shutil.rmtree(gen, ignore_errors=True)
            raise
        with self._write_lock:
            with self._lock:
                if self._snapshot is None or self._snapshot.gen == gen:
                    self._holds.release_except(gen)
            self._remove_unused_generations()
        return count

    def _swap_in(self, gen: Path) -> None:
        """Make a complete generation the live one (under _write_lock)."""
        write_atomic(gen / "STAMP", f"{time.time_ns()} {os.getpid()}")
        write_atomic(self.directory / "CURRENT", gen.name)

    @translate_errors
    def unfinished_rebuild(self) -> str | None:
        """The note of a rebuild whose generation went live but whose ``going_live`` block was
        never left (killed in between), or None; None too without a readable index (what reads
        it says what is wrong)."""
        self._check_open()
        try:
            gen = self._current_gen()
        except IndexUnavailable:
            return None
        try:
            return (gen / REBUILD_NOTE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeError) as e:
            raise IndexUnavailable(f"cannot read {gen.name}/{REBUILD_NOTE}: {e}") from e

    @translate_errors
    def rebuild_finished(self, note: str) -> None:
        """Remove the live generation's rebuild note, if it is still ``note``.

        :param note: what `unfinished_rebuild` returned.
        """
        self._check_open()
        if self.unfinished_rebuild() == note:
            with contextlib.suppress(FileNotFoundError):
                (self._current_gen() / REBUILD_NOTE).unlink()

    def _unmake_empty(self) -> None:
        """After a failed rebuild, take away the empty index `open` made where there was none,
        if nothing was added to it: left there, it would pass for the index and answer every
        search with nothing, while commands refuse a missing one (see `open_search_engine`)."""
        gen, self._made_empty = self._made_empty, None
        if gen is None:
            return
        current = self.directory / "CURRENT"
        try:
            if current.read_text(encoding="utf-8").strip() != gen.name:
                return
            if any(part.is_dir() for part in gen.iterdir()):  # a shard: records were added
                return
            current.unlink()
        except (OSError, UnicodeError):
            return
        shutil.rmtree(gen, ignore_errors=True)
        if self._made_folder:
            with contextlib.suppress(OSError):  # (not if anything else is in it)
                self.directory.rmdir()

    def _remove_unused_generations(self) -> None:
        """Delete every generation but CURRENT that no process holds (see GenerationHolds)."""
        try:
            current = (self.directory / "CURRENT").read_text(encoding="utf-8").strip()
            folders = [p for p in self.directory.iterdir() if _GEN_RE.match(p.name)]
        except (OSError, UnicodeError):  # no index, or a damaged CURRENT: keep every folder
            return
        for p in folders:
            if p.name == current or self._holds.holds(p):
                continue
            try:
                fd = os.open(p / "HOLD", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:  # gone already, or a read-only folder
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # some process still searches it: it deletes it later
                os.close(fd)
                continue
            try:
                shutil.rmtree(p, ignore_errors=True)
            finally:
                os.close(fd)
            for key in [k for k in self._indexes if k[0] == str(p)]:
                del self._indexes[key]

    def close(self) -> None:
        """Close searchers; the index can no longer be used."""
        self._stop_freshening.set()
        if self._freshener is not None:
            self._freshener.join()
        with self._lock:
            installed = self._snapshot.views if self._snapshot is not None else []
            close_all([
                *(v.cache.searcher for v in installed),
                *(searcher for _at, searcher, _successor in self._retired),
            ])
            self._retired = []
            self._snapshot = None
            self._close_id_searchers()
            self._indexes.clear()
            self._holds.release_except(None)
            self._closed = True
        self._background.close()
        self._remove_unused_generations()  # one this process was the last to read

    def _check_open(self) -> None:
        if self._closed:
            raise IndexUnavailable("the index is closed")

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



