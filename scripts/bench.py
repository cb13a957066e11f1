"""Benchmarks: import and archive throughput, archive size; each beside a baseline in one run.

Usage: .venv/bin/python scripts/bench.py [--records 100000] [--repeat 3]
       .venv/bin/python scripts/bench.py --crm [--records 100000] [--repeat 3]
Prints a markdown table of medians; docs/benchmarks.md keeps the figures. `--crm` measures
archive and restore over the CRM's own tables on a throwaway PostgreSQL server (the README's
example schema) beside the embedded default (Archivist's own table on SQLite).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import _checkout  # noqa: F401  (first: this checkout's code, not an installed one)
from sqlalchemy import create_engine

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.demo_data import generate_records
from archivist.importer import import_lines
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.crm_archiver import archive_crm_tables
from indexer.jobs.crm_restore import restore_crm_process
from indexer.jobs.indexing import rebuild_index, sync_index
from indexer.jobs.restore import restore_many, restore_process
from indexer.jobs.runs import run_archive_job
from indexer.search import SearchQuery
from indexer.services import Services
from indexer.whoosh.index import SearchIndex

ROOT = Path(__file__).resolve().parent.parent
AS_OF = datetime(2030, 1, 1, tzinfo=UTC)  # everything generated is aged by then


def write_corpus(path: Path, count: int) -> int:
    """Write `count` generated records as JSON Lines; returns the file size."""
    with path.open("w", encoding="utf-8") as f:
        for record in generate_records(count, seed=42):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path.stat().st_size


def make_installation(folder: Path) -> Services:
    """A fresh installation with production settings under `folder`."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(
        '[active]\nurl = "sqlite:///active.db"\n'
        '[archive]\ndir = "archive"\n[index]\ndir = "index"\n'
    )
    return Services.open(load_config(folder / "config.toml"), create=True)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench_once(corpus: Path, count: int, folder: Path) -> dict[str, float]:
    """One run of every step and its baseline; returns records/s and sizes."""
    result: dict[str, float] = {}
    with make_installation(folder / "ours") as services:
        with corpus.open("rb") as lines:
            seconds = timed(
                lambda: import_lines(lines, services.sessions, services.store.find_archived)
            )
        result["import"] = count / seconds
        reports = []
        result["archive"] = count / timed(
            lambda: reports.append(
                archive_due_records(
                    services.sessions,
                    services.store,
                    services.config.retention,
                    AS_OF,
                    utcnow(),
                    batch_size=services.config.batch_size,
                )
            )
        )
        assert reports[0].archived == count
        # While the installation is open the catalog's write-ahead log is part of its size too.
        result["archive_bytes_open"] = folder_bytes(folder / "ours" / "archive")
        result["segment_bytes"] = folder_bytes(folder / "ours" / "archive" / "segments")
    result["archive_bytes"] = folder_bytes(folder / "ours" / "archive")
    result["import_baseline"] = count / timed(lambda: baseline_import(corpus, folder / "base.db"))
    result["archive_baseline"] = count / timed(
        lambda: baseline_archive(corpus, folder / "base.jsonl.gz")
    )
    result["baseline_bytes"] = (folder / "base.jsonl.gz").stat().st_size
    return result


def bench_at_rest(corpus: Path, count: int, folder: Path) -> int:
    """The archive folder's bytes once the real archive job (which indexes each batch as it
    goes) has archived every record and the installation is closed: what a user keeps. The
    table's other sizes are taken right after the archive step alone, when the catalog still
    marks every record unindexed."""
    with make_installation(folder) as services:
        with corpus.open("rb") as lines:
            import_lines(lines, services.sessions, services.store.find_archived)
        report = run_archive_job(services, AS_OF)
        assert report.archived == report.indexed == count
    return folder_bytes(folder / "archive")


