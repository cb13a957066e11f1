"""Import JSON Lines into the active database: per-line errors, good lines kept, one transaction."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from archivist.active_db import find_links, lock_active, take_turns, upsert_records
from archivist.errors import InvalidRecord
from archivist.json_objects import DuplicateKey, InexactNumber, exact_float, unique_keys
from archivist.records import MAX_ATTRIBUTE_DEPTH, Record, parse_record

BATCH_SIZE = 2000
# Imports take turns: each checks its lines' parents against what is committed, so two at once
# could each accept one half of a cycle (A under B in one file, B under A in the other).
_IMPORT_TURN_KEY = 0x4152_4348_494D_504F
# Far above the longest valid line (a 1 MiB body and 4 MiB of attributes, even written with
# \u escapes), so that a file that is not JSON Lines is refused without reading a line whole.
MAX_LINE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class LineError:
    """Why one input line was rejected."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did."""

    imported: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        """How many lines were rejected."""
        return len(self.errors)


def read_lines(file: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of a binary file, None for one longer than `max_bytes`: its rest is skipped
    a piece at a time, never held in memory whole.

    :param file: a file opened for reading bytes
    :param max_bytes: the longest line given back, its line break not counted
    """
    while line := file.readline(max_bytes + 1):
        if len(line) > max_bytes and line[-1:] != b"\n":
            while line and line[-1:] != b"\n":
                line = file.readline(2**20)
            yield None
        else:
            yield line


def import_lines(
    lines: Iterable[bytes | None],
    sessions: sessionmaker[Session],
    find_archived: Callable[[Collection[str]], set[str]],
    kinds: Collection[str] | None = None,
    on_error: Callable[[LineError], None] | None = None,
    find_archived_parents: Callable[[Collection[str]], dict[str, str | None]] | None = None,
) -> ImportReport:
    """Upsert every valid line into the active database in one transaction.

    A bad line is reported and skipped; if anything unexpected fails, nothing is written.

    :param lines: raw lines of a JSON Lines file (bytes, so bad UTF-8 is reported per line);
        None for a line too long to read (see `read_lines`).
    :param find_archived: returns which of the given ids are archived; those are refused, since
        an id lives in exactly one place.
    :param on_error: called with each rejected line, in line order, once the batch of lines
        it is in has been checked.
    :param find_archived_parents: the `parent_id` of those of the given ids that are archived
        (or restored), so that a line closing a cycle through the archive is refused too.
    """
    report = ImportReport()
    seen: dict[str, int] = {}
    batch: list[tuple[int, Record]] = []
    unreported: list[LineError] = []  # until the batch they are in is checked: in line order

    def reject(number: int, reason: str) -> None:
        unreported.append(LineError(number, reason))
        if not batch:  # no line before it still to check: say so now
            report_errors()

    def report_errors() -> None:
        unreported.sort(key=lambda error: error.line)
        report.errors.extend(unreported)
        if on_error is not None:
            for error in unreported:
                on_error(error)
        unreported.clear()

    def flush(session: Session) -> None:
        # Rows held first: an archive batch that moved one of them after the check below, and
        # before the upsert, would leave the record archived and active again.
        lock_active(session, [record.id for _, record in batch])
        archived = find_archived([record.id for _, record in batch])
        keep = []
        for number, record in batch:
            if record.id in archived:
                reject(number, f"id {record.id!r} is archived; restore it before changing it")
                del seen[record.id]
            else:
                keep.append((number, record))
        parents = _ParentLookup(session, find_archived_parents)
        parents.prefetch(record.parent_id for _, record in keep)
        accepted = []
        for number, record in keep:
            if record.parent_id is not None and parents.reaches(record.parent_id, record.id):
                reject(number, f"parent_id {record.parent_id!r} would close a cycle: "
                       f"{record.id!r} is already one of its ancestors")
                del seen[record.id]
                continue
            parents.set(record.id, record.parent_id)
            accepted.append(record)
        upsert_records(session, accepted)
        report.imported += len(accepted)
        batch.clear()
        report_errors()

    with sessions.begin() as session:
        take_turns(session, _IMPORT_TURN_KEY)
        for number, raw in enumerate(lines, start=1):
            if batch and number - batch[0][0] >= BATCH_SIZE:
                flush(session)  # a batch spans so many lines at most: errors wait no longer
            if raw is None:
                reject(number, f"longer than {MAX_LINE_BYTES // 2**20} MiB: not a record")
                continue
            if number == 1 and raw.startswith(codecs.BOM_UTF8):  # files saved on Windows
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            try:
                value = json.loads(
                    raw.decode("utf-8"), object_pairs_hook=unique_keys, parse_float=exact_float
                )
                record = parse_record(value, kinds)
            except UnicodeDecodeError as e:
                reject(number, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                reject(number, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            except DuplicateKey as e:
                reject(number, f"malformed JSON: {e}")
                continue
            except RecursionError:
                reject(number, f"objects and arrays are nested far more than {MAX_ATTRIBUTE_DEPTH} "
                       "levels deep (one inside another)")
                continue
            except InexactNumber as e:
                reject(number, str(e))
                continue
            except ValueError:  # after JSONDecodeError and DuplicateKey: an integer too long
                reject(number, "a number has more than 4300 digits (too long to read)")
                continue
            except InvalidRecord as e:
                reject(number, str(e))
                continue
            if record.id in seen and batch and seen[record.id] >= batch[0][0]:
                flush(session)  # the earlier line may yet be refused: then this one stands
            if record.id in seen:
                reject(number, f"duplicate id {record.id!r} (first on line {seen[record.id]})")
                continue
            seen[record.id] = number
            batch.append((number, record))
            if len(batch) >= BATCH_SIZE:
                flush(session)
        flush(session)
    return report


class _ParentLookup:
    """`parent_id`s as they stand during an import: this file's accepted lines over what the
    active database and the archive already hold, fetched a tree level at a time."""

    def __init__(
        self,
        session: Session,
        find_archived_parents: Callable[[Collection[str]], dict[str, str | None]] | None,
    ) -> None:
        self._session = session
        self._archived = find_archived_parents
        self._parent: dict[str, str | None] = {}

    def prefetch(self, ids: Iterable[str | None]) -> None:
        """Fetch the parent chains above these ids (None and unknown ids end a chain)."""
        frontier = {i for i in ids if i is not None and i not in self._parent}
        while frontier:
            found: dict[str, str | None] = {
                i: link.parent_id for i, link in find_links(self._session, frontier).items()
            }
            if self._archived is not None:
                rest = frontier - found.keys()
                if rest:
                    found.update(self._archived(rest))
            for record_id in frontier:
                self._parent[record_id] = found.get(record_id)
            frontier = {
                p for p in found.values() if p is not None and p not in self._parent
            }

    def set(self, record_id: str, parent_id: str | None) -> None:
        """An accepted line's parent, which later lines see."""
        self._parent[record_id] = parent_id
        if parent_id is not None and parent_id not in self._parent:
            self.prefetch([parent_id])

    def reaches(self, start: str, target: str) -> bool:
        """True when walking up from `start` arrives at `target`."""
        current: str | None = start
        seen: set[str] = set()
        while current is not None and current not in seen:
            if current == target:
                return True
            seen.add(current)
            if current not in self._parent:
                self.prefetch([current])
            current = self._parent.get(current)
        return False
