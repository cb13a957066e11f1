"""A record as a Whoosh document and back: its fields, its shard, and a hit read from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from archivist.records import format_utc
from indexer.search.dates import parse_timestamp, to_micros
from indexer.search.types import SearchHit
from indexer.whoosh.query import CompiledQuery
from indexer.whoosh.shards import ShardView
from indexer.whoosh.snippets import make_long_snippet, make_snippet, plain_snippet

SNIPPET_SOURCE_CHARS = 10_000


def shard_key(created_at: datetime, period: str) -> str:
    """Return the shard name of a ``created_at`` time.

    :param created_at: an aware datetime.
    :param period: ``year`` or ``month``.
    """
    created_at = created_at.astimezone(UTC)
    if period == "year":
        return f"{created_at.year:04d}"
    return f"{created_at.year:04d}-{created_at.month:02d}"


def shard_bounds(name: str) -> tuple[int, int]:
    """Return the first and last microsecond (epoch) of a shard's period.

    :param name: the shard name, ``2023`` or ``2023-05``.
    """
    if len(name) == 4:
        y, m, months = int(name), 1, 12
    else:
        y, m, months = int(name[:4]), int(name[5:7]), 1
    lo = datetime(y, m, 1, tzinfo=UTC)
    # The next period's start does not exist after December 9999 (datetime.max is that
    # period's last microsecond), so the last microsecond is counted from the first.
    following = (y * 12 + m - 1) + months
    if following // 12 > 9999:
        return to_micros(lo), to_micros(datetime.max.replace(tzinfo=UTC))
    hi = datetime(following // 12, following % 12 + 1, 1, tzinfo=UTC)
    return to_micros(lo), to_micros(hi) - 1


def utc_text(value: str) -> str:
    """Return a record timestamp in the contract's UTC format (unchanged when already so)."""
    if value.endswith("Z"):
        return value
    return format_utc(parse_timestamp(value))


def build_document(
    record: dict[str, Any], archived_at: datetime, store_text: bool = True
) -> dict[str, Any]:
    """Turn a record and its archive time into the field values of one Whoosh document.

    :param record: the record as imported (contract JSON object), with the root of its process
        as `process_id` when the indexer knows it (a record never carries that field itself);
        without it the record is taken as its own root.
    :param archived_at: when it was archived (aware).
    :param store_text: keep the subject and the start of the body as stored fields; False
        stores None for both, and hits read them from the encrypted archive store instead.
    """
    created = utc_text(record["created_at"])
    updated = utc_text(record["updated_at"])
    archived = format_utc(archived_at)
    body = record.get("body") or ""
    subject = record.get("subject") or ""
    process_id = record.get("process_id") or record["id"]
    doc: dict[str, Any] = {
        "id": record["id"],
        "kind": record["kind"],
        "category": record["category"],
        "subject": subject,
        "body": body,
        "subject_pairs": subject,
        "body_pairs": body,
        "created_us": to_micros(parse_timestamp(created)),
        "updated_us": to_micros(parse_timestamp(updated)),
        "archived_us": to_micros(archived_at),
        "stored": (
            record["id"],
            record["kind"],
            record["category"],
            record.get("customer_id"),
            record.get("owner"),
            subject if store_text else None,
            record.get("status") or "",
            created,
            updated,
            archived,
            body[:SNIPPET_SOURCE_CHARS] if store_text else None,
            record.get("parent_id"),
            process_id,
        ),
    }
    if record.get("customer_id") is not None:
        doc["customer_id"] = record["customer_id"]
    if record.get("owner") is not None:
        doc["owner"] = record["owner"]
    if record.get("parent_id") is not None:
        doc["parent_id"] = record["parent_id"]
    doc["process_id"] = process_id
    return doc


def record_texts(records: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """Yield the subject and body of records with their owner, the customer or else the record
    (for choosing pair terms)."""
    for record in records:
        owner = str(record.get("customer_id") or record.get("id") or "")
        yield owner, record.get("subject") or ""
        yield owner, record.get("body") or ""


def record_shard(record: dict[str, Any], period: str) -> str:
    """Return the shard a record belongs in (by its ``created_at``), parsing only when needed."""
    created = record["created_at"]
    if created.endswith("Z") and len(created) >= 10:
        return created[:4] if period == "year" else created[:7]
    return shard_key(parse_timestamp(created), period)


def load_hit(
    view: ShardView,
    docnum: int,
    score: float,
    compiled: CompiledQuery,
    snippet: bool = True,
    text_source: Callable[[str], tuple[str, str] | None] | None = None,
) -> SearchHit:
    """Read one hit from a document's stored fields, with a snippet of what ``compiled`` matched.

    :param text_source: record id -> (subject, body), for documents that do not store their
        text (see build_document's ``store_text``).
    """
    stored = view.cache.searcher.stored_fields(docnum)["stored"]
    (rid, kind, category, customer_id, owner, subject, status, created, updated, archived, body) = (
        stored[:11]
    )
    if subject is None:  # the text is in the archive store only: one read of the record
        texts = text_source(rid) if text_source is not None else None
        subject, body = texts if texts is not None else ("", "")
    # documents indexed before processes existed store 11 values: no parent, their own root
    parent_id, process_id = stored[11:13] if len(stored) >= 13 else (None, rid)
    text = ""
    if snippet:
        text = (
            make_long_snippet(body, "body", compiled, SNIPPET_SOURCE_CHARS)
            or make_snippet(subject, "subject", compiled)
            or plain_snippet(body)
        )
    return SearchHit(
        id=rid,
        kind=kind,
        category=category,
        customer_id=customer_id,
        owner=owner,
        subject=subject,
        status=status,
        created_at=created,
        updated_at=updated,
        archived_at=archived,
        parent_id=parent_id,
        process_id=process_id,
        score=round(score, 6),
        snippet=text,
    )