def bench_indexing(corpus: Path, count: int, folder: Path) -> dict[str, float]:
    """Incremental indexing (the archive job's catch-up) against a full rebuild, same records."""
    with make_installation(folder) as services:
        with corpus.open("rb") as lines:
            import_lines(
                itertools.islice(lines, count), services.sessions, services.store.find_archived
            )
        archive_due_records(
            services.sessions, services.store, services.config.retention, AS_OF, utcnow()
        )
        incremental = count / timed(lambda: sync_index(services.store, services.index))
        rebuild = count / timed(lambda: rebuild_index(services.store, services.index))
        hits = bench_hit_page(services, folder / "stored-text")
    return {"incremental": incremental, "rebuild": rebuild, **hits}


HIT_QUERIES = ("refund", "invoice OR payment", "退款", "customer_id:C00042", "")


def bench_hit_page(services: Services, folder: Path, runs: int = 30) -> dict[str, float]:
    """A page of 20 hits with snippets: text read from the encrypted store (one read per hit)
    against an index of the same records that keeps the text in stored fields (as before)."""
    stored = SearchIndex.open(folder, store_text=True)
    try:
        stored.rebuild(
            (record, entry.archived_at) for entry, record in services.store.iter_records()
        )
        result = {}
        for name, index in (("hits_stored", stored), ("hits_store", services.index)):
            times = []
            for _ in range(3):  # warm up: columns and caches
                for q in HIT_QUERIES:
                    index.search(SearchQuery(q=q, per_page=20))
            for _ in range(runs):
                for q in HIT_QUERIES:
                    started = time.perf_counter()
                    page = index.search(SearchQuery(q=q, per_page=20))
                    times.append((time.perf_counter() - started) * 1000)
                    assert all(hit.subject for hit in page.hits)
            result[name] = statistics.median(times)
            result[name + "_p95"] = statistics.quantiles(times, n=20)[18]
        return result
    finally:
        stored.close()


def bench_bulk_restore(
    corpus: Path, count: int, baseline_count: int, folder: Path
) -> dict[str, float]:
    """Bulk restore of `count` archived records (batched) with searches running beside it,
    against one-by-one restores (`restore_process` per record) in the same installation."""
    with make_installation(folder) as services:
        with corpus.open("rb") as lines:
            import_lines(
                itertools.islice(lines, count + baseline_count),
                services.sessions,
                services.store.find_archived,
            )
        archive_due_records(
            services.sessions, services.store, services.config.retention, AS_OF, utcnow()
        )
        sync_index(services.store, services.index)
        ids = [entry.record_id for entry in services.store.iter_catalog(state="archived")]
        bulk_ids, one_by_one = ids[:count], ids[count : count + baseline_count]
        latencies: list[float] = []
        done = threading.Event()

        def search_meanwhile() -> None:
            queries = itertools.cycle(["refund", "退款", "invoice", "shipping delayed"])
            while not done.is_set():
                started = time.perf_counter()
                services.index.search(SearchQuery(q=next(queries)))
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)  # a user's pace, in this process (the server has its own)

        searcher = threading.Thread(target=search_meanwhile)
        searcher.start()
        reports = []
        cpu_started = time.thread_time()  # this thread's CPU: the restore, not the searches
        bulk_seconds = timed(lambda: reports.append(restore_many(
            services.sessions, services.store, services.index, bulk_ids, "bench", utcnow(),
            "benchmark",
        )))
        bulk_cpu = time.thread_time() - cpu_started
        done.set()
        searcher.join()
        assert len(reports[0].restored) == count, reports[0].skipped[:3]
        single_seconds = timed(lambda: [
            restore_process(services.sessions, services.store, services.index, record_id,
                            "bench", utcnow(), "benchmark")
            for record_id in one_by_one
        ])
    return {
        "bulk": count / bulk_seconds,
        "bulk_cpu": count / bulk_cpu,
        "single": baseline_count / single_seconds,
        "searches": len(latencies),
        "search_p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "search_max_ms": 1000 * max(latencies) if latencies else 0.0,
    }


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under a folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def baseline_import(corpus: Path, db_path: Path) -> None:
    """Plain sqlite3 executemany of the parsed lines: no validation, no upsert logic."""
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE r (id TEXT PRIMARY KEY, doc TEXT)")
    with corpus.open("rb") as f, conn:
        conn.executemany(
            "INSERT INTO r VALUES (?, ?)", ((json.loads(line)["id"], line.decode()) for line in f)
        )
    conn.close()


