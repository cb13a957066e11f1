"""Benchmark the search engine against a plain Whoosh index and SQLite FTS5.

Usage: python scripts/bench_search.py --records 100000 [--plain-records 20000] [--dir DIR]
       [--index-only]

Prints a markdown table: build rates, index sizes, memory, warm query latencies (p50/p95).
--index-only stops after our rebuild and incremental rows (for a 1,000,000-record rebuild,
where the plain Whoosh baseline keeps its own small size and FTS5 and the queries are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.search import SearchQuery  # noqa: E402
from indexer.search.dates import parse_bound  # noqa: E402
from indexer.whoosh.index import SearchIndex  # noqa: E402

UTC = UTC
CATEGORIES = ["support", "sales", "billing", "finance", "medical"]
KINDS = ["communication", "process", "transaction", "ticket", "note"]
COMMON_EN = (
    "the customer order account payment issue please thanks request update team service "
    "support invoice refund delivery product contract call email meeting follow price"
).split()
RARE_EN = (
    "escalation warranty chargeback reconciliation subpoena audit firmware recall defect "
    "compliance arbitration"
).split()
ZH_WORDS = (
    "退款 发票 客户 订单 发货 物流 投诉 合同 续约 付款 账户 问题 处理 申请 确认 服务 产品 价格 "
    "会议 电话 邮件 更新 团队 支持 质量 保修 审计 召回 赔偿 开具"
).split()
ZH_GLUE = "的了和已在我们您请将"


def _syllable_words(rnd: random.Random, n: int) -> list[str]:
    cons, vow = "bcdfghjklmnprstvwz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rnd.choice(cons) + rnd.choice(vow) for _ in range(rnd.randint(2, 4))))
    return sorted(out)


def generate_records(n: int, seed: int = 1) -> Iterator[tuple[dict[str, Any], datetime]]:
    """Yield n generated (record, archived_at): ~70% English, ~30% Chinese, with identifiers.

    :param n: how many records.
    :param seed: random seed.
    """
    rnd = random.Random(seed)
    vocab = COMMON_EN + _syllable_words(rnd, 20_000)
    cum: list[float] = []
    acc = 0.0
    for i in range(len(vocab)):
        acc += 1.0 / (i + 1) ** 1.05
        cum.append(acc)
    base = datetime(2016, 1, 1, tzinfo=UTC)
    span = int((datetime(2026, 1, 1, tzinfo=UTC) - base).total_seconds())
    archived = datetime(2026, 2, 1, tzinfo=UTC)
    for i in range(n):
        created = base + timedelta(seconds=rnd.randrange(span))
        updated = created + timedelta(days=rnd.randrange(200))
        if rnd.random() < 0.7:
            words = rnd.choices(vocab, cum_weights=cum, k=rnd.randint(20, 120))
            if rnd.random() < 0.05:
                words.insert(rnd.randrange(len(words)), rnd.choice(RARE_EN))
            subject = " ".join(rnd.choices(vocab[:300], k=5)).capitalize()
        else:
            words = []
            for _ in range(rnd.randint(4, 15)):
                words.append(
                    "".join(rnd.choice(ZH_WORDS) + rnd.choice(ZH_GLUE) for _ in range(3)) + "。"
                )
            subject = rnd.choice(ZH_WORDS) + rnd.choice(ZH_WORDS)
        if rnd.random() < 0.3:
            words.append(f"INV-{created.year}-{i:06d}")
        if rnd.random() < 0.1:
            words.append(f"user{i % 5000}@example.com")
        if rnd.random() < 0.05:
            words.append(f"+86 138 {i % 10000:04d} {i // 10000 % 10000:04d}")
        yield (
            {
                "id": f"R{i:08d}",
                "kind": rnd.choice(KINDS),
                "category": rnd.choice(CATEGORIES),
                "customer_id": f"C{rnd.randrange(20000)}",
                "owner": f"agent{rnd.randrange(50)}",
                "subject": subject,
                "body": " ".join(words),
                "status": rnd.choice(["open", "closed", "won"]),
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "updated_at": updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            archived + timedelta(seconds=i),
        )


def dir_size(path: Path) -> int:
    """Return the total size of the files under a folder."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_mb() -> float:
    """Return this process's peak resident memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Return this process's current resident memory in MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float, Any]:
    """Run fn warm ``runs`` times; return p50 and p95 in milliseconds and the last result."""
    result = fn()
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], result


def build_plain_whoosh(path: Path, n: int) -> float:
    """Index n records into a default Whoosh index (StemmingAnalyzer, one writer); records/s."""
    from whoosh import fields, index
    from whoosh.analysis import StemmingAnalyzer

    schema = fields.Schema(
        id=fields.ID(stored=True, unique=True),
        category=fields.ID(stored=True),
        subject=fields.TEXT(analyzer=StemmingAnalyzer(), stored=True),
        body=fields.TEXT(analyzer=StemmingAnalyzer()),
        created_at=fields.DATETIME(stored=True, sortable=True),
    )
    path.mkdir(parents=True)
    ix = index.create_in(str(path), schema)
    t = time.perf_counter()
    w = ix.writer()
    for record, _at in generate_records(n):
        w.add_document(
            id=record["id"],
            category=record["category"],
            subject=record["subject"],
            body=record["body"],
            created_at=datetime.fromisoformat(record["created_at"]).replace(tzinfo=None),
        )
    w.commit()
    return n / (time.perf_counter() - t)


def build_fts5(path: Path, n: int) -> tuple[float, sqlite3.Connection]:
    """Index n records into SQLite FTS5 (porter + unicode61); returns records/s."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, category UNINDEXED, "
        "created UNINDEXED, subject, body, tokenize='porter unicode61')"
    )
    t = time.perf_counter()
    rows = (
        (r["id"], r["category"], r["created_at"], r["subject"], r["body"])
        for r, _at in generate_records(n)
    )
    db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", rows)
    db.commit()
    return n / (time.perf_counter() - t), db


