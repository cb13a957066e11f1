"""HTTP benchmark: search throughput and latency on the real gunicorn server, under load.

For 1, 8 and 32 concurrent clients, each phase runs a mixed query set against `archivist serve`
while an archive job moves a fresh batch of records and an admin restores records one after
another. Then one export streams every record and the server's memory growth is sampled.

The archive job (``--job``) is by default the one a running ``archivist worker`` schedules: the
worker runs for the whole benchmark with its archive job due every minute, and each phase starts
two seconds before a minute begins. ``--job cli`` runs ``archivist archive`` as a process of its
own instead (paying its start-up: imports, opening the index); ``--job none`` runs no job.

Usage: .venv/bin/python scripts/bench_http.py [--records 50000] [--seconds 20] [--dir DIR]
       [--clients 1 8 32] [--job worker|cli|none]
Prints a markdown table; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import _checkout  # noqa: F401  (first: this checkout's code, not an installed one)

from archivist.active_db import utcnow
from archivist.config import ServerConfig, load_config
from archivist.demo_data import generate_records
from archivist.importer import import_lines
from archivist.tokens import create_token
from indexer.jobs.archiver import archive_due_records
from indexer.jobs.indexing import rebuild_index
from indexer.services import Services

GENERATED_AT = datetime(2026, 1, 1, tzinfo=UTC)
BATCH_GENERATED_AT = datetime(2024, 6, 1, tzinfo=UTC)  # aged for the worker, whose "now" is now
RUN_BASE = 100_000_000 + time.time_ns() // 10**9 % 100_000 * 1_000_000
AS_OF = datetime(2030, 1, 1, tzinfo=UTC)  # everything generated is aged by then
CONFIG = """
[active]
url = "sqlite:///data/active.db"
[archive]
dir = "data/archive"
[index]
dir = "data/index"
[server]
processes = {processes}
threads = {threads}
rate_limit_per_minute = 100000000
[worker]
archive_cron = "* * * * *"
dispose_cron = "0 0 1 1 *"
"""
PHASE_NUMBERS = itertools.count(1)  # numbers each phase's batch apart from the others
JOBS = ("worker", "cli", "none")
WORKER_DONE = re.compile(r"archive job: (archived \d+, indexed \d+)")
QUERIES = [
    {"q": "refund"},
    {"q": "refunded invoice"},
    {"q": "退款"},
    {"q": "发票 OR 退款"},
    {"q": '"shipment delayed"'},
    {"q": "escalat*"},
    {"q": "payment NOT card"},
    {"q": "物流 延迟"},
    {"q": "refund", "category": "billing", "sort": "newest"},
    {"q": "", "from": "2022-01-01", "to": "2022-03-31"},
    {"q": "", "kind": "ticket", "sort": "oldest", "page": "5"},
    {"q": "customer", "date_field": "updated_at", "from": "2021-01-01", "per_page": "50"},
    {"q": "chargeback", "owner": "alice"},
    {"q": "subject:contract", "per_page": "100"},
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def import_batch(
    services: Services, count: int, start: int, now: datetime = GENERATED_AT
) -> None:
    """Import `count` generated records numbered from `start` into the active database."""
    lines = (
        json.dumps(r, ensure_ascii=False).encode()
        for r in generate_records(count, seed=11, now=now, start=start)
    )
    import_lines(lines, services.sessions, services.store.find_archived)


def build(
    folder: Path, records: int, processes: int = 2, threads: int = ServerConfig.threads
) -> tuple[Path, str, str]:
    """An installation with `records` archived records; returns config path and two tokens."""
    config_path = folder / "config.toml"
    fresh = not config_path.exists()
    config_path.write_text(CONFIG.format(processes=processes, threads=threads))
    config = load_config(config_path)
    with Services.open(config, create=True) as services:
        if fresh:
            started = time.perf_counter()
            for start in range(0, records, 50_000):
                import_batch(services, min(50_000, records - start), start)
                archive_due_records(
                    services.sessions, services.store, config.retention, AS_OF, utcnow(),
                    batch_size=config.batch_size,
                )
            archived = time.perf_counter()
            rebuild_index(services.store, services.index, progress=True)
            print(
                f"built {records} archived records in {archived - started:.0f} s, "
                f"indexed them in {time.perf_counter() - archived:.0f} s",
                file=sys.stderr,
            )
        stamp = f"{time.time_ns()}"
        with services.sessions.begin() as session:
            admin = create_token(session, f"bench-admin-{stamp}", "admin", utcnow())
            agent = create_token(session, f"bench-agent-{stamp}", "agent", utcnow())
    return config_path, admin, agent


def archived_sample(config_path: Path, records: int, count: int) -> list[str]:
    """Ids of records that are archived now, sampled afresh each run (a reused installation
    holds records that earlier runs restored)."""
    candidates = [f"REC-{n:08d}" for n in random.Random().sample(range(records), 2 * count)]
    with Services.open(load_config(config_path)) as services:
        entries = services.store.entries(candidates)
    return [rid for rid in candidates if rid in entries and entries[rid].state == "archived"][
        :count
    ]


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values, 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        """Send one request; reconnects once if the server closed the connection."""
        for attempt in range(2):
            try:
                self.conn.request(method, path, headers=self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")


class WorkerProcess:
    """A running ``archivist worker`` whose archive job is due every minute; its log is read
    for the job's report."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        command = [sys.executable, "-m", "archivist", "worker", "--config", str(config_path)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def wait_for_report(self, since: int, timeout: float = 300) -> str:
        """Wait for an archive job that ends after log offset ``since``; return its report."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(since)
                found = WORKER_DONE.search(f.read().decode("utf-8", "replace"))
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited; see {self.log_path}")
            time.sleep(0.5)
        raise TimeoutError(f"no archive job report in {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        self.log.close()


def sleep_until_minute(lead: float) -> None:
    """Sleep until ``lead`` seconds before the next minute begins (at least ``lead`` from now),
    when the worker's archive job is due."""
    now = time.time()
    target = (now // 60 + 1) * 60 - lead
    if target - now < lead:
        target += 60
    time.sleep(target - now)


def run_phase(
    port: int,
    agent: str,
    admin: str,
    clients: int,
    seconds: float,
    config_path: Path,
    restore_ids: list[str],
    job: str = "worker",
    worker: WorkerProcess | None = None,
) -> dict[str, Any]:
    """One load phase; returns its figures."""
    stop = threading.Event()
    latencies: list[float] = []
    restores: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    paths = [f"/api/v1/search?{urlencode(q)}" for q in QUERIES]

    def search_loop(n: int) -> None:
        client = Client(port, agent)
        mine: list[float] = []
        for path in itertools.islice(itertools.cycle(paths), n % len(paths), None):
            if stop.is_set():
                break
            started = time.perf_counter()
            status, body = client.request("GET", path)
            mine.append(time.perf_counter() - started)
            if status != 200:
                with lock:
                    errors.append(f"{status} {path} {body[:200]!r}")
        with lock:
            latencies.extend(mine)

    def restore_loop() -> None:
        client = Client(port, admin)
        while not stop.is_set() and restore_ids:
            record_id = restore_ids.pop()
            started = time.perf_counter()
            status, body = client.request("POST", f"/api/v1/records/{quote(record_id)}/restore")
            elapsed = time.perf_counter() - started
            with lock:
                restores.append(elapsed)
                if status != 200:
                    errors.append(f"restore {record_id}: {status} {body[:200]!r}")
            stop.wait(0.25)

    lead = min(2.0, seconds / 5)
    if worker is not None and 60 - time.time() % 60 < 15:
        # the job is due any moment: let it run before the batch is imported
        since = worker.log_size()
        time.sleep(60 - time.time() % 60 + 1)
        worker.wait_for_report(since)
    if job != "none":
        with Services.open(load_config(config_path)) as services:
            # numbered by run and phase, so that a reused installation still gets a fresh batch
            start = RUN_BASE + next(PHASE_NUMBERS) * 10_000
            import_batch(services, 2000, start, BATCH_GENERATED_AT)
    since = 0
    if worker is not None:
        since = worker.log_size()
        sleep_until_minute(lead)
    threads = [threading.Thread(target=search_loop, args=(n,)) for n in range(clients)]
    threads.append(threading.Thread(target=restore_loop))
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(lead)
    archived = ""
    if job == "cli":
        command = [sys.executable, "-m", "archivist", "archive"]
        command += ["--as-of", AS_OF.date().isoformat(), "--config", str(config_path)]
        archive = subprocess.run(command, capture_output=True, text=True)
        if archive.returncode != 0:
            errors.append(f"archive job: {archive.stderr.strip()}")
        archived = archive.stdout.strip()
    remaining = seconds - (time.perf_counter() - started)
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if worker is not None:  # (the next phase's batch must not join this job)
        archived = f"{worker.wait_for_report(since)} (worker)"
    for e in errors[:5]:
        print("error:", e, file=sys.stderr)
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "errors": len(errors),
        "restores": len(restores),
        "restore_p95": percentile(restores, 95) * 1000,
        "archived": archived,
    }


