"""Benchmarks: import and archive throughput, archive size; each beside a baseline in one run.

Usage: .venv/bin/python scripts/bench.py [--records 100000] [--repeat 3]
Prints a markdown table of medians; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.demo_data import generate_records
from archivist.importer import import_lines
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.indexing import rebuild_index, sync_index
from indexer.services import Services

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
        result["archive_bytes"] = folder_bytes(folder / "ours" / "archive")
        result["segment_bytes"] = folder_bytes(folder / "ours" / "archive" / "segments")
    result["import_baseline"] = count / timed(lambda: baseline_import(corpus, folder / "base.db"))
    result["archive_baseline"] = count / timed(
        lambda: baseline_archive(corpus, folder / "base.jsonl.gz")
    )
    result["baseline_bytes"] = (folder / "base.jsonl.gz").stat().st_size
    return result


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
    return {"incremental": incremental, "rebuild": rebuild}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--index-records", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archivist-bench-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        raw_bytes = write_corpus(corpus, args.records)
        runs = [bench_once(corpus, args.records, root / f"run{i}") for i in range(args.repeat)]
        indexing = bench_indexing(corpus, min(args.index_records, args.records), root / "ix")
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
        f"{med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | |"
    )
    print(
        f"| archive size incl. catalog vs raw JSON | {med['archive_bytes'] / raw_bytes:.2f} | "
        f"{med['baseline_bytes'] / raw_bytes:.2f} (gzip JSONL) | "
        f"{med['archive_bytes'] / med['baseline_bytes']:.2f} |"
    )


if __name__ == "__main__":
    main()
