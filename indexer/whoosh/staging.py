"""Staged records: segments written beside a generation's shards, not yet part of any."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whoosh import index as windex
from whoosh.reading import SegmentReader

STAGED_DIR = "_staged"  # folder of a generation where stage() writes


@dataclass
class StagedRecords:
    """Segments written by :meth:`SearchIndex.stage`, not yet part of any shard."""

    gen: Path
    root: Path
    shards: dict[str, list[str]]  # shard name -> the record ids staged for it


def delete_unkept(ix: windex.Index, segment: Any, keep: Collection[str]) -> int:
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


def remove_abandoned_stages(root: Path) -> None:
    """Remove staging folders of processes that are gone (a crash between stage and attach)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def remove_stage(folder: Path) -> None:
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