def query_classes(year: str, ident: str) -> dict[str, SearchQuery]:
    """Return the benchmark's query classes."""
    lo, hi = parse_bound(f"{year}-01-01", end=False), parse_bound(f"{year}-12-31", end=True)
    return {
        "rare word": SearchQuery(q="arbitration"),
        "common word": SearchQuery(q="refund"),
        "phrase": SearchQuery(q='"please update"'),
        "Chinese word": SearchQuery(q="退款"),
        "identifier": SearchQuery(q=ident),
        "word+category+year (facets)": SearchQuery(
            q="invoice", categories=("billing",), date_from=lo, date_to=hi
        ),
        "date range alone": SearchQuery(date_from=lo, date_to=hi),
    }


ARCHIVE_BATCH = 4_000  # the archive job's default batch (config batch_size)


def archive_job_indexing(ix: SearchIndex, count: int) -> tuple[int, float]:
    """Index new records into a built index as the archive job does; returns (count, records/s).

    The records are new ids, all created in one year (a steady archive job moves records that
    aged out together, into one shard), in created order, in archive batches: each batch is
    staged by both workers and attached, as ``sync_index`` does, so merges are included.
    """
    docs = [
        ({**r, "id": "J" + r["id"], "created_at": "2024" + r["created_at"][4:]}, at)
        for r, at in generate_records(count, seed=3)
    ]
    docs.sort(key=lambda d: d[0]["created_at"])
    t = time.perf_counter()
    for i in range(0, len(docs), ARCHIVE_BATCH):
        batch = docs[i : i + ARCHIVE_BATCH]
        ids = [r["id"] for r, _ in batch]
        staged = ix.stage(batch)
        assert staged is not None
        ix.attach(staged, set(ids), first_versions=ids)
    return count, count / (time.perf_counter() - t)


