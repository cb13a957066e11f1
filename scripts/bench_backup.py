"""Benchmark of `backup create|verify|recover` beside a plain copy of the same files.

Usage: .venv/bin/python scripts/bench_backup.py [--records 100000] [--repeat 3]
Prints a markdown table of medians; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import _checkout  # noqa: F401  (first: this checkout's code, not an installed one)
from bench import AS_OF, folder_bytes, make_installation, write_corpus  # scripts/bench.py

from archive_store.crypto import load_key
from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.importer import import_lines
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.backup import create_backup, recover_backup, verify_backup
from indexer.services import Services


def plain_copy(folder: Path, target: Path) -> None:
    """The baseline: copy the archive folder and the active database as files (not consistent
    while anything writes; what `cp -r` of a stopped installation would do)."""
    shutil.copytree(folder / "archive", target / "archive")
    shutil.copyfile(folder / "active.db", target / "active.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-recover", action="store_true", help="Skip timing a recovery.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="archivist-bench-backup-") as tmp:
        root = Path(tmp)
        corpus = root / "corpus.jsonl"
        raw_bytes = write_corpus(corpus, args.records + args.records // 100)
        lines = corpus.read_bytes().splitlines(keepends=True)
        first, extra = lines[: args.records], lines[args.records :]
        ours = root / "ours"
        runs: dict[str, list[float]] = {}

        def note(key: str, value: float) -> None:
            runs.setdefault(key, []).append(value)

        with make_installation(ours) as services:
            import_lines(first, services.sessions, services.store.find_archived)
            archive_due_records(services.sessions, services.store, services.config.retention,
                                AS_OF, utcnow(), batch_size=services.config.batch_size)
            store_bytes = folder_bytes(ours / "archive") + (ours / "active.db").stat().st_size
            for i in range(args.repeat):
                start = time.perf_counter()
                plain_copy(ours, root / f"plain{i}")
                note("plain", time.perf_counter() - start)
                start = time.perf_counter()
                full = create_backup(services, root / f"full{i}", utcnow())
                note("full", time.perf_counter() - start)
                note("full_bytes", full.bytes)
                start = time.perf_counter()
                again = create_backup(services, root / f"full{i}", utcnow())
                note("again", time.perf_counter() - start)
                note("again_bytes", again.bytes)
                start = time.perf_counter()
                problems = verify_backup(root / f"full{i}", load_key(services.config.key_file))
                note("verify", time.perf_counter() - start)
                assert problems == [], problems
            backup_bytes = folder_bytes(root / "full0")
            import_lines(extra, services.sessions, services.store.find_archived)
            archive_due_records(services.sessions, services.store, services.config.retention,
                                AS_OF, utcnow(), batch_size=services.config.batch_size)
            for i in range(args.repeat):
                start = time.perf_counter()
                grown = create_backup(services, root / f"full{i}", utcnow())
                note("grown", time.perf_counter() - start)
                note("grown_bytes", grown.bytes)
        for i in range(0 if args.no_recover else 1):
            target = root / f"recovered{i}"
            target.mkdir()
            (target / "config.toml").write_text((ours / "config.toml").read_text())
            shutil.copy2(ours / "archive.key", target / "archive.key")  # the backup's key
            config = load_config(target / "config.toml")
            with Services.open(config, create=True):
                pass
            start = time.perf_counter()
            recover_backup(config, root / f"full{i}", utcnow())
            note("recover", time.perf_counter() - start)
    med = {key: statistics.median(values) for key, values in runs.items()}
    mib = 2**20
    print(f"{args.records:,} records archived (raw JSON {raw_bytes / mib:.0f} MiB), then 1% more; "
          f"store + active.db {store_bytes / mib:.0f} MiB; backup folder "
          f"{backup_bytes / mib:.0f} MiB; median of {args.repeat}\n")
    print("| step | seconds | MiB copied | vs plain copy of the same files |")
    print("|---|---|---|---|")
    print(f"| plain copy (`cp -r`, baseline) | {med['plain']:.2f} | "
          f"{store_bytes / mib:.0f} | 1.00 |")
    for key, label in (
        ("full", "`backup create` into an empty folder"),
        ("again", "`backup create` again, nothing new"),
        ("grown", "`backup create` after archiving 1% more"),
    ):
        print(f"| {label} | {med[key]:.2f} | {med[key + '_bytes'] / mib:.1f} | "
              f"{med[key] / med['plain']:.2f} |")
    print(f"| `backup verify` | {med['verify']:.2f} | | {med['verify'] / med['plain']:.2f} |")
    if "recover" in med:
        print(f"| `backup recover` (with index rebuild), one run | {med['recover']:.2f} | | "
              f"{med['recover'] / med['plain']:.2f} |")


if __name__ == "__main__":
    main()