def memory_kib(pid: int) -> dict[str, int]:
    """Resident memory of a process: all of it (VmRSS) and its anonymous part (RssAnon)."""
    out = {"VmRSS": 0, "RssAnon": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in out:
            out[key] = int(line.split()[1])
    return out


def worker_pids(pid: int) -> list[int]:
    """The server's worker processes (gunicorn forks them from the process we started)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children] or [pid]


def measure_export(port: int, token: str, server_pid: int) -> dict[str, float]:
    """Stream the whole archive as CSV; rows, time, and the largest growth of a worker process.

    Growth is measured per worker process (the export runs in one of them): resident memory,
    and its anonymous part, which excludes pages of memory-mapped index files.
    """
    pids = worker_pids(server_pid)
    before = {pid: memory_kib(pid) for pid in pids}
    peak = {pid: dict(values) for pid, values in before.items()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for pid in pids:
                for key, value in memory_kib(pid).items():
                    peak[pid][key] = max(peak[pid][key], value)

    sampler = threading.Thread(target=sample)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("GET", "/api/v1/export.csv", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    rows = size = 0
    while chunk := response.read(65536):
        rows += chunk.count(b"\r\n")
        size += len(chunk)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "status": response.status,
        "rows": rows - 1,
        "mib": size / 2**20,
        "seconds": elapsed,
        "rss_growth_mib": max(peak[p]["VmRSS"] - before[p]["VmRSS"] for p in pids) / 1024,
        "anon_growth_mib": max(peak[p]["RssAnon"] - before[p]["RssAnon"] for p in pids) / 1024,
    }


def main() -> None:
    """Build (or reuse) an installation, serve it, run the phases, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dir", type=Path, default=None, help="reuse an installation here")
    parser.add_argument("--export-only", action="store_true", help="only measure the export")
    parser.add_argument("--no-export", action="store_true", help="skip the export")
    parser.add_argument("--processes", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--threads", type=int, default=ServerConfig.threads, help="threads per server process"
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per phase"
    )
    parser.add_argument(
        "--job",
        choices=JOBS,
        default="worker",
        help="what archives a batch during each phase: a running worker's scheduled job, an "
        "`archivist archive` process, or nothing",
    )
    parser.add_argument(
        "--no-archive-job", action="store_const", dest="job", const="none", help="--job none"
    )
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="archivist-bench-http-"))
    folder.mkdir(parents=True, exist_ok=True)
    config_path, admin, agent = build(folder, args.records, args.processes, args.threads)
    restore_ids = archived_sample(config_path, args.records, 2000)
    port = free_port()
    worker: WorkerProcess | None = None
    log = (folder / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "archivist",
            "serve",
            "--port",
            str(port),
            "--config",
            str(config_path),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if Client(port, agent).request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for _ in range(3):  # load the shard caches of every worker process
            for query in QUERIES:
                Client(port, agent).request("GET", "/api/v1/search?" + urlencode(query))
        if args.job == "worker" and not args.export_only:
            worker = WorkerProcess(config_path, folder / "worker.log")
            # a worker that has run before: one small batch archived and indexed
            with Services.open(load_config(config_path)) as services:
                import_batch(services, 200, RUN_BASE + 900_000, BATCH_GENERATED_AT)
            worker.wait_for_report(0)
        results = [] if args.export_only else [
            run_phase(
                port, agent, admin, c, args.seconds, config_path, restore_ids, args.job, worker
            )
            for c in args.clients
        ]
        export = None if args.no_export else measure_export(port, admin, server.pid)
    finally:
        if worker is not None:
            worker.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    print(
        f"\n{args.records} archived records, {args.seconds:.0f} s per phase, "
        f"gunicorn, {args.processes} processes of {load_config(config_path).server.threads} "
        f"threads, {len(QUERIES)} queries in the mix, archive job: {args.job}\n"
    )
    print(
        "| clients | requests | req/s | p50 ms | p99 ms | errors | restores | restore p95 ms "
        "| archive job during the phase |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['clients']} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.1f} "
            f"| {r['p99']:.1f} | {r['errors']} | {r['restores']} | {r['restore_p95']:.1f} "
            f"| {r['archived']} |"
        )
    if export is not None:
        print(
            f"\nexport.csv: status {export['status']}, {export['rows']} rows, "
            f"{export['mib']:.1f} MiB in {export['seconds']:.1f} s, "
            f"largest growth of a server process: RSS {export['rss_growth_mib']:.1f} MiB, "
            f"anonymous {export['anon_growth_mib']:.1f} MiB"
        )
    print(f"\ninstallation: {folder}")


if __name__ == "__main__":
    main()
