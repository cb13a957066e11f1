"""The record format: validation, canonical timestamps, the JSON value given back."""

from __future__ import annotations

from typing import Any

import pytest

from archivist.active_db import ActiveRecord
from archivist.errors import InvalidRecord
from archivist.records import (
    FIELDS,
    MAX_ATTRIBUTES_BYTES,
    MAX_BODY_BYTES,
    MAX_SUBJECT_BYTES,
    RECORD_FIELDS,
    Record,
    canonical_timestamp,
    parse_record,
)


def test_parse_record_keeps_every_field_and_attributes_verbatim(make_record):
    raw = make_record(
        attributes={"tags": ["vip", "b2b"], "nested": {"n": 1.5, "none": None}},
        body="退款 requested\nline two",
    )
    assert parse_record(raw).to_json() == raw


def test_parse_record_without_attributes_gives_none_back(make_record):
    raw = make_record()
    assert "attributes" not in parse_record(raw).to_json()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2023-05-01T10:00:00Z", "2023-05-01T10:00:00Z"),
        ("2023-05-01T10:00:00+08:00", "2023-05-01T02:00:00Z"),
        ("2023-05-01T10:00:00.25-01:00", "2023-05-01T11:00:00.250000Z"),
        ("2023-05-01T10:00:00.000Z", "2023-05-01T10:00:00.000000Z"),
        ("2024-01-01T00:30:00+01:00", "2023-12-31T23:30:00Z"),
        ("2023-05-01t10:00:00z", "2023-05-01T10:00:00Z"),  # RFC 3339 allows lowercase
    ],
)
def test_timestamps_are_stored_in_utc(given, expected):
    assert canonical_timestamp(given) == expected


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"id": "a/b"}, "id must be"),
        ({"id": ".."}, "id must be"),  # (`a..b` is an id: the contract's characters)
        ({"id": "."}, "id must be"),
        ({"id": ""}, "id must be"),
        ({"id": "x" * 129}, "id must be"),
        ({"id": 5}, "id must be a string"),
        ({"kind": "letter"}, "kind must be one of"),
        # the active database's columns (and the search filters) take no longer values
        ({"customer_id": "C" * 257}, "customer_id is longer than 256 characters"),
        ({"category": "c" * 129}, "category is longer than 128 characters"),
        ({"owner": "o" * 257}, "owner is longer than 256 characters"),
        ({"status": "s" * 65}, "status is longer than 64 characters"),
        ({"category": ""}, "category must not be empty"),
        ({"customer_id": 12}, "customer_id must be a string or null"),
        ({"subject": None}, "subject must be a string"),
        ({"created_at": "2023-05-01"}, "created_at needs a time"),
        ({"updated_at": "2023-05-01T10:00:00"}, "updated_at needs a time"),
        ({"updated_at": "yesterday"}, "updated_at is not an ISO 8601"),
        ({"updated_at": "2023-02-30T10:00:00Z"},
         r"updated_at is not a date on the calendar: '2023-02-30T10:00:00Z' "
         r"\(February 2023 has 28 days\)"),
        ({"created_at": "2024-13-01T10:00:00Z"}, r"created_at is not a date on the calendar: "
         r"'2024-13-01T10:00:00Z' \(months are 01 to 12\)"),
        ({"updated_at": "2023-02-28T25:00:00Z"}, r"updated_at is not a time on the clock: "
         r"'2023-02-28T25:00:00Z' \(hours are 00 to 23\)"),
        ({"updated_at": "2016-12-31T23:59:60Z"}, r"\(seconds are 00 to 59: a leap second"),
        ({"attributes": [1, 2]}, "attributes must be a JSON object"),
        ({"attributes": None}, "attributes must be a JSON object"),
        ({"colour": "red"}, "unknown field 'colour'"),
        ({"body": "x" * (MAX_BODY_BYTES + 1)}, "body is larger than"),
        ({"body": "退" * (MAX_BODY_BYTES // 3 + 1)}, "body is larger than"),
        ({"subject": "s" * (MAX_SUBJECT_BYTES + 1)}, "subject is larger than 65536 bytes"),
        ({"subject": "退" * (MAX_SUBJECT_BYTES // 3 + 1)}, "subject is larger than"),
        ({"attributes": {"blob": "a" * MAX_ATTRIBUTES_BYTES}},
         "attributes are larger than 4194304 bytes as JSON"),
    ],
)
def test_parse_record_rejects_with_a_reason(make_record, overrides: dict[str, Any], reason: str):
    with pytest.raises(InvalidRecord, match=reason):
        parse_record(make_record(**overrides), kinds=("communication", "note"))


@pytest.mark.parametrize("field", ["id", "kind", "body", "status", "created_at", "owner"])
def test_parse_record_names_a_missing_field(make_record, field):
    raw = make_record()
    del raw[field]
    with pytest.raises(InvalidRecord, match=f"missing field '{field}'"):
        parse_record(raw)


def test_body_of_exactly_one_mebibyte_is_accepted(make_record):
    assert len(parse_record(make_record(body="x" * MAX_BODY_BYTES)).body) == MAX_BODY_BYTES


def test_subject_and_attributes_at_their_limits_are_accepted(make_record):
    attributes = {"blob": "a" * (MAX_ATTRIBUTES_BYTES - len('{"blob": ""}'))}
    record = parse_record(make_record(subject="s" * MAX_SUBJECT_BYTES, attributes=attributes))
    assert len(record.subject) == MAX_SUBJECT_BYTES and record.attributes == attributes


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"body": "bad \ud800 surrogate"}, "lone surrogates"),
        ({"attributes": {"x": "\udfff"}}, "lone surrogates"),
        ({"attributes": {"x": float("nan")}}, "NaN or Infinity"),
    ],
)
def test_text_that_cannot_be_stored_is_rejected(make_record, overrides, reason):
    with pytest.raises(InvalidRecord, match=reason):
        parse_record(make_record(**overrides))


def test_early_years_keep_four_digits():
    assert canonical_timestamp("0005-03-01T00:00:00Z") == "0005-03-01T00:00:00Z"


def test_record_fields_are_the_one_list_the_model_and_active_table_follow() -> None:
    assert FIELDS == (*RECORD_FIELDS, "attributes", "parent_id")
    # (and whether `parent_id` was given at all: a record imported without it is given back so)
    assert tuple(Record.__dataclass_fields__) == (*FIELDS, "has_parent_id")
    assert {c.name for c in ActiveRecord.__table__.columns} >= set(FIELDS)
    record = parse_record(
        {
            "id": "F1", "kind": "note", "category": "support", "customer_id": None,
            "owner": None, "subject": "", "body": "b", "status": "open",
            "created_at": "2021-01-01T00:00:00Z", "updated_at": "2021-01-01T00:00:00Z",
        }
    )
    assert list(record.to_json()) == list(RECORD_FIELDS)


def test_every_id_of_the_contract_s_characters_is_an_id(
    client, admin_headers, archived, make_record
):
    """`[A-Za-z0-9._:-]{1,128}`: dots in a row too, and such a record can be read by URL."""
    from archivist.records import parse_record

    assert parse_record(make_record(id="INV..2024:a.b")).id == "INV..2024:a.b"
    archived(make_record(id="case..7", body="dots in a row"))
    response = client.get("/api/v1/records/case..7", headers=admin_headers)
    assert response.status_code == 200 and response.json["record"]["id"] == "case..7"