def baseline_archive(corpus: Path, path: Path) -> None:
    """The least an archive could do: append gzip'd lines, fsync every 1,000."""
    with corpus.open("rb") as f, path.open("wb") as out:
        gz = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6)
        for n, line in enumerate(f, start=1):
            gz.write(line)
            if n % 1000 == 0:
                gz.flush()
                os.fsync(out.fileno())
        gz.close()
        os.fsync(out.fileno())


# `count` rows of the README's example schema, all aged: half cases (every fifth the child of
# the case before), a quarter messages and a quarter notes, one of each per case of the first half.
CRM_DATA = """
INSERT INTO accounts (id, name) SELECT g, 'account ' || g FROM generate_series(1, 100) g;
INSERT INTO cases (id, account_id, parent_case_id, queue, assignee, title, description, state,
                   amount, opened_at, last_activity_at, tags, custom, raw_payload)
SELECT g, g % 100 + 1, CASE WHEN g % 5 = 0 THEN g - 1 END,
       (ARRAY['support', 'billing', 'sales'])[g % 3 + 1], 'agent' || g % 40,
       'case ' || g || ' refund INV-2023-' || g, 'customer asks about order ' || g ||
       ', refund requested; 客户要求退款', 'closed', g / 100.0,
       '2023-01-01'::timestamptz + g * interval '1 minute',
       '2023-02-01'::timestamptz + g * interval '1 second', ARRAY['t' || g % 7],
       jsonb_build_object('g', g, 'x', 1.50), json_build_object('source', 'web')
FROM generate_series(1, {cases}) g;
INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at, ratings)
SELECT md5(g::text)::uuid, g, 'support', 'Re: case ' || g, 'message body ' || g,
       '2023-01-01'::timestamptz + g * interval '1 minute', ARRAY[g % 5, 5]
FROM generate_series(1, {each}) g;
INSERT INTO notes (id, case_id, author, body, written_at, minutes)
SELECT g, g, 'agent' || g % 40, 'note ' || g, '2023-01-01'::timestamp + g * interval '1 minute',
       g * 0.25
FROM generate_series(1, {each}) g;
"""


