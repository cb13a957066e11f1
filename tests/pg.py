"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, unix socket only."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_pg_bin() -> Path | None:
    """The folder of PostgreSQL's server programs, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def run_postgres() -> Iterator[str]:
    """Start a private PostgreSQL server; yields a SQLAlchemy URL of an empty database."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise RuntimeError("PostgreSQL server programs not found (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="archivist-pg-"))
    data = folder / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    run = lambda *args: subprocess.run([*as_postgres, *args], check=True,  # noqa: E731
                                       capture_output=True, timeout=120)
    run(str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
    options = f"-c listen_addresses='' -k {folder} -c fsync=off -c full_page_writes=off"
    run(str(pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
        str(folder / "log"), "start")
    try:
        run(str(pg_bin / "createdb"), "-h", str(folder), "-U", "postgres", "archivist")
        yield f"postgresql+psycopg://postgres@/archivist?host={folder}"
    finally:
        run(str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