def run(
    records: int, plain_records: int, workdir: Path, runs: int = 30, index_only: bool = False
) -> str:
    """Run the whole benchmark and return the markdown report.

    :param records: records for our index and FTS5.
    :param plain_records: records for the plain Whoosh index (it is slow; its rate is per record).
    :param workdir: scratch folder.
    :param runs: warm runs per query class.
    :param index_only: stop after building our index (rebuild and incremental).
    """
    lines = [f"## Search benchmark, {records:,} records ({os.cpu_count()} cores)", ""]
    load_start = os.getloadavg()[0]
    raw = workdir / "raw.jsonl"
    with open(raw, "w", encoding="utf-8") as fh:
        for record, _at in generate_records(records):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    raw_size = raw.stat().st_size
    ident = "INV-2020-000123"
    for record, _at in generate_records(min(records, 20_000)):
        found = [w for w in record["body"].split() if w.startswith("INV-2020-")]
        if found:
            ident = found[0]
            break

    ix = SearchIndex.open(workdir / "ours")
    t = time.perf_counter()
    cpu = time.process_time()
    ix.rebuild(generate_records(records), total=records, progress=True)
    build_s = time.perf_counter() - t
    build_cpu = time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = children.ru_utime + children.ru_stime
    load_built = os.getloadavg()[0]
    inc_n = min(records // 10, 20_000)
    inc = SearchIndex.open(workdir / "incremental")
    t = time.perf_counter()
    batch: list[Any] = []
    for doc in generate_records(inc_n, seed=2):
        batch.append(doc)
        if len(batch) == 1000:
            inc.add(batch)
            batch = []
    inc.add(batch)
    inc_rate = inc_n / (time.perf_counter() - t)
    inc.close()
    job_n, job_rate = archive_job_indexing(ix, min(records // 25, 40_000))
    ours_size = dir_size(workdir / "ours")
    build_rows = [
        "| build | records | records/s | time | size on disk |",
        "|---|---:|---:|---:|---:|",
        f"| ours: rebuild, 2 worker processes | {records:,} | {records / build_s:,.0f} | "
        f"{build_s:,.1f} s | {ours_size / 2**20:,.1f} MiB ({ours_size / raw_size:.2f}x raw) |",
        f"| ours: incremental add, batches of 1000 | {inc_n:,} | {inc_rate:,.0f} | "
        f"{inc_n / inc_rate:,.1f} s | |",
        f"| ours: archive job's indexing into the index above (one year, batches of "
        f"{ARCHIVE_BATCH:,} staged on 2 workers, merges included) | {job_n:,} | "
        f"{job_rate:,.0f} ({job_rate / (records / build_s):.2f}x the rebuild) | "
        f"{job_n / job_rate:,.1f} s | |",
    ]
    cpu_note = (
        f"Rebuild CPU: {1e6 * workers_cpu / records:,.0f} us per record in the workers, "
        f"{1e6 * build_cpu / records:,.0f} us in the parent (generating the records included); "
        f"load average (1 min) {load_start:.2f} at start, {load_built:.2f} after the rebuild."
    )
    if index_only:
        return "\n".join([*lines, *build_rows, "", cpu_note, ""])

    plain_rate = build_plain_whoosh(workdir / "plain", plain_records) if plain_records else 0.0
    fts_rate, db = build_fts5(workdir / "fts.db", records)
    rss_before = current_rss_mb()

    lines += [
        *build_rows,
        f"| plain Whoosh (StemmingAnalyzer, one writer) | {plain_records:,} | "
        f"{plain_rate:,.0f} | {plain_records / plain_rate if plain_rate else 0:,.1f} s | "
        f"{dir_size(workdir / 'plain') / 2**20 if plain_records else 0:,.1f} MiB |",
        f"| SQLite FTS5 (porter unicode61) | {records:,} | {fts_rate:,.0f} | "
        f"{records / fts_rate:,.1f} s | {(workdir / 'fts.db').stat().st_size / 2**20:,.1f} MiB |",
        f"| raw JSON Lines | {records:,} | | | {raw_size / 2**20:,.1f} MiB |",
        "",
        "| query (warm, exact total) | total | ours p50 | ours p95 | FTS5 p50 (count + top 20) |",
        "|---|---:|---:|---:|---:|",
    ]
    fts_sql = {
        "rare word": ("arbitration", None),
        "common word": ("refund", None),
        "phrase": ('"please update"', None),
        "Chinese word": ("退款", None),
        "identifier": (f'"{ident}"', None),
        "word+category+year (facets)": ("invoice", "billing"),
    }
    for name, q in query_classes("2020", ident).items():

        def run_query(q: SearchQuery = q) -> Any:
            return ix.search(q)

        p50, p95, page = timed(run_query, runs)
        fts = ""
        if name in fts_sql:
            match, cat = fts_sql[name]
            where = "docs MATCH ?" + (" AND category = ?" if cat else "")
            args = [match] + ([cat] if cat else [])

            def fq(where: str = where, args: list[str] = args) -> Any:
                n = db.execute(f"SELECT count(*) FROM docs WHERE {where}", args).fetchone()
                db.execute(
                    f"SELECT id FROM docs WHERE {where} ORDER BY rank LIMIT 20", args
                ).fetchall()
                return n

            f50, _f95, _ = timed(fq, max(5, runs // 3))
            fts = f"{f50:,.1f} ms"
        lines.append(f"| {name} | {page.total:,} | {p50:,.1f} ms | {p95:,.1f} ms | {fts} |")
    lines += [
        "",
        f"Search process memory: {current_rss_mb():,.0f} MiB now "
        f"({rss_before:,.0f} MiB before the first query), peak {rss_mb():,.0f} MiB.",
        f"Load average (1 min) at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f} "
        "(above 2 means other processes shared the cores).",
        cpu_note,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--plain-records", type=int, default=None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--index-only", action="store_true", help="only our rebuild and incremental rows"
    )
    args = parser.parse_args(argv)
    plain = args.plain_records if args.plain_records is not None else min(args.records, 20_000)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-search-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(run(args.records, plain, workdir, args.runs, args.index_only))
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
