"""The whole Whoosh schema in one place."""

from __future__ import annotations

from whoosh import columns, fields

from indexer.analysis import ArchivePositions, ArchiveTokenizer

TEXT_FIELDS = ("subject", "body")
EXACT_FIELDS = ("id", "kind", "category", "customer_id", "owner")
DATE_FIELDS = ("created_at", "updated_at", "archived_at")


def date_column(name: str) -> str:
    """Return the name of the column holding a date field as epoch microseconds.

    :param name: ``created_at``, ``updated_at`` or ``archived_at``.
    """
    return name.replace("_at", "_us")


def build_text_field() -> fields.FieldType:
    """Build the full-text field type shared by ``subject`` and ``body``."""
    analyzer = ArchiveTokenizer()
    # Chinese runs and identifiers analyse to several terms in query mode; a phrase is exact.
    return fields.FieldType(
        format=ArchivePositions(),
        analyzer=analyzer,
        scorable=True,
        stored=False,
        multitoken_query="phrase",
    )


def build_schema() -> fields.Schema:
    """Build the schema of one shard.

    ``id`` is unique; the exact fields are untokenized terms; ``id``, ``kind`` and ``category`` also
    have columns (per-document values read in bulk for filters, facets and tie-breaking); dates are
    64-bit integer columns of epoch microseconds (range filters and sorting run on the column
    values in memory, far faster than Whoosh DATETIME ranges); ``stored`` holds the hit fields.
    """
    return fields.Schema(
        id=fields.ID(unique=True, sortable=True),
        kind=fields.ID(sortable=True),
        category=fields.ID(sortable=True),
        customer_id=fields.ID(),
        owner=fields.ID(),
        subject=build_text_field(),
        body=build_text_field(),
        created_us=fields.COLUMN(columns.NumericColumn("q", default=0)),
        updated_us=fields.COLUMN(columns.NumericColumn("q", default=0)),
        archived_us=fields.COLUMN(columns.NumericColumn("q", default=0)),
        stored=fields.STORED(),
    )
