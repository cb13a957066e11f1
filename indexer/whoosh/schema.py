"""The whole Whoosh schema in one place."""

from __future__ import annotations

from whoosh import columns, fields, formats

from indexer.whoosh.analysis import ArchivePositions, ArchiveTokenizer, PairTokenizer

TEXT_FIELDS = ("subject", "body")
EXACT_FIELDS = ("id", "kind", "category", "customer_id", "owner", "parent_id", "process_id")


def pair_field(name: str) -> str:
    """Return the name of the word-pair field beside a text field (see ``analysis.pair_counts``).

    :param name: ``subject`` or ``body``.
    """
    return f"{name}_pairs"


PAIR_FIELDS = tuple(pair_field(name) for name in TEXT_FIELDS)


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


def build_pair_field() -> fields.FieldType:
    """Build the word-pair field type: pair terms with their frequency, not scored on their own."""
    return fields.FieldType(
        format=formats.Frequency(), analyzer=PairTokenizer(), scorable=False, stored=False
    )


def build_schema() -> fields.Schema:
    """Build the schema of one shard.

    ``id`` is unique; the exact fields are untokenized terms; ``id``, ``kind`` and ``category`` also
    have columns (per-document values read in bulk for filters, facets and tie-breaking); each text
    field has a word-pair field beside it, for phrases; dates are
    64-bit integer columns of epoch microseconds (range filters and sorting run on the column
    values in memory, far faster than Whoosh DATETIME ranges); ``stored`` holds the hit fields.
    """
    return fields.Schema(
        id=fields.ID(unique=True, sortable=True),
        kind=fields.ID(sortable=True),
        category=fields.ID(sortable=True),
        customer_id=fields.ID(),
        owner=fields.ID(),
        parent_id=fields.ID(),
        process_id=fields.ID(),  # the root of the record's process
        subject=build_text_field(),
        body=build_text_field(),
        subject_pairs=build_pair_field(),
        body_pairs=build_pair_field(),
        created_us=fields.COLUMN(columns.NumericColumn("q", default=0)),
        updated_us=fields.COLUMN(columns.NumericColumn("q", default=0)),
        archived_us=fields.COLUMN(columns.NumericColumn("q", default=0)),
        stored=fields.STORED(),
    )
