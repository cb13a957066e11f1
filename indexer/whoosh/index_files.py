"""A file-level check of the index for /healthz: is every file a search needs there and whole.

A search process keeps the segments it opened, so a file deleted or damaged under it goes
unnoticed until the next process starts (and then every search fails or finds nothing). This
check reads the files themselves, as a new process would: CURRENT, the generation's META, each
shard's table of contents (`.toc`) and the directory of each segment file (`.seg`). It does not
read every posting: a flipped bit inside a segment is for `archivist index --rebuild` to mend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from whoosh.filedb.compound import CompoundStorage
from whoosh.filedb.filestore import FileStorage, RamStorage
from whoosh.index import TOC

from indexer.errors import IndexUnavailable
from indexer.whoosh.index import _GEN_RE, _SHARD_RE, shard_lost_toc

_INDEX_NAME = "MAIN"  # Whoosh's default index name, used by every shard
_REBUILD = "archivist index --rebuild makes it again from the archive"


def check_index_files(directory: Path) -> None:
    """Raise IndexUnavailable naming the first missing or damaged index file.

    :param directory: the index folder (the one holding CURRENT).
    """
    try:
        _check(directory)
    except IndexUnavailable:
        # An index change may have replaced a table of contents and removed the segments of
        # the old one while they were being checked: look once more before saying so.
        _check(directory)


def _check(directory: Path) -> None:
    current = directory / "CURRENT"
    try:
        name = current.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise IndexUnavailable(f"the index's CURRENT file is missing; {_REBUILD}") from None
    except (OSError, UnicodeError) as e:
        raise IndexUnavailable(f"the index's CURRENT file is damaged ({e}); {_REBUILD}") from None
    gen = directory / name
    if not _GEN_RE.match(name) or not gen.is_dir():
        raise IndexUnavailable(
            f"the index's CURRENT file names {name[:40]!r}, not a generation of the index; "
            f"{_REBUILD}"
        )
    meta_path = gen / "META"
    try:
        pattern = _SHARD_RE[json.loads(meta_path.read_text(encoding="utf-8"))["shard_period"]]
    except FileNotFoundError:
        raise IndexUnavailable(f"the index's {name}/META file is missing; {_REBUILD}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexUnavailable(
            f"the index's {name}/META file is damaged ({type(e).__name__}); {_REBUILD}"
        ) from None
    for shard in sorted(p for p in gen.iterdir() if pattern.match(p.name)):
        _check_shard(shard, f"{name}/{shard.name}")


def _check_shard(path: Path, label: str) -> None:
    files = os.listdir(path)
    tocs = [f for f in files if f.startswith(f"_{_INDEX_NAME}_") and f.endswith(".toc")]
    if not tocs:
        if shard_lost_toc(path):
            raise IndexUnavailable(f"index shard {label} has lost its table of contents (.toc)")
        return  # a shard being created: its first commit writes the table of contents
    storage = FileStorage(str(path))
    # Read from a copy in memory: Whoosh leaves the file open when it fails to read it.
    latest = max(tocs, key=lambda f: int(f.removeprefix(f"_{_INDEX_NAME}_").removesuffix(".toc")))
    copy = RamStorage()
    try:
        with copy.create_file(latest) as out:
            out.write((path / latest).read_bytes())
        toc = TOC.read(copy, _INDEX_NAME)
    except Exception as e:  # Whoosh unpickles the table of contents: any error is damage
        raise IndexUnavailable(
            f"index shard {label}: the table of contents is damaged ({type(e).__name__}); "
            f"{_REBUILD}"
        ) from None
    for segment in toc.segments:
        filename = segment.make_filename(".seg")
        if not (path / filename).is_file():
            raise IndexUnavailable(f"index shard {label}: segment file {filename} is missing")
        if segment.is_compound():
            dbfile = storage.open_file(filename)
            try:
                CompoundStorage(dbfile, use_mmap=False).close()
            except Exception as e:  # its directory (at the end of the file) does not read back
                dbfile.close()
                raise IndexUnavailable(
                    f"index shard {label}: segment file {filename} is damaged "
                    f"({type(e).__name__}); {_REBUILD}"
                ) from None
