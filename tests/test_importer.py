"""Import: upsert, per-line errors with line numbers, good lines kept, nothing half-written."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from archivist.active_db import ActiveRecord, find_active
from archivist.importer import MAX_LINE_BYTES, import_lines, read_lines
from archivist.records import MAX_BODY_BYTES


def run_import(services, lines):
    raw = [
        line
        if isinstance(line, bytes)
        else (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)).encode()
        for line in lines
    ]
    return import_lines(raw, services.sessions, services.store.find_archived, services.config.kinds)


def active_ids(services):
    with services.sessions.begin() as session:
        return sorted(session.scalars(select(ActiveRecord.id)))


def test_import_keeps_good_lines_and_reports_each_bad_one(services, make_record):
    good = [make_record(id=f"G{i}") for i in range(3)]
    lines = [
        good[0],
        '{"id": "broken", ',  # 2: malformed JSON
        {k: v for k, v in make_record(id="M").items() if k != "status"},  # 3: missing field
        make_record(id="T", subject=42),  # 4: wrong type
        make_record(id="D", updated_at="2023-02-30T00:00:00Z"),  # 5: bad date
        make_record(id="x/../y"),  # 6: bad id
        make_record(id="..", body="dots"),  # 7: bad id
        good[1],
        make_record(id="BIG", body="x" * (MAX_BODY_BYTES + 1)),  # 9: oversized body
        make_record(id="G0", subject="again"),  # 10: duplicate id
        b"\xff\xfe not utf-8",  # 11: bad bytes
        "",  # blank: ignored
        "[1, 2]",  # 13: not an object
        good[2],
        '{"id": "N", "attributes": {"n": ' + "9" * 5000 + "}}",  # 15: a number too long
        json.dumps(make_record(id="S1", category="x\ud800")),  # 16: a lone surrogate (\u-escaped)
        json.dumps(make_record(id="S2", status="\ud800")),  # 17: the same
    ]
    report = run_import(services, lines)
    assert report.imported == 3
    reasons = {e.line: e.reason for e in report.errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 15, 16, 17]
    assert "more than 4300 digits" in reasons[15]
    assert "invalid Unicode" in reasons[16] and "invalid Unicode" in reasons[17]
    assert "malformed JSON" in reasons[2]
    assert "missing field 'status'" in reasons[3]
    assert "subject must be a string" in reasons[4]
    assert "updated_at is not a date on the calendar" in reasons[5]
    assert "(February 2023 has 28 days)" in reasons[5]
    assert "id must be" in reasons[6] and "id must be" in reasons[7]
    assert "larger than" in reasons[9]
    assert "duplicate id 'G0' (first on line 1)" in reasons[10]
    assert "UTF-8" in reasons[11]
    assert "must be a JSON object" in reasons[13]
    assert active_ids(services) == ["G0", "G1", "G2"]
    with services.sessions.begin() as session:
        assert find_active(session, ["G0"])["G0"].to_json() == good[0]


def test_import_upserts_an_existing_active_record(services, make_record):
    run_import(services, [make_record(id="U1", subject="first")])
    run_import(services, [make_record(id="U1", subject="second")])
    with services.sessions.begin() as session:
        assert find_active(session, ["U1"])["U1"].subject == "second"


def test_import_reads_a_file_that_starts_with_a_byte_order_mark(services, make_record):
    lines = [json.dumps(make_record(id=f"B{i}")).encode() for i in range(2)]
    bom = b"\xef\xbb\xbf"
    report = import_lines([bom + lines[0], lines[1], bom + lines[0]], services.sessions,
                          services.store.find_archived)
    assert report.imported == 2  # the first line's mark is the file's; a later one is not
    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [(3, "malformed JSON")]
    assert active_ids(services) == ["B0", "B1"]


def test_import_refuses_an_id_that_is_archived(services, make_record):
    from archive_store import ArchiveItem
    from archivist.records import parse_record

    record = parse_record(make_record(id="A1"))
    services.store.archive_batch(
        [
            ArchiveItem(
                record.id,
                record.to_json(),
                record.category,
                record.customer_id,
                record.updated,
            )
        ],
        record.updated,
        "test",
    )
    report = run_import(services, [make_record(id="A1"), make_record(id="A2")])
    assert report.imported == 1
    assert "is archived" in report.errors[0].reason
    assert active_ids(services) == ["A2"]


def test_failed_import_writes_nothing(services, make_record):
    lines = [make_record(id=f"F{i}") for i in range(5000)]

    def broken(ids):
        if "F4500" in ids:
            raise RuntimeError("catalog unavailable")
        return set()

    raw = [json.dumps(line).encode() for line in lines]
    with pytest.raises(RuntimeError):
        import_lines(raw, services.sessions, broken)
    assert active_ids(services) == []


def test_an_import_racing_an_archive_run_never_leaves_a_record_in_both_places(
    services, make_record
):
    """The import checks which ids are archived, then writes: an archive batch that moved one
    of them in between would leave it archived and active again, for good."""
    import threading
    from datetime import UTC, datetime

    from indexer.jobs.runs import run_archive_job

    run_import(services, [make_record(id="RACE-1", body="first")])
    checked, archived_meanwhile = threading.Event(), threading.Event()

    def slow_find_archived(ids):
        found = services.store.find_archived(ids)
        checked.set()
        archived_meanwhile.wait(timeout=3)  # (times out with the rows held: the run waits)
        return found

    line = json.dumps(make_record(id="RACE-1", body="second")).encode()
    result = {}
    importer = threading.Thread(target=lambda: result.update(report=import_lines(
        [line], services.sessions, slow_find_archived, services.config.kinds)))
    importer.start()
    assert checked.wait(timeout=10)
    as_of = datetime(2030, 1, 1, tzinfo=UTC)
    runner = threading.Thread(
        target=lambda: result.update(run=run_archive_job(services, as_of))
    )
    runner.start()
    runner.join(timeout=2)
    archived_meanwhile.set()
    importer.join(timeout=60)
    runner.join(timeout=60)

    assert result["report"].imported == 1
    active = find_active_ids(services, ["RACE-1"])
    in_archive = services.store.find_archived(["RACE-1"])
    assert len(active) + len(in_archive) == 1, (active, in_archive)
    if active:  # kept active with the import's text: the run saw the change and left it
        with services.sessions.begin() as session:
            assert find_active(session, ["RACE-1"])["RACE-1"].body == "second"


def find_active_ids(services, ids):
    with services.sessions.begin() as session:
        return set(find_active(session, ids))


NUL_LINES = [
    {"id": "N-good-1"},
    {"id": "N-body", "body": "a\x00b"},
    {"id": "N-subject", "subject": "x\x00"},
    {"id": "N-owner", "owner": "o\x00"},
    {"id": "N-attributes", "attributes": {"note": "kept\x00as JSON"}},
    {"id": "N-good-2"},
]


def check_nul_lines_are_refused_one_by_one(services, make_record) -> None:
    """A NUL in a text field is refused with its line number (PostgreSQL's text cannot hold
    one; every database refuses it alike); the other lines are kept, `attributes` too."""
    lines = [json.dumps(make_record(**fields)) for fields in NUL_LINES]
    report = run_import(services, lines)
    assert report.imported == 3
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, "body holds a NUL character (\\u0000)"),
        (3, "subject holds a NUL character (\\u0000)"),
        (4, "owner holds a NUL character (\\u0000)"),
    ]
    with services.sessions.begin() as session:
        kept = find_active(session, ["N-good-1", "N-attributes", "N-good-2"])
    assert kept["N-attributes"].attributes == {"note": "kept\x00as JSON"}


def test_import_refuses_a_nul_in_a_text_field_line_by_line(services, make_record):
    check_nul_lines_are_refused_one_by_one(services, make_record)


def test_import_refuses_a_key_named_twice_line_by_line(services, make_record):
    good = json.dumps(make_record(id="K1", customer_id="C-1"))
    twice = good[:-1] + ', "customer_id": "C-2"}'  # which customer is meant?
    nested = json.dumps(make_record(id="K3", attributes={"amount": 1})).replace(
        '"amount": 1', '"amount": 1, "amount": 2'
    )
    report = run_import(services, [good.replace("K1", "K0"), twice, nested])
    assert report.imported == 1
    reasons = {e.line: e.reason for e in report.errors}
    assert reasons == {
        2: "malformed JSON: the key 'customer_id' appears twice in one object",
        3: "malformed JSON: the key 'amount' appears twice in one object",
    }
    assert active_ids(services) == ["K0"]


def test_import_refuses_a_number_it_could_not_keep_as_written(services, make_record):
    """Attributes are kept verbatim: a number a double would round, or make 0 or infinite, is
    refused with its line, not stored as another number."""
    def line(record_id, number):
        return json.dumps(make_record(id=record_id, attributes={"n": 0})).replace(
            '"n": 0', f'"n": {number}')

    kept = {"E1": "1.5", "E2": "1E+2", "E3": "0.30000000000000004", "E4": "-2.5e-300",
            "E5": "123456789012345678901234567890"}  # an integer: kept exactly, however long
    refused = {"F1": "3.14159265358979323846", "F2": "12345678901234567890.5",
               "F3": "1.5e-400", "F4": "1e400", "F5": "-1e400"}
    lines = [line(i, n) for i, n in kept.items()] + [line(i, n) for i, n in refused.items()]
    report = run_import(services, lines + ['{"id": "D", "a": ' + "[" * 10_000 + "]" * 10_000 + "}"])
    reasons = {e.line: e.reason for e in report.errors}
    assert "3.14159265358979323846 has more digits than a double keeps" in reasons[6]
    assert "12345678901234567890.5 has more digits" in reasons[7]
    assert "1.5e-400 is too small" in reasons[8]
    assert "1e400 is too large" in reasons[9] and "-1e400 is too large" in reasons[10]
    assert all("write it as a string to keep it exactly" in reasons[n] for n in range(6, 11))
    assert reasons[11].startswith("objects and arrays are nested far more than 64 levels deep")
    assert active_ids(services) == sorted(kept)
    with services.sessions.begin() as session:
        active = find_active(session, list(kept))
    assert [active[i].to_json()["attributes"]["n"] for i in kept] == [
        1.5, 100.0, 0.30000000000000004, -2.5e-300, 123456789012345678901234567890]


def test_import_refuses_a_time_more_precise_than_a_microsecond(services, make_record):
    lines = [
        make_record(id="N1", created_at="2023-01-02T03:04:05.123456789Z"),
        make_record(id="N2", updated_at="2023-01-02T03:04:05.1234560000+01:00"),
        make_record(id="N3", created_at="2023-01-02 03:04:05Z"),  # a space for the T
        make_record(id="N4", created_at="2023-01-02T03:04:05 +01:00"),  # read as before
    ]
    report = run_import(services, lines)
    assert [(e.line, e.reason) for e in report.errors] == [
        (1, "created_at is more precise than a microsecond (at most 6 digits after the "
            "seconds): '2023-01-02T03:04:05.123456789Z'"),
        (3, "created_at needs a 'T' between the date and the time: '2023-01-02 03:04:05Z'"),
    ]
    with services.sessions.begin() as session:
        stored = find_active(session, ["N2"])["N2"].to_json()
    assert stored["updated_at"] == "2023-01-02T02:04:05.123456Z"  # zeros past the sixth: kept
    with services.sessions.begin() as session:
        assert find_active(session, ["N4"])["N4"].to_json()["created_at"] == "2023-01-02T02:04:05Z"


def test_a_line_too_long_is_refused_without_being_read_whole(services, make_record, tmp_path):
    path = tmp_path / "records.jsonl"
    with path.open("wb") as f:
        f.write(json.dumps(make_record(id="L1")).encode() + b"\n")
        f.write(b'{"id": "L2", "body": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        f.write(json.dumps(make_record(id="L3")).encode())  # no line break at the end

    with path.open("rb") as f:
        longest = max(len(line or b"") for line in read_lines(f, max_bytes=1000))
    assert longest <= 1001  # the long line's pieces are dropped, never joined
    with path.open("rb") as f:
        report = import_lines(read_lines(f), services.sessions, services.store.find_archived)

    assert report.imported == 2
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, f"longer than {MAX_LINE_BYTES // 2**20} MiB: not a record")
    ]
    assert active_ids(services) == ["L1", "L3"]


def test_read_lines_keeps_a_line_of_exactly_the_limit(tmp_path):
    path = tmp_path / "lines"
    path.write_bytes(b"a" * 10 + b"\n" + b"b" * 11 + b"\n" + b"c" * 10)
    with path.open("rb") as f:
        assert list(read_lines(f, max_bytes=10)) == [b"a" * 10 + b"\n", None, b"c" * 10]


def test_import_reports_bad_lines_while_it_reads_on(services, make_record):
    """Errors come in line order, yet without waiting for the end of a long file of bad lines:
    at once when no good line before them waits to be checked, else within a batch's span."""
    errors = []

    def lines():
        yield b"not json"
        assert [e.line for e in errors] == [1]  # said before line 2 is read
        yield json.dumps(make_record(id="OK-1")).encode()  # waits to be checked
        for number in range(3, 2100):
            if number == 2050:
                assert errors[1].line == 3  # within the span of a batch
            yield b"{bad"

    report = import_lines(lines(), services.sessions, services.store.find_archived,
                          on_error=errors.append)

    assert report.imported == 1 and report.rejected == 2098
    assert [e.line for e in errors] == [1, *range(3, 2100)]
