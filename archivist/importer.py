"""Import JSON Lines into the active database: per-line errors, good lines kept, one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from archivist.active_db import upsert_records
from archivist.errors import InvalidRecord
from archivist.records import Record, parse_record

BATCH_SIZE = 2000


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


def import_lines(
    lines: Iterable[bytes],
    sessions: sessionmaker[Session],
    find_archived: Callable[[Collection[str]], set[str]],
    kinds: Collection[str] | None = None,
    on_error: Callable[[LineError], None] | None = None,
) -> ImportReport:
    """Upsert every valid line into the active database in one transaction.

    A bad line is reported and skipped; if anything unexpected fails, nothing is written.

    :param lines: raw lines of a JSON Lines file (bytes, so bad UTF-8 is reported per line).
    :param find_archived: returns which of the given ids are archived; those are refused, since
        an id lives in exactly one place.
    :param on_error: called with each rejected line as it is found.
    """
    report = ImportReport()
    seen: dict[str, int] = {}
    batch: list[tuple[int, Record]] = []

    def reject(number: int, reason: str) -> None:
        error = LineError(number, reason)
        report.errors.append(error)
        if on_error is not None:
            on_error(error)

    def flush(session: Session) -> None:
        archived = find_archived([record.id for _, record in batch])
        keep = []
        for number, record in batch:
            if record.id in archived:
                reject(number, f"id {record.id!r} is archived; restore it before changing it")
                del seen[record.id]
            else:
                keep.append(record)
        upsert_records(session, keep)
        report.imported += len(keep)
        batch.clear()

    with sessions.begin() as session:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = parse_record(json.loads(raw.decode("utf-8")), kinds)
            except UnicodeDecodeError as e:
                reject(number, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                reject(number, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            except RecursionError:
                reject(number, "malformed JSON: nested too deeply")
                continue
            except InvalidRecord as e:
                reject(number, str(e))
                continue
            if record.id in seen:
                reject(number, f"duplicate id {record.id!r} (first on line {seen[record.id]})")
                continue
            seen[record.id] = number
            batch.append((number, record))
            if len(batch) >= BATCH_SIZE:
                flush(session)
        flush(session)
    return report
