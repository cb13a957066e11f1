"""The index workers: two processes that analyse and write a rebuild's (or a large stage's)
segments, and a low-priority thread for small index work nothing waits on.

A worker process is started with ``python -c`` running :func:`run_build_worker`; it reads
pickled ``(shard, records)`` batches on stdin and writes one segment per shard it receives.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from whoosh import index as windex
from whoosh.filedb.filestore import FileStorage
from whoosh.index import TOC

from indexer.errors import IndexerError
from indexer.whoosh.documents import build_document, record_shard
from indexer.whoosh.schema import build_schema
from indexer.whoosh.segment_writer import add_record, open_writer

_T = TypeVar("_T")
_BATCH = 500
WORKER_BUFFERED_DOCS = 300_000  # documents a rebuild worker holds in memory (~3.5 KiB each)


def run_build_worker() -> None:
    """Entry point of a rebuild worker process: pickled batches on stdin, a JSON line out."""
    gen, worker, parts_root = sys.argv[1], int(sys.argv[3]), Path(sys.argv[4])
    lower_priority(0, int(sys.argv[5]))
    meta = json.loads((Path(gen) / "META").read_text(encoding="utf-8"))
    pair_terms = frozenset(t.encode("utf-8") for t in meta["pair_terms"])
    inbox = sys.stdin.buffer

    def batches() -> Iterator[tuple[str, list[tuple[dict[str, Any], datetime]]]]:
        while (item := pickle.load(inbox)) is not None:
            yield item

    try:
        count = write_parts(
            batches(), parts_root, f"w{worker}", pair_terms, meta.get("stored_text", True)
        )
        print(json.dumps({"ok": True, "count": count}), flush=True)
    except BaseException as e:  # report, the parent raises
        try:
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
        except OSError:  # the parent is gone (killed): nobody to report to, nothing to print
            os._exit(1)


def write_parts(
    batches: Iterable[tuple[str, list[tuple[dict[str, Any], datetime]]]],
    parts_root: Path,
    part: str,
    pair_terms: frozenset[bytes],
    store_text: bool = True,
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
                add_record(writer, build_document(record, archived_at, store_text))
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


def shard_batches(
    docs: Iterable[tuple[dict[str, Any], datetime]], period: str
) -> Iterator[tuple[str, list[tuple[dict[str, Any], datetime]]]]:
    """Group records into batches of one shard's records each (ids checked unique)."""
    buffers: dict[str, list[tuple[dict[str, Any], datetime]]] = {}
    seen: set[str] = set()
    for record, archived_at in docs:
        if record["id"] in seen:
            raise IndexerError(f"duplicate record id in rebuild input: {record['id']}")
        seen.add(record["id"])
        if "attributes" in record:
            # Not indexed; and a record archived before import limited their depth may nest
            # deeper than pickling (to the index workers) can go.
            record = {k: v for k, v in record.items() if k != "attributes"}
        name = record_shard(record, period)
        buf = buffers.setdefault(name, [])
        buf.append((record, archived_at))
        if len(buf) >= _BATCH:
            yield name, buf
            buffers[name] = []
    for name, buf in buffers.items():
        if buf:
            yield name, buf


def start_worker(
    gen: Path, period: str, worker: int, parts_root: Path, nice: int
) -> subprocess.Popen[bytes]:
    # A plain subprocess (not multiprocessing): no dependence on how the parent's __main__
    # was started, and no fork of a possibly multi-threaded server process.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    code = "from indexer.whoosh.workers import run_build_worker; run_build_worker()"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(gen), period, str(worker), str(parts_root), str(nice)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


WORKER_GONE = "an index worker stopped taking batches"


def _feed(proc: subprocess.Popen[bytes], batches: queue.Queue[Any], failed: list[str]) -> None:
    """Feeder thread: move batches from the shared queue into one worker's stdin.

    Any failure is recorded in ``failed`` (the build then raises it) and the thread goes on
    taking batches until the end marker, so that the thread putting them never blocks on a full
    queue; the worker's stdin is closed whatever happens, so that the worker ends too.
    """
    assert proc.stdin is not None
    try:
        while (item := batches.get()) is not None:
            if failed:
                continue
            try:
                # Pickled whole before writing: a batch that cannot be pickled leaves the
                # worker's stream intact.
                data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:  # noqa: BLE001 - reported by the build, never lost
                failed.append(_unpicklable(item, e))
                continue
            try:
                proc.stdin.write(data)
            except OSError:  # the worker died; its report says why
                failed.append(WORKER_GONE)
        if not failed:
            proc.stdin.write(pickle.dumps(None))  # the end: the worker commits its segments
    except OSError:
        failed.append(WORKER_GONE)
    except BaseException as e:  # noqa: BLE001 - this thread must not die silently
        failed.append(f"index feeder failed: {type(e).__name__}: {e}")
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _unpicklable(item: tuple[str, list[tuple[dict[str, Any], datetime]]], error: Exception) -> str:
    """Say which record of a batch cannot be passed to an index worker, and why."""
    name, batch = item
    for record, archived_at in batch:
        try:
            pickle.dumps((record, archived_at), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - the reason is what we report
            return f"record {record.get('id')!r} cannot be passed to an index worker: {e!r}"
    return f"a batch of shard {name} cannot be passed to an index worker: {error!r}"


def parallel_build(
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
    procs = [start_worker(gen, period, i, parts_root, nice) for i in range(workers)]
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
        try:
            for name, buf in shard_batches(docs, period):
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
    except BaseException:
        # Reading the records failed: the workers' output is not wanted, and they must not
        # outlive the build (nor write into a folder the caller is about to remove).
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        if bar is not None:
            bar.close()
        raise
    errors: list[str] = []
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
    if errors or failed:
        raise IndexerError(_failure(failed, errors, gen))
    return count


def _failure(failed: list[str], reports: list[str], gen: Path) -> str:
    """One message for a failed build: each distinct reason once, the folder written named.

    A worker that failed makes its feeder's writes fail too (a broken pipe): that says nothing
    more than the worker's own report, which is kept instead.
    """
    reasons = [f for f in failed if not (reports and f == WORKER_GONE)] + reports
    return f"index workers failed: {'; '.join(dict.fromkeys(reasons))} (writing {gen})"


def join_parts(gen: Path) -> None:
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
                move_segment_files(part, target, seg)
            segments.extend(segs)
            ix.close()
        assert schema is not None
        TOC(schema, segments, 1).write(storage, windex._DEF_INDEX_NAME)
    shutil.rmtree(parts_root)


class Background:
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
            lower_priority(threading.get_native_id(), self._nice)


def lower_priority(who: int, nice: int) -> None:
    """Set the niceness of a process (0: this one) or, on Linux, a thread, never raising it."""
    if nice > os.getpriority(os.PRIO_PROCESS, who):
        os.setpriority(os.PRIO_PROCESS, who, nice)


def move_segment_files(source: Path, target: Path, segment: Any) -> None:
    """Move one segment's files from one Whoosh index folder to another (same file system)."""
    prefix = f"{segment.indexname}_{segment.segid}"
    for fname in os.listdir(source):
        if fname.startswith(prefix):
            os.replace(source / fname, target / fname)