def bench_crm(count: int, folder: Path, restores: int) -> dict[str, float]:
    """Archive `count` mapped rows on PostgreSQL and restore `restores` processes, beside the
    embedded default (the same number of records in Archivist's own table on SQLite)."""
    sys.path.insert(0, str(ROOT))
    from tests.pg import run_postgres  # a throwaway server, as the tests start one

    result: dict[str, float] = {}
    with run_postgres() as url:
        engine = create_engine(url)
        with engine.begin() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            driver.execute((ROOT / "docs" / "crm-example" / "schema.sql").read_text())
            driver.execute(CRM_DATA.format(cases=count // 2, each=count // 4))
            connection.exec_driver_sql("ANALYZE")
        folder.mkdir(parents=True)
        config = folder / "crm.toml"
        config.write_text(
            f'[active]\nurl = "{url}"\n[archive]\ndir = "archive"\n[index]\ndir = "index"\n'
            + (ROOT / "docs" / "crm-example" / "mapping.toml").read_text()
        )
        with Services.open(load_config(config), create=True) as services:
            assert services.crm is not None
            crm, refs = services.reflect_crm(refs=True)
            assert crm is not None
            reports = []
            seconds = timed(lambda: reports.append(archive_crm_tables(
                services.sessions, services.store, crm, refs,
                services.config.retention, AS_OF, utcnow(),
                batch_size=services.config.batch_size,
            )))
            assert reports[0].archived == count // 2 + 2 * (count // 4), reports[0]
            result["crm_archive"] = reports[0].archived / seconds
            restored: list[str] = []
            seconds = timed(lambda: [
                restored.extend(restore_crm_process(
                    services.sessions, services.store, None, crm, f"case:{5 * i}", "bench",
                    utcnow(),
                ))
                for i in range(1, restores + 1)
            ])
            result["crm_restore"] = len(restored) / seconds
            result["crm_restore_processes"] = restores / seconds
        engine.dispose()
    with make_installation(folder / "embedded") as services:
        corpus = folder / "corpus.jsonl"
        write_corpus(corpus, count)
        with corpus.open("rb") as lines:
            import_lines(lines, services.sessions, services.store.find_archived)
        report = []
        seconds = timed(lambda: report.append(archive_due_records(
            services.sessions, services.store, services.config.retention, AS_OF, utcnow(),
            batch_size=services.config.batch_size,
        )))
        result["embedded_archive"] = report[0].archived / seconds
        # the same number of processes, one at a time, as over the CRM's tables
        back: list[str] = []

        def restore_processes() -> None:
            processes = 0
            for entry in services.store.iter_catalog(state="archived"):
                if processes == restores:
                    return
                if services.store.info(entry.record_id).state != "archived":
                    continue  # came back with a process restored before
                back.extend(r.id for r in restore_process(
                    services.sessions, services.store, None, entry.record_id, "bench", utcnow()
                ))
                processes += 1

        seconds = timed(restore_processes)
        result["embedded_restore"] = len(back) / seconds
        result["embedded_restore_processes"] = restores / seconds
    return result


def print_crm(count: int, repeat: int, restores: int) -> None:
    """Run `bench_crm` `repeat` times and print the medians."""
    with tempfile.TemporaryDirectory(prefix="archivist-bench-") as tmp:
        runs = [bench_crm(count, Path(tmp) / f"run{i}", restores) for i in range(repeat)]
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"{count:,} rows, {restores:,} processes restored one at a time, median of {repeat}\n")
    print("| step | CRM tables on PostgreSQL | embedded default (SQLite) | PostgreSQL / embedded |")
    print("|---|---|---|---|")
    print(
        f"| archive (records/s) | {med['crm_archive']:,.0f} | {med['embedded_archive']:,.0f} | "
        f"{med['crm_archive'] / med['embedded_archive']:.2f} |"
    )
    print(
        f"| restore (records/s) | {med['crm_restore']:,.0f} "
        f"({med['crm_restore_processes']:,.0f} processes/s) | {med['embedded_restore']:,.0f} "
        f"({med['embedded_restore_processes']:,.0f} processes/s) | "
        f"{med['crm_restore'] / med['embedded_restore']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--index-records", type=int, default=20_000)
    parser.add_argument("--restore-records", type=int, default=20_000)
    parser.add_argument("--restore-baseline", type=int, default=500)
    parser.add_argument("--only", choices=["all", "restore"], default="all")
    parser.add_argument("--crm", action="store_true", help="the CRM's own tables on PostgreSQL")
    parser.add_argument("--restores", type=int, default=1000)
    args = parser.parse_args()
    if args.crm:
        print_crm(args.records, args.repeat, args.restores)
        return
    if args.only == "restore":
        print_bulk_restore(args)
        return
    with tempfile.TemporaryDirectory(prefix="archivist-bench-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        raw_bytes = write_corpus(corpus, args.records)
        runs = [bench_once(corpus, args.records, root / f"run{i}") for i in range(args.repeat)]
        indexing = bench_indexing(corpus, min(args.index_records, args.records), root / "ix")
        at_rest = bench_at_rest(corpus, args.records, root / "rest")
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"{args.records:,} records, raw JSON {raw_bytes / 2**20:.1f} MiB, "
        f"median of {args.repeat} runs\n"
    )
    print("| step | Archivist | baseline | Archivist / baseline |")
    print("|---|---|---|---|")
    print(
        f"| import (records/s) | {med['import']:,.0f} | {med['import_baseline']:,.0f} "
        f"(sqlite3 executemany) | {med['import'] / med['import_baseline']:.2f} |"
    )
    print(
        f"| archive (records/s) | {med['archive']:,.0f} | {med['archive_baseline']:,.0f} "
        f"(gzip JSONL + fsync) | {med['archive'] / med['archive_baseline']:.2f} |"
    )
    print(
        f"| indexing, {min(args.index_records, args.records):,} records (records/s) | "
        f"{indexing['incremental']:,.0f} incremental (archive job catch-up) | "
        f"{indexing['rebuild']:,.0f} (`index --rebuild`, 2 cores) | "
        f"{indexing['incremental'] / indexing['rebuild']:.2f} |"
    )
    print(
        f"| segment files vs raw JSON | {med['segment_bytes'] / raw_bytes:.2f} | "
        f"{med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | "
        f"{med['segment_bytes'] / med['baseline_bytes']:.2f} |"
    )
    catalog = med["archive_bytes"] - med["segment_bytes"]
    print(
        f"| catalog (and key, dictionary) vs raw JSON | {catalog / raw_bytes:.2f} | "
        f"{med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | "
        f"{catalog / med['baseline_bytes']:.2f} |"
    )
    print(
        f"| archive size incl. catalog vs raw JSON | {med['archive_bytes'] / raw_bytes:.2f} | "
        f"{med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | "
        f"{med['archive_bytes'] / med['baseline_bytes']:.2f} |"
    )
    print(
        f"| the same, still open (catalog's WAL not yet checkpointed) | "
        f"{med['archive_bytes_open'] / raw_bytes:.2f} | "
        f"{med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | "
        f"{med['archive_bytes_open'] / med['baseline_bytes']:.2f} |"
    )
    print(
        f"| the same at rest: after the archive job, which indexes as it goes (one run) | "
        f"{at_rest / raw_bytes:.2f} | {med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | "
        f"{at_rest / med['baseline_bytes']:.2f} |"
    )
    print(
        f"| hit page of 20 with snippets, {min(args.index_records, args.records):,} records "
        f"(ms, p50 / p95) | {indexing['hits_store']:.1f} / {indexing['hits_store_p95']:.1f} "
        f"(text read from the encrypted store) | {indexing['hits_stored']:.1f} / "
        f"{indexing['hits_stored_p95']:.1f} (text in the index's stored fields) | "
        f"{indexing['hits_store'] / indexing['hits_stored']:.2f} |"
    )

    print_bulk_restore(args)


def print_bulk_restore(args: argparse.Namespace) -> None:
    """Bulk restore beside one-by-one restores, the median of `--repeat` runs."""
    count, baseline = args.restore_records, args.restore_baseline
    with tempfile.TemporaryDirectory(prefix="archivist-bench-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        write_corpus(corpus, count + baseline)
        runs = [
            bench_bulk_restore(corpus, count, baseline, root / f"restore{i}")
            for i in range(args.repeat)
        ]
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"| bulk restore, {count:,} records (records/s) | {med['bulk']:,.0f} | "
        f"{med['single']:,.0f} (one restore per record, {baseline:,}) | "
        f"{med['bulk'] / med['single']:.1f} |"
    )
    print(f"| bulk restore per CPU-second of its thread (records/s) | {med['bulk_cpu']:,.0f} | | |")
    print(
        f"| searches answered during the bulk restore | {med['searches']:,.0f} "
        f"(median {med['search_p50_ms']:.0f} ms, slowest {med['search_max_ms']:.0f} ms) | | |"
    )


if __name__ == "__main__":
    main()
