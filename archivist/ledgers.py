"""Append-only ledgers of JSON lines kept beside the archive key, outside every backup.

What is done after a backup was taken must stay done once it is recovered: erasures (see
`indexer.jobs.erasure`) and token revocations (see `archivist.tokens`) are written here first,
and applied again by `backup recover`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Append one entry as a line and fsync it (mode 0600): written whole or not at all.

    :param path: the ledger file
    :param entry: ids and hashes only, never content
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(entry, sort_keys=True).encode("utf-8") + b"\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a crash: end it
            line = b"\n" + line
        try:
            written = 0
            while written < len(line):  # a full disk may take part of it: not a line then
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # no torn line: the caller fails before it acts
            raise
    finally:
        os.close(fd)


def create_ledger(path: Path) -> bool:
    """Create the ledger, empty (mode 0600), if it is missing; True if it was created. An
    existing ledger is left as it is.

    :param path: the ledger file
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of the ledger, oldest first (none if there is no ledger); a line torn by a
    crash or a full disk, before the file was fsynced, is skipped.

    :param path: the ledger file
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            log.warning("%s: line %d is not a whole entry; skipped", path, number)
    return entries
