"""Archive from the CRM's own tables and restore into them, on a real PostgreSQL server.

The schema is the README's worked example (docs/crm-example/schema.sql and mapping.toml):
accounts, cases with a parent case, case_messages and notes referencing cases ON DELETE RESTRICT,
attachments (not mapped) referencing messages, a trigger stamping and logging every case write.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from archivist.active_db import utcnow
from archivist.config import load_config
from archivist.crm_ledger import JobRunBlock
from archivist.crm_rows import count_customer_rows, insert_statement, record_to_row, text_columns
from archivist.errors import ConfigError
from archivist.holds import add_hold
from indexer.errors import AlreadyActive, RestoreRefused
from indexer.jobs.crm_restore import restore_crm_process
from indexer.jobs.erasure import OnHold, erase_records
from indexer.jobs.runs import run_archive_job
from indexer.jobs.verification import verify_all
from indexer.search import SearchQuery
from indexer.services import Services
from tests.pg import find_pg_bin, run_postgres

if find_pg_bin() is None and not os.environ.get("ARCHIVIST_REQUIRE_POSTGRES"):
    pytest.skip("PostgreSQL is not installed", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "crm-example"
MAPPED = {"cases": "id", "case_messages": "msg_id", "notes": "id"}
OLD = "2023-01-05 09:00:00+00"


def msg(n: int) -> str:
    return str(uuid.UUID(int=n))


@pytest.fixture(scope="module")
def pg_server():
    with run_postgres() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str):
    """An empty public schema for each test."""
    engine = create_engine(pg_server)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return pg_server


def run_sql(url: str, sql: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        # straight to psycopg without parameters, so a % in the SQL is just a %
        connection.connection.driver_connection.execute(sql)  # type: ignore[union-attr]
    engine.dispose()


def write_config(tmp_path: Path, url: str, mapping: str | None = None) -> Path:
    path = tmp_path / "config.toml"
    mapping = (EXAMPLE / "mapping.toml").read_text() if mapping is None else mapping
    path.write_text(
        f'[active]\nurl = "{url}"\n\n{mapping}\n'
        '[archive]\ndir = "archive"\nbatch_size = 3\n[index]\ndir = "index"\n'
        "[retention.default]\narchive_after_days = 365\n"
    )
    return path


CASE_COLUMNS = (
    "id, account_id, parent_case_id, queue, assignee, title, description, state, priority, "
    "amount, score, escalated, due_on, opened_at, last_activity_at, local_opened, external_ref, "
    "tags, custom, raw_payload, signature"
)

DATA = f"""
INSERT INTO accounts (id, name, region) VALUES (1, 'Acme', 'EU'), (2, '华星科技', NULL),
    (3, 'Held Inc', 'US');
-- process A (aged, unheld): case 10 > case 11, messages on both, a note on 10
INSERT INTO cases ({CASE_COLUMNS}) VALUES
 (10, 1, NULL, 'billing', 'li.wei', 'Refund INV-2023-004512', '客户要求退款 refund', 'closed', 2,
  120.50, 0.1, true, '2023-02-28', '{OLD}', '2023-02-01 10:00:00.123456+00',
  '2023-01-05 09:00:00.000001', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  ARRAY['refund', NULL, '退款'], '{{"n": 1.50, "b": [true, null]}}',
  '{{"a":  1, "a": 2}}', '\\x00ff10'),
 (11, 1, 10, 'billing', NULL, NULL, '', 'closed', 3,
  NULL, NULL, false, NULL, '{OLD}', '2023-02-02 10:00:00+00', NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at, headers, ratings,
                           sent_on) VALUES
 ('{msg(1)}', 10, 'billing', 'Refund', 'Please refund.', '2023-01-05 09:01:00+00',
  '{{"x-mailer": "crm"}}', ARRAY[[1, 2], [3, NULL]], ARRAY['2023-01-05'::date]),
 ('{msg(2)}', 11, 'billing', NULL, 'Follow-up', '2023-01-06 09:01:00+00', NULL, NULL, NULL);
INSERT INTO notes (id, case_id, author, body, written_at, minutes) VALUES
 (1, 10, 'li.wei', 'approved', '2023-02-01 10:00:00', 15.250);
-- process B (aged, but its message has an attachment): blocked
INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at) VALUES
 (20, 2, 'support', 'Broken login', 'closed', '{OLD}', '{OLD}');
INSERT INTO case_messages (msg_id, case_id, queue, text, sent_at) VALUES
 ('{msg(20)}', 20, 'support', 'screenshot attached', '{OLD}');
INSERT INTO attachments (id, message_id, file_name, content) VALUES
 (1, '{msg(20)}', 'screen.png', '\\x89504e47');
-- process C (aged, customer 3 on hold)
INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at) VALUES
 (30, 3, 'support', 'Held', 'closed', '{OLD}', '{OLD}');
-- process D (old case, recent message): stays whole
INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at) VALUES
 (40, 1, 'support', 'Old case', 'open', '{OLD}', '{OLD}');
INSERT INTO case_messages (msg_id, case_id, queue, text, sent_at) VALUES
 ('{msg(40)}', 40, 'support', 'still going', now());
-- process E: recent
INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at) VALUES
 (50, 2, 'support', 'New', 'open', now(), now());
"""

PROCESS_A = {
    "case:10", "case:11", f"msg:{msg(1)}", f"msg:{msg(2)}", "note:1",
}


def snapshot(services: Services) -> dict[str, str]:
    """row_to_json of every row of every mapped table, by record id."""
    rows: dict[str, str] = {}
    prefixes = {"cases": "case:", "case_messages": "msg:", "notes": "note:"}
    with services.engine.connect() as connection:
        for table, key in MAPPED.items():
            for row_key, as_json in connection.execute(
                text(f"SELECT {key}::text, row_to_json(t)::text FROM {table} t")
            ):
                rows[prefixes[table] + row_key] = as_json
    return rows


@contextmanager
def http_client(services: Services, role: str = "admin") -> Iterator[tuple[Any, dict[str, str]]]:
    """A test client of the installation's app and the headers of a token with this role."""
    from archivist.tokens import create_token
    from server import close_app, create_app

    with services.sessions.begin() as session:
        secret = create_token(session, f"{role}-{uuid.uuid4().hex}", role, utcnow())
    headers = {"Authorization": f"Bearer {secret}"}
    app = create_app(services.config)
    app.config["TESTING"] = True
    try:
        yield app.test_client(), headers
    finally:
        close_app(app)


@pytest.fixture
def crm(tmp_path: Path, pg_url: str):
    run_sql(pg_url, (EXAMPLE / "schema.sql").read_text())
    run_sql(pg_url, DATA)
    with Services.open(load_config(write_config(tmp_path, pg_url)), create=True) as services:
        with services.sessions.begin() as session:
            add_hold(session, "customer", "3", "litigation", utcnow())
        yield services


def test_crm_archive_moves_exactly_the_aged_unheld_unreferenced_processes(crm):
    before = snapshot(crm)
    report = run_archive_job(crm, utcnow())

    assert report.archived == len(PROCESS_A)
    assert report.blocked == 2
    assert report.blocked_by == {"attachments_message_id_fkey": 2}
    after = snapshot(crm)
    assert set(before) - set(after) == PROCESS_A
    from indexer.stats import collect_stats

    stats = collect_stats(crm)
    assert (stats["active"], stats["archived"]) == (len(after), len(PROCESS_A))
    assert crm.store.find_archived(before) == PROCESS_A
    with crm.sessions.begin() as session:
        blocks = session.query(JobRunBlock).all()
        assert {(b.record_id, b.constraint_name, b.referencing_table) for b in blocks} == {
            ("case:20", "attachments_message_id_fkey", "attachments"),
            (f"msg:{msg(20)}", "attachments_message_id_fkey", "attachments"),
        }
    page = crm.index.search(SearchQuery(q="退款"))
    assert [hit.id for hit in page.hits] == ["case:10"]
    record = crm.store.get("case:10")
    assert record["customer_id"] == "1" and record["subject"] == "Refund INV-2023-004512"
    assert record["attributes"]["table"] == "cases"
    assert crm.store.get(f"msg:{msg(2)}")["parent_id"] == "case:11"
    assert crm.store.get("case:11")["parent_id"] == "case:10"


def test_crm_a_process_of_more_rows_than_a_statement_may_bind_is_archived_whole(crm, pg_url):
    """A batch's rows were forgotten by the ledger in one `IN` list: past PostgreSQL's 65,535
    parameters the run failed, and every later one failed again settling what it left."""
    run_sql(pg_url, "INSERT INTO case_messages (msg_id, case_id, queue, text, sent_at) "
                    f"SELECT gen_random_uuid(), 10, 'billing', 'more', '{OLD}' "
                    "FROM generate_series(1, 66000)")
    report = run_archive_job(crm, utcnow())

    assert report.archived == len(PROCESS_A) + 66_000
    with crm.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM case_messages")) == 2  # B's and D's
    assert run_archive_job(crm, utcnow()).archived == 0
    assert verify_all(crm).problems == []


def test_crm_restore_rebuilds_every_row_exactly_and_fires_insert_triggers(crm):
    before = snapshot(crm)
    run_archive_job(crm, utcnow())
    with crm.engine.connect() as connection:
        logged = connection.scalar(text("SELECT count(*) FROM case_log WHERE op = 'INSERT'"))

    restored = restore_crm_process(
        crm.sessions, crm.store, crm.index, crm.crm, f"msg:{msg(2)}", "admin", utcnow()
    )

    assert set(restored) == PROCESS_A
    assert restored.index("case:10") < restored.index("case:11") < restored.index(f"msg:{msg(2)}")
    assert snapshot(crm) == before
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"restored"}
    assert crm.index.search(SearchQuery(q="退款")).total == 0
    with crm.engine.connect() as connection:
        assert connection.scalar(
            text("SELECT count(*) FROM case_log WHERE op = 'INSERT'")
        ) == logged + 2
    assert verify_all(crm).problems == []


def test_crm_restored_process_is_not_archived_again_within_its_grace(crm):
    run_archive_job(crm, utcnow())
    restore_crm_process(crm.sessions, crm.store, None, crm.crm, "note:1", "admin", utcnow())

    assert run_archive_job(crm, utcnow()).archived == 0
    later = run_archive_job(crm, utcnow() + timedelta(days=366))
    assert later.archived >= len(PROCESS_A)
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"archived"}


def test_crm_an_erased_restored_process_keeps_its_grace(crm):
    """Erasing the archived versions of a restored process leaves its rows in the CRM, and
    their restore grace with them: the next run does not archive them again at once."""
    run_archive_job(crm, utcnow())
    restore_crm_process(crm.sessions, crm.store, None, crm.crm, "note:1", "admin", utcnow())
    for record_id in PROCESS_A:
        erase_records(crm, record_id=record_id, actor="admin", at=utcnow())
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"erased"}

    assert run_archive_job(crm, utcnow(), dry_run=True).archived == 0
    assert run_archive_job(crm, utcnow()).archived == 0
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"erased"}
    later = run_archive_job(crm, utcnow() + timedelta(days=366))
    assert later.archived >= len(PROCESS_A)
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"archived"}


def test_crm_restore_over_a_taken_key_is_already_active_and_writes_nothing(crm):
    run_archive_job(crm, utcnow())
    with crm.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO cases (id, account_id, queue, state, opened_at, last_activity_at) "
            "VALUES (11, 1, 'billing', 'open', now(), now())"
        ))
    before = snapshot(crm)

    with pytest.raises(AlreadyActive):
        restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, "case:10", "admin",
                            utcnow())

    assert snapshot(crm) == before
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"archived"}
    assert {crm.store.info(rid).pending for rid in PROCESS_A} == {None}


def test_crm_restore_refused_by_another_unique_column_is_restore_refused(crm):
    """Only a clash on the key is `already_active`; another unique column the CRM filled
    with the archived row's value meanwhile refuses the restore, and nothing is written."""
    run_archive_job(crm, utcnow())
    title = crm.store.get("case:10")["subject"]
    with crm.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at)"
            " VALUES (90, 1, 'billing', :title, 'open', now(), now())"
        ), {"title": title})
        connection.execute(text("CREATE UNIQUE INDEX cases_title_unique ON cases (title)"))
    before = snapshot(crm)

    with pytest.raises(RestoreRefused, match="cases_title_unique"):
        restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, "case:10", "admin",
                            utcnow())

    assert snapshot(crm) == before
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"archived"}


def test_crm_a_key_used_again_stays_in_the_crm_and_the_rest_is_archived(crm):
    """An id lives in one place: an aged row the CRM made with an archived row's key stays
    where it is, and the run goes on with every other process."""
    run_archive_job(crm, utcnow())
    with crm.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at)"
            " VALUES (11, 2, 'support', 'Reused key', 'closed', '2020-01-01', '2020-01-01'),"
            " (60, 2, 'support', 'Another old case', 'closed', '2020-01-01', '2020-01-01')"
        ))
    report = run_archive_job(crm, utcnow())
    assert report.archived == 1 and crm.store.find_archived(["case:60"]) == {"case:60"}
    assert crm.store.get("case:11")["subject"] != "Reused key"  # the archived one, unchanged
    with crm.engine.connect() as connection:
        assert connection.execute(text("SELECT title FROM cases WHERE id = 11")).scalar() == (
            "Reused key")
    assert crm.store.verify() == []


def test_crm_erasure_counts_the_customers_rows_still_in_the_crm(crm):
    """`active_remaining`: the customer's rows the CRM's own tables still hold (its to erase),
    by the column the mapping takes `customer_id` from, with the rows under them that name no
    customer (their messages and notes); for a record without a customer, its own row. The
    erasure itself takes the archived ones the same way."""
    run_archive_job(crm, utcnow())  # process A (account 1) leaves; case 40 (account 1) stays

    def still_active(**target: str) -> int:
        report = erase_records(crm, **target, actor="t", at=utcnow(), dry_run=True)
        return report.active_remaining

    assert still_active(customer_id="1") == 2  # case 40 and its message
    assert still_active(record_id="case:10") == 2  # its customer's: the same
    assert still_active(record_id=f"msg:{msg(1)}") == 0  # no customer: its own row, archived
    assert sorted(erase_records(crm, customer_id="1", actor="t", at=utcnow(),
                                dry_run=True).ids) == sorted(PROCESS_A)
    restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, "case:10", "t", utcnow())
    assert still_active(customer_id="1") == 7  # cases 10, 11 and 40, their messages, the note
    assert still_active(record_id=f"msg:{msg(1)}") == 1


def test_crm_archive_leaves_a_row_the_crm_changed_after_it_was_read(crm, monkeypatch):
    import archive_store.store as store_module

    original = store_module.ArchiveStore.archive_batch

    def archive_then_crm_edits(self, items, at, actor):
        stored = original(self, items, at, actor)
        if any(item.record_id == "note:1" for item in items):
            with crm.engine.begin() as connection:
                connection.execute(text("UPDATE notes SET body = 'edited' WHERE id = 1"))
        return stored

    monkeypatch.setattr(store_module.ArchiveStore, "archive_batch", archive_then_crm_edits)
    report = run_archive_job(crm, utcnow())

    assert report.archived == 0
    assert "note:1" in snapshot(crm) and "case:10" in snapshot(crm)
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {"restored"}
    assert verify_all(crm).problems == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('body = { column = "description" }', 'body = { column = "txt" }'),
         '[[active.table]] #1 (cases): column \'txt\' not found'),
        (('name = "notes"', 'name = "nots"'),
         "[[active.table]] #3 (nots): table 'nots' not found"),
        (('subject = { column = "title" }', 'subject = { column = "amount" }'),
         "[[active.table]] #1 (cases): column 'amount' (NUMERIC(12, 2)) cannot hold subject"),
        (('id_prefix = "note:"', 'id_prefix = "msg:"'),
         "[[active.table]] #3 (notes): id_prefix 'msg:' is also the id_prefix of #2"),
        (('table = "cases" }   # parent_id', 'table = "tickets" }   # parent_id'),
         "[[active.table]] #2 (case_messages): parent table 'tickets' is not mapped"),
        (('key = "msg_id"', 'key = "case_id"'),
         "[[active.table]] #2 (case_messages): key 'case_id' must be the table's one-column "
         "primary key"),
        (('updated_at = { column = "written_at" }', 'updated_at = { column = "author" }'),
         "[[active.table]] #3 (notes): column 'author' (TEXT) cannot hold updated_at"),
        (('parent = { column = "parent_case_id", table = "cases" }',
          'parent = { column = "queue", table = "cases" }'),
         "[[active.table]] #1 (cases): parent column 'queue' is text, but the key of cases is "
         "integer"),
        # mistakes no row could pass: not a run that archives nothing (or the wrong thing)
        (('kind = "note"', 'kind = "memo"'),
         "[[active.table]] #3 (notes): kind 'memo' is not one of [records] kinds"),
        (('parent = { column = "parent_case_id", table = "cases" }',
          'parent = { column = "id", table = "cases" }'),
         "[[active.table]] #1 (cases): parent column 'id' is the key itself"),
        (('name = "notes"', 'name = "public.cases"'),
         "[[active.table]] #3 (public.cases): table 'public.cases' is mapped already, by "
         "[[active.table]] #1 (cases)"),
    ],
)
def test_crm_bad_mapping_is_a_one_line_error_naming_the_entry(tmp_path, pg_url, edit, message):
    run_sql(pg_url, (EXAMPLE / "schema.sql").read_text())
    mapping = (EXAMPLE / "mapping.toml").read_text()
    old, new = edit
    assert mapping.count(old) == 1
    path = write_config(tmp_path, pg_url, mapping.replace(old, new))

    with pytest.raises(ConfigError) as error:
        Services.open(load_config(path)).close()

    assert "\n" not in str(error.value)
    assert str(error.value).startswith(f"{path.resolve()}: ")  # the file, as everywhere
    assert message in str(error.value)


def test_crm_a_row_whose_kind_column_is_not_an_allowed_kind_stays_in_the_crm(
    tmp_path: Path, pg_url: str, caplog
):
    run_sql(pg_url, """
        CREATE TABLE memos (id bigint PRIMARY KEY, queue text NOT NULL, sort text NOT NULL,
                            at timestamptz NOT NULL, tag text);
        INSERT INTO memos VALUES (1, 'support', 'note', '2020-01-01', 'fine'),
                                 (2, 'support', 'memo', '2020-01-01', 'unknown kind');
    """)
    mapping = note_table_mapping("memos", "m:").replace(
        'kind = "note"', 'kind = { column = "sort" }')
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        report = run_archive_job(crm, utcnow())
        assert report.archived == 1
        assert crm.store.find_archived(["m:1", "m:2"]) == {"m:1"}
    assert "row m:2 is not archived: kind must be one of" in caplog.text


LOCKED_ITEMS = """
    CREATE TABLE items (id bigint PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                        tag text, locked boolean NOT NULL DEFAULT false);
    INSERT INTO items VALUES (1, 'support', '2020-01-01', 'locked', true),
                             (2, 'support', '2020-01-01', 'free', false),
                             (3, 'support', '2020-01-01', 'free too', false);
"""
KEEPS_LOCKED_ROWS = {
    "trigger": """
        CREATE FUNCTION keep_locked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.locked THEN RETURN NULL; END IF;
          RETURN OLD;
        END $$;
        CREATE TRIGGER items_keep BEFORE DELETE ON items FOR EACH ROW
            EXECUTE FUNCTION keep_locked();
    """,
    "rule": "CREATE RULE items_keep AS ON DELETE TO items WHERE OLD.locked DO INSTEAD NOTHING;",
    "raise": """
        CREATE FUNCTION refuse_locked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.locked THEN RAISE EXCEPTION 'item % is locked', OLD.id; END IF;
          RETURN OLD;
        END $$;
        CREATE TRIGGER items_refuse BEFORE DELETE ON items FOR EACH ROW
            EXECUTE FUNCTION refuse_locked();
    """,
    # a check PostgreSQL runs only at the commit, unless told to run it earlier
    "deferred": """
        CREATE FUNCTION refuse_locked() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.locked THEN RAISE EXCEPTION 'item % is locked', OLD.id; END IF;
          RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER items_refuse AFTER DELETE ON items
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_locked();
    """,
}


@pytest.fixture(params=sorted(KEEPS_LOCKED_ROWS))
def locked_items(request, tmp_path: Path, pg_url: str):
    """Three aged rows of `items`; the CRM refuses to delete the locked one (a trigger that
    keeps it silently, a DO INSTEAD NOTHING rule, or a trigger that raises)."""
    run_sql(pg_url, LOCKED_ITEMS + KEEPS_LOCKED_ROWS[request.param])
    config = load_config(write_config(tmp_path, pg_url, note_table_mapping("items", "i:")))
    with Services.open(config, create=True) as services:
        yield request.param, services


def _item_ids(services: Services) -> list[int]:
    with services.engine.connect() as connection:
        return list(connection.scalars(text("SELECT id FROM items ORDER BY id")))


def test_crm_a_row_the_crm_refuses_to_delete_stays_active_and_is_not_archived(locked_items):
    """A row kept by a DELETE trigger or rule, or one whose DELETE raises, is in one place
    only: its table. Its archived copy is undone in the same run, the run says why and goes
    on with the other rows, and later runs do the same without failing."""
    how, crm = locked_items

    report = run_archive_job(crm, utcnow())

    assert report.archived == 2
    assert report.refused == 1
    [(reason, count)] = report.refused_by.items()
    assert count == 1 and reason.startswith("items: ")
    raises = how in ("raise", "deferred")
    assert ("item 1 is locked" if raises else "DELETE trigger or rule") in reason
    assert _item_ids(crm) == [1]
    assert crm.store.find_archived(["i:1", "i:2", "i:3"]) == {"i:2", "i:3"}
    assert crm.store.info("i:1").state == "restored"
    assert list(crm.store.iter_pending()) == []
    with crm.sessions.begin() as session:
        blocks = {(b.record_id, b.referencing_table) for b in session.query(JobRunBlock).all()}
    assert blocks == {("i:1", "items")}
    assert verify_all(crm).problems == []

    history = crm.store.history("i:1")
    last_seq = crm.store.last_seq()
    for _ in range(2):  # refused again: reported, and not stored and undone once more
        again = run_archive_job(crm, utcnow())
        assert (again.archived, again.refused) == (0, 1)
        assert _item_ids(crm) == [1]
        assert crm.store.find_archived(["i:1"]) == set()
        assert list(crm.store.iter_pending()) == []
        assert (crm.store.last_seq(), crm.store.history("i:1")) == (last_seq, history)

    # once the CRM lets the row go, it moves like any other
    run_sql(crm.config.active_url, "UPDATE items SET locked = false WHERE id = 1")
    assert run_archive_job(crm, utcnow()).archived == 1
    assert _item_ids(crm) == []
    assert crm.store.find_archived(["i:1"]) == {"i:1"}
    assert verify_all(crm).problems == []


def test_crm_cli_archive_says_why_a_row_was_refused(locked_items):
    from click.testing import CliRunner

    from cli.commands import main

    how, crm = locked_items
    result = CliRunner().invoke(main, ["archive", "--config", str(crm.config.path)])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("archived 2, ")
    assert result.stderr.startswith("refused 1: items: ")
    assert crm.index.search(SearchQuery(q="locked")).total == 0


def test_crm_a_delete_left_pending_that_the_crm_refuses_is_settled_as_active(locked_items):
    """A move a crash interrupted after the store wrote the record: settling it tries the
    delete again, and when the CRM refuses it the row stays, its archived copy undone,
    instead of failing every later run."""
    from archive_store import ArchiveItem
    from archivist.records import parse_utc
    from indexer.jobs.crm_archiver import load_processes

    _, crm = locked_items
    with crm.sessions.begin() as session:
        [process] = load_processes(session, crm.crm, {"items": [1]})
    record = process.rows[0].record
    crm.store.archive_batch([ArchiveItem(
        record_id="i:1", record=record, category=record["category"], customer_id=None,
        updated_at=parse_utc(record["updated_at"]),
    )], utcnow(), "archiver")
    assert [e.pending for e in crm.store.iter_pending()] == ["delete_active"]

    report = run_archive_job(crm, utcnow())

    assert report.archived == 2
    assert _item_ids(crm) == [1]
    assert crm.store.find_archived(["i:1"]) == set()
    assert list(crm.store.iter_pending()) == []
    assert verify_all(crm).problems == []


def test_crm_mapping_key_typo_is_a_one_line_error_naming_it(tmp_path, pg_url):
    mapping = (EXAMPLE / "mapping.toml").read_text()
    typo = mapping.replace('key = "msg_id"', 'key = "msg_id"\nkee = 1')
    path = write_config(tmp_path, pg_url, typo)

    with pytest.raises(ConfigError) as error:
        load_config(path)

    message = str(error.value)
    assert "\n" not in message
    assert "active.table" in message and "'kee'" in message and "'key'" in message


def test_crm_import_is_refused_when_tables_are_mapped(tmp_path, pg_url):
    from click.testing import CliRunner

    from cli.commands import main

    run_sql(pg_url, (EXAMPLE / "schema.sql").read_text())
    path = write_config(tmp_path, pg_url)
    lines = tmp_path / "in.jsonl"
    lines.write_text("{}\n")

    result = CliRunner().invoke(main, ["import", str(lines), "--config", str(path)])

    assert result.exit_code != 0
    assert "import is refused" in result.output


def test_crm_readme_example_runs_as_written(tmp_path, pg_url):
    from click.testing import CliRunner

    from cli.commands import main

    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    assert (EXAMPLE / "mapping.toml").read_text().split("\n\n", 1)[1].strip() in readme
    run_sql(pg_url, (EXAMPLE / "schema.sql").read_text())
    run_sql(pg_url, (EXAMPLE / "data.sql").read_text())
    path = tmp_path / "crm.toml"
    path.write_text(
        f'[active]\nurl = "{pg_url}"\n[archive]\ndir = "crm-data/archive"\n'
        '[index]\ndir = "crm-data/index"\n' + (EXAMPLE / "mapping.toml").read_text()
    )
    run = lambda *args: CliRunner().invoke(main, [*args, "--config", str(path)])  # noqa: E731
    assert run("init").exit_code == 0

    blocked = "blocked 2: still referenced through attachments_message_id_fkey"
    for args, shown in [
        (("archive", "--dry-run"), "would archive 4\n  billing: 3\n  support: 1\n"),
        (("archive",), "archived 4, indexed 4\n"),
    ]:
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout == shown
        assert result.stderr.strip() == blocked
        lines = [line.strip().removeprefix("#").strip() for line in readme.splitlines()]
        assert all(line.strip() in lines for line in shown.strip().split("\n"))
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        assert connection.scalars(text("SELECT id FROM cases ORDER BY id")).all() == [3, 4]
    engine.dispose()
    with Services.open(load_config(path)) as services:
        assert services.index.search(SearchQuery(q="refund")).total == 4
        restored = restore_crm_process(services.sessions, services.store, services.index,
                                       services.crm, "note:1", "me", utcnow())
        assert len(restored) == 4



def test_crm_search_page_and_record_show_the_table_and_restore_over_http(crm):
    from tests.test_ui_pages import _sign_in

    run_archive_job(crm, utcnow())
    with http_client(crm) as (client, headers):
        body = client.get("/api/v1/records/case:11", headers=headers).json
        assert body["record"]["attributes"]["table"] == "cases"
        _sign_in(client, headers)
        page = client.get("/search?q=refund").get_data(as_text=True)
        assert '<span class="tag tag-table" title="CRM table">cases</span>' in page
        page = client.get("/records/note:1").get_data(as_text=True)
        assert '<dt>CRM table</dt><dd class="mono">notes</dd>' in page

        response = client.post("/api/v1/records/note:1/restore", headers=headers)
        assert response.status_code == 200
        assert set(snapshot(crm)) >= PROCESS_A
        response = client.post("/api/v1/records/case:10/restore", headers=headers)
        assert response.status_code == 409
        assert response.json["error"]["code"] == "not_archived"


def test_crm_cli_restore_brings_back_whole_processes_and_lists_the_rest(crm):
    from click.testing import CliRunner

    from cli.commands import main

    before = snapshot(crm)
    run_archive_job(crm, utcnow())
    args = ["restore", "note:1", "case:20", "--reason", "audit request",
            "--config", str(crm.config.path)]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    assert result.stdout == "restored 5 (1 processes)\n"
    assert "skipped case:20: already_active" in result.stderr  # in the CRM, never archived
    assert snapshot(crm) == before
    assert [h.reason for h in crm.store.history("case:11") if h.event == "restored"] == [
        "audit request"
    ]


def test_crm_bulk_restore_over_http_restores_processes_and_skips_the_rest(crm):
    before = snapshot(crm)
    run_archive_job(crm, utcnow())
    with http_client(crm) as (client, headers):
        body = {"ids": ["case:11", "case:30", "case:99"], "reason": "court order"}
        response = client.post("/api/v1/restore", json=body, headers=headers)
        one = client.post("/api/v1/records/case:30/restore", json={"reason": "r"},
                          headers=headers)

    assert response.status_code == 200, response.json
    assert response.json["processes"] == 1
    assert set(response.json["ids"]) == PROCESS_A
    assert response.json["skipped"] == [  # held in the CRM, never archived; unknown
        {"id": "case:30", "code": "already_active"}, {"id": "case:99", "code": "not_found"}]
    assert one.status_code == 409 and one.json["error"] == {
        "code": "already_active",
        "message": "record case:30 is in the CRM's tables and was never archived"}
    assert snapshot(crm) == before


def test_crm_bulk_restore_lists_every_id_asked_for_in_a_process_it_skips(crm):
    """Two ids of one process asked for, and the process refused (a key of it taken again in
    the CRM): both are listed as skipped, not only the one the process was planned from."""
    run_archive_job(crm, utcnow())
    with crm.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO cases (id, account_id, queue, state, opened_at, last_activity_at) "
            "VALUES (11, 1, 'billing', 'open', now(), now())"
        ))
    with http_client(crm) as (client, headers):
        body = {"ids": ["case:10", "note:1", "case:30"], "reason": "court order"}
        response = client.post("/api/v1/restore", json=body, headers=headers)

    assert response.status_code == 200, response.json
    assert (response.json["matched"], response.json["restored"]) == (3, 0)
    assert [(s["id"], s["code"]) for s in response.json["skipped"]] == [
        ("case:30", "already_active"), ("case:10", "already_active"),
        ("note:1", "already_active"),
    ]
    assert crm.store.find_archived(PROCESS_A) == PROCESS_A


def record_view(services: Services, record_id: str) -> dict:
    """The record view's JSON, as the HTTP API answers it."""
    with http_client(services) as (client, headers):
        response = client.get(f"/api/v1/records/{record_id}", headers=headers)
    assert response.status_code == 200, response.json
    return response.json


def test_crm_record_view_lists_the_process_rows_back_in_the_crm_as_active(crm):
    run_archive_job(crm, utcnow())
    restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, "note:1", "admin", utcnow())
    # the CRM goes on with the case: a message the archive never saw
    run_sql(crm.config.active_url, f"""
        INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at) VALUES
         ('{msg(3)}', 11, 'billing', 'Thanks', 'Resolved, thanks', now());""")

    process = record_view(crm, f"msg:{msg(2)}")["process"]
    assert process["root"] == "case:10"
    states = {node["id"]: node["state"] for node in process["records"]}
    assert states == {record_id: "active" for record_id in PROCESS_A | {f"msg:{msg(3)}"}}
    new = next(node for node in process["records"] if node["id"] == f"msg:{msg(3)}")
    assert (new["parent_id"], new["subject"]) == ("case:11", "Thanks")
    ids = [node["id"] for node in process["records"]]
    assert ids.index("case:10") < ids.index("case:11") < ids.index(f"msg:{msg(3)}")


def test_crm_record_view_lists_rows_the_crm_added_under_an_archived_case(crm):
    run_archive_job(crm, utcnow())
    # without the foreign key, the CRM can add a message to a case that was archived
    run_sql(crm.config.active_url, f"""
        ALTER TABLE case_messages DROP CONSTRAINT case_messages_case_id_fkey;
        INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at) VALUES
         ('{msg(3)}', 11, 'billing', 'Again', 'Still waiting', now());""")

    process = record_view(crm, f"msg:{msg(2)}")["process"]

    states = {node["id"]: node["state"] for node in process["records"]}
    assert states == {record_id: "archived" for record_id in PROCESS_A} | {
        f"msg:{msg(3)}": "active"
    }
    new = next(node for node in process["records"] if node["id"] == f"msg:{msg(3)}")
    assert (new["parent_id"], new["subject"]) == ("case:11", "Again")


@pytest.mark.parametrize("held", ["case:10", f"msg:{msg(1)}", None])
def test_crm_a_hold_on_an_archived_record_holds_rows_the_crm_added_under_its_process(
    crm, held
):
    """A row the CRM adds under an archived case (no foreign key) is of that case's process:
    a hold on any archived record of it (the root, or another message) keeps the row active."""
    run_archive_job(crm, utcnow())
    run_sql(crm.config.active_url, f"""
        ALTER TABLE case_messages DROP CONSTRAINT case_messages_case_id_fkey;
        INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at) VALUES
         ('{msg(3)}', 11, 'billing', 'Again', 'Still waiting', '2020-01-01');""")
    if held is not None:
        with crm.sessions.begin() as session:
            add_hold(session, "record", held, "litigation", utcnow())
    report = run_archive_job(crm, utcnow())
    archived = crm.store.find_archived([f"msg:{msg(3)}"])
    assert archived == (set() if held is not None else {f"msg:{msg(3)}"})
    assert report.archived == (0 if held is not None else 1)


@pytest.mark.parametrize("restored", ["case:10", f"msg:{msg(3)}"])
def test_crm_restore_brings_back_rows_archived_later_under_the_process(crm, restored):
    """A row the CRM added under an archived case (no foreign key), archived by a later run,
    is of that case's process: restoring any record of it brings back all of it."""
    run_archive_job(crm, utcnow())
    run_sql(crm.config.active_url, f"""
        ALTER TABLE case_messages DROP CONSTRAINT case_messages_case_id_fkey;
        INSERT INTO case_messages (msg_id, case_id, queue, subject, text, sent_at) VALUES
         ('{msg(3)}', 11, 'billing', 'Again', 'Still waiting', '2020-01-01');""")
    assert run_archive_job(crm, utcnow()).archived == 1
    everything = PROCESS_A | {f"msg:{msg(3)}"}

    back = restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, restored, "t",
                               utcnow())

    assert set(back) == everything
    assert set(snapshot(crm)) >= everything
    assert {crm.store.info(rid).state for rid in everything} == {"restored"}
    assert crm.store.verify() == []


@pytest.mark.parametrize("on_delete", ["CASCADE", "SET NULL"])
def test_crm_a_reference_from_another_schema_blocks_the_row_whatever_its_on_delete(
    tmp_path: Path, pg_url: str, on_delete: str
):
    """A table in another schema referencing a mapped row (`ON DELETE CASCADE` would delete
    its own rows with it, `SET NULL` change them) blocks that row's process like any other."""
    run_sql(pg_url, (EXAMPLE / "schema.sql").read_text())
    run_sql(pg_url, DATA)
    run_sql(pg_url, f"""
        CREATE SCHEMA reporting;
        CREATE TABLE reporting.case_refs (
            id int PRIMARY KEY, case_id bigint REFERENCES cases (id) ON DELETE {on_delete});
        INSERT INTO reporting.case_refs VALUES (1, 10);
    """)
    try:
        with Services.open(load_config(write_config(tmp_path, pg_url)), create=True) as services:
            report = run_archive_job(services, utcnow())
            assert not services.store.find_archived(PROCESS_A)
            assert report.blocked_by == {
                "attachments_message_id_fkey": 2, "case_refs_case_id_fkey": len(PROCESS_A)}
            with services.engine.connect() as connection:
                assert connection.execute(
                    text("SELECT id, case_id FROM reporting.case_refs")
                ).all() == [(1, 10)]
            with services.sessions.begin() as session:
                blocks = {(b.record_id, b.constraint_name, b.referencing_table)
                          for b in session.query(JobRunBlock).all()}
            assert ("case:10", "case_refs_case_id_fkey", "reporting.case_refs") in blocks
    finally:
        run_sql(pg_url, "DROP SCHEMA reporting CASCADE")


def test_crm_columns_of_types_sqlalchemy_does_not_know_restore_over_http(
    tmp_path: Path, pg_url: str
):
    """`point`, `xml` and the like are kept in PostgreSQL's text form and written back as it,
    and nothing about them is printed as a warning."""
    from server import close_app, create_app
    from tests.conftest import _token_headers

    run_sql(pg_url, """
        CREATE TABLE sites (id bigint PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                            geo point, doc xml, tag text);
        INSERT INTO sites VALUES (1, 'support', '2020-01-01', '(1.5,2)', '<a>b</a>', 'one'),
                                 (2, 'support', '2020-01-01', NULL, NULL, 'two');
    """)
    mapping = note_table_mapping("sites", "site:")
    config = load_config(write_config(tmp_path, pg_url, mapping))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not recognize type" on every command
        services = Services.open(config, create=True)
    with services:
        before = _site_rows(services)
        assert run_archive_job(services, utcnow()).archived == 2
        assert _site_rows(services) == []
        headers = _token_headers(services, "admin")
        app = create_app(config)
        try:
            client = app.test_client()
            for site in ("site:1", "site:2"):
                response = client.post(f"/api/v1/records/{site}/restore", headers=headers)
                assert response.status_code == 200, response.get_data(as_text=True)
        finally:
            close_app(app)
        assert _site_rows(services) == before


def test_crm_a_time_past_9999_where_the_session_reads_it_leaves_its_row(
    tmp_path: Path, pg_url: str
):
    """9999-12-31 23:00-05 is year 10000 in UTC: read in a New York session it has no Python
    value. Its row stays in the CRM (held back, dry run and real run alike), the rest moves."""
    alter = "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {}', current_database()); END $$"
    run_sql(pg_url, alter.format("SET TimeZone = ''America/New_York''"))
    try:
        run_sql(pg_url, """
            CREATE TABLE events (id bigint PRIMARY KEY, queue text NOT NULL,
                                 at timestamptz NOT NULL, until timestamptz, tag text);
            INSERT INTO events VALUES
              (1, 'support', '2020-01-01', '9999-12-31 23:00-05', 'late'),
              (2, 'support', '2020-01-01', '9999-12-31 03:00-05', 'in range'),
              (3, 'support', '2020-01-01', NULL, 'plain');
        """)
        mapping = note_table_mapping("events", "ev:")
        config = load_config(write_config(tmp_path, pg_url, mapping))
        with Services.open(config, create=True) as crm:
            dry = run_archive_job(crm, utcnow(), dry_run=True)
            assert (dry.archived, dry.held_back) == (2, 1)
            assert run_archive_job(crm, utcnow()).archived == 2
            assert crm.store.find_archived(["ev:1", "ev:2", "ev:3"]) == {"ev:2", "ev:3"}
            with crm.engine.connect() as connection:
                assert connection.execute(
                    text("SELECT id, (until AT TIME ZONE 'UTC')::text FROM events")
                ).all() == [(1, "10000-01-01 04:00:00")]
    finally:
        run_sql(pg_url, alter.format("RESET TimeZone"))


def _site_rows(services: Services) -> list[tuple]:
    with services.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(
            text("SELECT id, geo::text, doc::text, tag FROM sites ORDER BY id"))]


def test_crm_tables_named_with_and_without_their_schema_are_one_mapping(
    tmp_path: Path, pg_url: str
):
    """`public.cases` and `notes` name tables of one schema: the notes' mapped parent key is
    the mapping's own link, not a reference from outside it."""
    run_sql(pg_url, (EXAMPLE / "schema.sql").read_text())
    run_sql(pg_url, DATA)
    mapping = (EXAMPLE / "mapping.toml").read_text().replace(
        'name = "cases"', 'name = "public.cases"').replace(
        'table = "cases"', 'table = "public.cases"')
    assert 'name = "notes"' in mapping
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        report = run_archive_job(crm, utcnow())
        assert report.blocked_by == {"attachments_message_id_fkey": 2}
        assert crm.store.find_archived(PROCESS_A) == PROCESS_A


def test_crm_an_infinite_or_bc_date_leaves_its_row_and_the_run_goes_on(
    tmp_path: Path, pg_url: str
):
    """PostgreSQL's `infinity` and BC dates have no Python value: such a row stays in the CRM
    (its value could not come back as it is), and every other row is archived."""
    run_sql(pg_url, """
        CREATE TABLE events (id bigint PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                             until timestamptz, since date, tag text);
        INSERT INTO events VALUES
          (1, 'support', '2020-01-01', 'infinity', NULL, 'forever'),
          (2, 'support', '2020-01-01', NULL, '0044-03-15 BC', 'ides'),
          (3, 'support', '-infinity', NULL, NULL, 'always'),
          (4, 'support', '2020-01-01', '2021-01-01', '2019-12-31', 'plain');
    """)
    mapping = note_table_mapping("events", "ev:")
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        assert run_archive_job(crm, utcnow(), dry_run=True).archived == 1
        report = run_archive_job(crm, utcnow())
        assert report.archived == 1
        assert crm.store.find_archived(["ev:1", "ev:2", "ev:3", "ev:4"]) == {"ev:4"}
        with crm.engine.connect() as connection:
            assert connection.execute(
                text("SELECT id, until::text, since::text FROM events ORDER BY id")
            ).all() == [(1, "infinity", None), (2, None, "0044-03-15 BC"), (3, None, None)]
        restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, "ev:4", "t", utcnow())
        with crm.engine.connect() as connection:
            assert connection.execute(
                text("SELECT until, since FROM events WHERE id = 4")
            ).one()[1].isoformat() == "2019-12-31"


def test_crm_arrays_of_any_shape_come_back_exactly(tmp_path: Path, pg_url: str):
    """Arrays are kept in PostgreSQL's text form: several dimensions, bounds other than 1,
    NULL elements and `infinity` in a date array all come back as they were."""
    run_sql(pg_url, """
        CREATE TABLE arr (id bigint PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                          ints int[], dates date[], texts text[], tag text);
        INSERT INTO arr VALUES
          (1, 'support', '2020-01-01', '{{1,2},{3,4}}', '{{2020-01-01,infinity}}', '{{a,b}}',
           'dims'),
          (2, 'support', '2020-01-01', '[0:1]={5,6}', '[0:0]={2020-01-01}', '[2:2]={x}', 'lb'),
          (3, 'support', '2020-01-01', '{NULL,1}', '{}', '{NULL,"a b","{c}"}', 'nulls');
    """)
    rows = "SELECT id, ints::text, dates::text, texts::text FROM arr ORDER BY id"
    config = load_config(write_config(tmp_path, pg_url, note_table_mapping("arr", "a:")))
    with Services.open(config, create=True) as crm:
        with crm.engine.connect() as connection:
            before = connection.execute(text(rows)).all()
        assert run_archive_job(crm, utcnow()).archived == 3
        for record_id in ("a:1", "a:2", "a:3"):
            restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, record_id, "t",
                                utcnow())
        with crm.engine.connect() as connection:
            assert connection.execute(text(rows)).all() == before


def test_crm_an_array_archived_as_a_list_of_values_still_restores(
    tmp_path: Path, pg_url: str
):
    """Records archived when arrays were kept as JSON lists (codec `array:<item>`) go back
    through the column's own type."""
    run_sql(pg_url, """
        CREATE TABLE arr (id bigint PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                          dates date[], tag text);
    """)
    config = load_config(write_config(tmp_path, pg_url, note_table_mapping("arr", "a:")))
    with Services.open(config, create=True) as crm:
        crm_table = crm.crm.table_of("a:7")
        record = {
            "id": "a:7", "category": "support", "subject": "old", "created_at":
            "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z",
            "attributes": {
                "table": "arr",
                "types": {"id": "integer", "queue": "text", "at": "timestamptz",
                          "dates": "array:date", "tag": "text"},
                "fields": {"id": "id", "queue": "category", "at": "created_at",
                           "tag": "subject"},
                "columns": {"dates": ["2020-01-02", "2021-03-04"]},
                "nulls": [],
            },
        }
        row = record_to_row(crm_table, record)
        with crm.engine.begin() as connection:
            connection.execute(
                insert_statement(crm_table, tuple(row), text_columns(record)),
                [{f"v_{k}": v for k, v in row.items()}],
            )
            assert connection.execute(text("SELECT dates::text FROM arr")).scalar() == (
                "{2020-01-02,2021-03-04}")


def note_table_mapping(table: str, id_prefix: str) -> str:
    """One `[[active.table]]` entry for a test table of notes: `id`, `queue`, `at`, `tag`."""
    return (
        f'[[active.table]]\nname = "{table}"\nkey = "id"\nid_prefix = "{id_prefix}"\n'
        'kind = "note"\ncategory = { column = "queue" }\nstatus = "open"\n'
        'subject = { column = "tag" }\ncreated_at = { column = "at" }\n'
        'updated_at = { column = "at" }\n'
    )


GENERATED = """
    CREATE TABLE tickets (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, queue text NOT NULL,
        at timestamptz NOT NULL, tag text);
    CREATE TABLE orders (
        id serial PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL, tag text,
        net numeric(10, 2) NOT NULL, gross numeric(10, 2) GENERATED ALWAYS AS (net * 1.2) STORED);
    INSERT INTO tickets (queue, at, tag) VALUES ('support', '2020-01-01', 'identity row');
    INSERT INTO orders (queue, at, tag, net) VALUES ('support', '2020-01-01', 'generated', 10);
"""
GENERATED_ROWS = (
    "SELECT 't:' || id, row_to_json(t)::text FROM tickets t "
    "UNION ALL SELECT 'o:' || id, row_to_json(o)::text FROM orders o"
)


def _api(services: Services, method: str, path: str, **kwargs):
    """One request to the HTTP API as an admin."""
    with http_client(services) as (client, headers):
        return client.open(path, method=method, headers=headers, **kwargs)


@pytest.fixture
def generated(tmp_path: Path, pg_url: str):
    run_sql(pg_url, GENERATED)
    mapping = note_table_mapping("tickets", "t:") + "\n" + note_table_mapping("orders", "o:")
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        yield crm


def _rows(services: Services, sql: str) -> dict[str, str]:
    with services.engine.connect() as connection:
        return dict(connection.execute(text(sql)).all())


@pytest.mark.parametrize("how", ["single", "bulk"])
def test_crm_identity_keys_and_generated_columns_restore_as_they_were(generated, how):
    """An identity key GENERATED ALWAYS is written back as it was (OVERRIDING SYSTEM VALUE);
    a generated column is not written, the database computes it again."""
    before = _rows(generated, GENERATED_ROWS)
    assert run_archive_job(generated, utcnow()).archived == 2
    assert _rows(generated, GENERATED_ROWS) == {}

    if how == "single":
        for record_id in ("t:1", "o:1"):
            response = _api(generated, "POST", f"/api/v1/records/{record_id}/restore")
            assert response.status_code == 200, response.json
    else:
        body = {"ids": ["t:1", "o:1"], "reason": "check"}
        response = _api(generated, "POST", "/api/v1/restore", json=body)
        assert response.status_code == 200, response.json
        assert response.json["skipped"] == []

    assert _rows(generated, GENERATED_ROWS) == before
    assert {generated.store.info(rid).state for rid in ("t:1", "o:1")} == {"restored"}


def test_crm_a_restore_insert_the_database_fails_is_restore_refused_over_http(generated):
    """Any database error on a restore's INSERT (here a trigger that raises) is a 409
    `restore_refused` with the database's reason, and a skip in a bulk restore: nothing is
    written, the records stay archived."""
    assert run_archive_job(generated, utcnow()).archived == 2
    run_sql(generated.config.active_url, """
        CREATE FUNCTION no_back_dating() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'back-dated ticket %', NEW.id; END $$;
        CREATE TRIGGER tickets_no_back_dating BEFORE INSERT ON tickets FOR EACH ROW
            EXECUTE FUNCTION no_back_dating();
    """)

    response = _api(generated, "POST", "/api/v1/records/t:1/restore")
    assert response.status_code == 409, response.json
    assert response.json["error"]["code"] == "restore_refused"
    assert "back-dated ticket 1" in response.json["error"]["message"]
    body = {"ids": ["t:1", "o:1"], "reason": "check"}
    response = _api(generated, "POST", "/api/v1/restore", json=body)
    assert response.status_code == 200, response.json
    assert response.json["skipped"] == [{"id": "t:1", "code": "restore_refused"}]

    assert list(_rows(generated, GENERATED_ROWS)) == ["o:1"]
    assert generated.store.find_archived(["t:1"]) == {"t:1"}
    assert list(generated.store.iter_pending()) == []


def test_crm_a_restored_row_an_insert_trigger_skips_is_restore_refused(generated):
    """A BEFORE INSERT trigger returning NULL writes nothing: the restore is refused, not
    reported done with the row in neither place."""
    assert run_archive_job(generated, utcnow()).archived == 2
    run_sql(generated.config.active_url, """
        CREATE FUNCTION skip_old() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.at < now() - interval '1 year' THEN RETURN NULL; END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER tickets_skip BEFORE INSERT ON tickets FOR EACH ROW
            EXECUTE FUNCTION skip_old();
    """)

    with pytest.raises(RestoreRefused, match="tickets"):
        restore_crm_process(generated.sessions, generated.store, generated.index, generated.crm,
                            "t:1", "admin", utcnow())

    assert _rows(generated, GENERATED_ROWS) == {}
    assert generated.store.find_archived(["t:1"]) == {"t:1"}
    assert list(generated.store.iter_pending()) == []
    response = _api(generated, "POST", "/api/v1/records/t:1/restore")
    assert response.status_code == 409 and response.json["error"]["code"] == "restore_refused"


def test_crm_cli_restore_prints_why_a_process_was_refused(generated):
    from click.testing import CliRunner

    from cli.commands import main

    assert run_archive_job(generated, utcnow()).archived == 2
    run_sql(generated.config.active_url, """
        CREATE FUNCTION no_back_dating() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'back-dated ticket %', NEW.id; END $$;
        CREATE TRIGGER tickets_no_back_dating BEFORE INSERT ON tickets FOR EACH ROW
            EXECUTE FUNCTION no_back_dating();
    """)
    args = ["restore", "t:1", "--reason", "check", "--config", str(generated.config.path)]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 1, result.output  # nothing was restored
    assert result.stdout == "restored 0 (0 processes)\n"
    [line] = [x for x in result.stderr.splitlines() if x.startswith("skipped ")]
    assert line.startswith("skipped t:1: restore_refused (tickets refuses a row")
    assert "back-dated ticket 1" in line


def test_crm_a_running_worker_archives_from_the_tables_as_they_are_now(crm):
    """A worker reflects the CRM's tables when it starts; the CRM then adds a column and a
    table that references cases `ON DELETE CASCADE`. The worker's next run keeps the new
    column's value and leaves the referenced case (and the row referencing it) alone."""
    from indexer.worker import Worker

    worker = Worker(crm)  # as `archivist worker` holds its services for weeks
    run_sql(crm.config.active_url, """
        ALTER TABLE cases ADD COLUMN vip_note text;
        CREATE TABLE invoices (id bigint PRIMARY KEY,
                               case_id bigint REFERENCES cases (id) ON DELETE CASCADE);
        INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at,
                           vip_note)
        VALUES (60, 1, 'billing', 'invoiced', 'closed', '2020-01-01', '2020-01-02', 'keep me'),
               (61, 1, 'billing', 'plain', 'closed', '2020-01-01', '2020-01-02', 'VIP');
        INSERT INTO invoices VALUES (1, 60);
    """)

    worker.archive()

    with crm.engine.connect() as connection:
        assert connection.scalars(text("SELECT case_id FROM invoices")).all() == [60]
        assert connection.scalars(text("SELECT id FROM cases WHERE id >= 60")).all() == [60]
    assert crm.store.find_archived(["case:60", "case:61"]) == {"case:61"}
    assert crm.store.get("case:61")["attributes"]["columns"]["vip_note"] == "VIP"
    with crm.sessions.begin() as session:
        blocks = {(b.record_id, b.constraint_name) for b in session.query(JobRunBlock).all()}
    assert ("case:60", "invoices_case_id_fkey") in blocks


def test_crm_a_running_server_restores_into_the_tables_as_they_are_now(crm):
    """`archivist serve` reflects the tables when it starts. A row archived with a column the
    CRM added since is restored with it; while the CRM has dropped a column an archived row
    had, its restore is a 409 `restore_refused` naming the column, and nothing is left
    pending; once the column is back the same server restores it."""
    run_archive_job(crm, utcnow())
    with http_client(crm) as (client, headers):
        run_sql(crm.config.active_url, """
            ALTER TABLE cases ADD COLUMN vip_note text;
            INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at,
                               vip_note)
            VALUES (61, 1, 'billing', 'plain', 'closed', '2020-01-01', '2020-01-02', 'VIP');
        """)
        with Services.open(crm.config) as fresh:  # `archivist archive` from the CLI
            assert run_archive_job(fresh, utcnow()).archived == 1
        response = client.post("/api/v1/records/case:61/restore", headers=headers)
        assert response.status_code == 200, response.json
        with crm.engine.connect() as connection:
            assert connection.scalar(text("SELECT vip_note FROM cases WHERE id = 61")) == "VIP"

        run_sql(crm.config.active_url, "ALTER TABLE notes DROP COLUMN minutes")
        response = client.post("/api/v1/records/note:1/restore", headers=headers)
        assert response.status_code == 409, response.json
        assert response.json["error"]["code"] == "restore_refused"
        assert "minutes" in response.json["error"]["message"]
        assert list(crm.store.iter_pending()) == []
        assert crm.store.find_archived(PROCESS_A) == PROCESS_A

        run_sql(crm.config.active_url, "ALTER TABLE notes ADD COLUMN minutes numeric(6, 3)")
        response = client.post("/api/v1/records/note:1/restore", headers=headers)
        assert response.status_code == 200, response.json
        assert set(response.json["restored"]) == PROCESS_A
    with crm.engine.connect() as connection:
        assert connection.scalar(text("SELECT minutes FROM notes WHERE id = 1")) == Decimal(
            "15.250")


def test_crm_a_restore_after_a_mapped_column_is_gone_is_restore_refused(crm):
    """A mapped column the CRM dropped while the server runs makes the mapping not fit: a
    restore, one or in bulk, says so (409 `restore_refused`, the entry and column named) and
    writes nothing."""
    run_archive_job(crm, utcnow())
    with http_client(crm) as (client, headers):
        run_sql(crm.config.active_url, "ALTER TABLE notes DROP COLUMN author")
        one = client.post("/api/v1/records/note:1/restore", headers=headers)
        bulk = client.post("/api/v1/restore", headers=headers,
                           json={"ids": ["note:1"], "reason": "check"})

    for response in (one, bulk):
        assert response.status_code == 409, response.json
        assert response.json["error"]["code"] == "restore_refused"
        assert "(notes): column 'author' not found" in response.json["error"]["message"]
    assert list(crm.store.iter_pending()) == []
    assert crm.store.find_archived(PROCESS_A) == PROCESS_A


def test_crm_recovering_a_backup_older_than_rows_archived_since_is_refused_unless_forced(
    crm, tmp_path
):
    """The CRM's tables are not in the backup: rows archived after it was taken would be in
    neither place once it is recovered (the archive folder lost, say). The live ledger of
    rows that left tells: the recovery refuses, naming them, unless --force."""
    import shutil

    from indexer.jobs.backup import BackupError, create_backup, recover_backup

    folder = tmp_path / "backup"
    create_backup(crm, folder, utcnow())  # before anything was archived
    run_archive_job(crm, utcnow())
    assert crm.store.find_archived(PROCESS_A) == PROCESS_A

    second = tmp_path / "second"  # a new archive folder beside the same CRM database
    second.mkdir()
    shutil.copy2(tmp_path / "archive.key", second / "archive.key")
    config = load_config(write_config(second, crm.config.active_url))
    with pytest.raises(BackupError, match=r"5 CRM rows left their tables .* case:10"):
        recover_backup(config, folder, utcnow())
    with crm.sessions.begin() as session:  # the ledger of what left is untouched
        from archivist.crm_ledger import ArchivedProcessMember

        assert {m.record_id for m in session.query(ArchivedProcessMember)} == PROCESS_A

    recover_backup(config, folder, utcnow(), force=True)


def test_crm_recovering_over_the_same_installation_names_the_rows_it_would_lose(
    crm, tmp_path
):
    """Recovering over the installation itself (the usual disaster) needs --force for the
    records it holds: the refusal names the CRM rows that would be in neither place too, and
    a forced recovery says how many it lost."""
    from indexer.jobs.backup import InstallationNotEmpty, create_backup, recover_backup

    folder = tmp_path / "backup"
    create_backup(crm, folder, utcnow())  # before anything was archived
    run_archive_job(crm, utcnow())
    config = crm.config
    crm.close()
    with pytest.raises(InstallationNotEmpty, match=r"5 CRM rows left their tables .* case:10.*"
                                                   r"--force to replace them and lose those"):
        recover_backup(config, folder, utcnow())
    report = recover_backup(config, folder, utcnow(), force=True)
    assert report.crm_rows_lost == 5


def test_crm_a_forced_recovery_killed_half_way_is_finished_by_a_rerun_that_reports_its_loss(
    crm, tmp_path
):
    """Killed once it began replacing the installation, a forced recovery is finished by
    running it again (no --force needed, nothing else opens the installation meanwhile), and
    that run reports the CRM rows the first one found lost: the first wrote no audit entry."""
    import signal

    from indexer.jobs.backup import create_backup
    from tests.test_cli import archivist

    folder = tmp_path / "backup"
    create_backup(crm, folder, utcnow())  # before anything was archived
    run_archive_job(crm, utcnow())
    config = crm.config
    crm.close()
    recover = ("backup", "recover", str(folder), "--config", str(config.path))
    killed = archivist(*recover, "--force", env={"ARCHIVIST_CRASH_AT": "recover.installed:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    refused = archivist("stats", "--config", str(config.path))
    assert refused.returncode == 1 and "stopped half-way" in refused.stderr

    again = archivist(*recover)

    assert again.returncode == 0, again.stderr
    assert "warning: 5 CRM rows that left their tables after the backup" in again.stderr
    assert archivist("verify", "--config", str(config.path)).returncode == 0


def test_crm_a_ledger_made_before_it_named_versions_gains_them_on_postgresql(crm, pg_url):
    """The ledger of rows that left, as an earlier version made it (no `seq`), gains the
    column when the installation opens, and a run notes the version each row left as."""
    from archivist.active_db import upgrade_schema
    from archivist.crm_ledger import ArchivedProcessMember

    run_sql(pg_url, "ALTER TABLE archived_process_members DROP COLUMN seq")
    upgrade_schema(crm.engine)
    upgrade_schema(crm.engine)  # (idempotent)
    run_archive_job(crm, utcnow())

    with crm.sessions.begin() as session:
        seqs = {m.record_id: m.seq for m in session.query(ArchivedProcessMember)}
    assert seqs == {record_id: crm.store.info(record_id).seq for record_id in PROCESS_A}


@pytest.mark.parametrize("how", ["dispose", "erase"])
def test_crm_rows_disposed_of_or_erased_since_the_backup_do_not_refuse_its_recovery(
    crm, tmp_path, how
):
    """Rows that left the CRM's tables after the backup was taken and were then disposed of
    or erased are in neither place on purpose: the ledger of rows that left forgets them, and
    the recovery of the older backup goes on without --force."""
    import shutil

    from archivist.crm_ledger import ArchivedProcessMember
    from indexer.jobs.backup import create_backup, recover_backup
    from indexer.jobs.disposal import dispose_due_records

    folder = tmp_path / "backup"
    create_backup(crm, folder, utcnow())  # before anything was archived
    run_archive_job(crm, utcnow())
    assert crm.store.find_archived(PROCESS_A) == PROCESS_A
    if how == "dispose":
        report = dispose_due_records(
            crm.sessions, crm.store, crm.config.retention,
            utcnow() + timedelta(days=365 * 30), utcnow(),
        )
        assert report.purged == len(PROCESS_A)
    else:
        erase_records(crm, customer_id="1", actor="admin", at=utcnow())
    assert {crm.store.info(rid).state for rid in PROCESS_A} == {
        "purged" if how == "dispose" else "erased"
    }
    with crm.sessions.begin() as session:
        assert session.query(ArchivedProcessMember).count() == 0

    second = tmp_path / "second"
    second.mkdir()
    shutil.copy2(tmp_path / "archive.key", second / "archive.key")
    config = load_config(write_config(second, crm.config.active_url))
    recover_backup(config, folder, utcnow())  # no --force needed


def test_crm_a_hold_reaches_rows_in_the_crm_s_tables_and_in_the_archive(crm):
    """Placing a hold says when it holds nothing: for the CRM's tables that is their rows (by
    key, by the customer column and the rows under them, by a category column or constant)."""
    from indexer.hold_reach import hold_reaches_a_record

    run_archive_job(crm, utcnow())
    reaches = {
        ("record", "case:10"): True,  # archived
        ("record", "case:40"): True,  # in the CRM
        ("record", "case:999"): False,
        ("customer", "1"): True,
        ("customer", "2"): True,  # only in the CRM
        ("customer", "99"): False,
        ("category", "SUPPORT"): True,  # a column, casefolded
        ("category", "support\u200b"): False,
    }
    assert {k: hold_reaches_a_record(crm, *k) for k in reaches} == reaches


def test_crm_a_running_server_reads_a_record_page_after_the_crm_drops_a_column(crm):
    """The record page shows the process's live rows from the CRM's tables: read as the
    tables are now, not as the server found them when it started."""
    run_archive_job(crm, utcnow())
    with http_client(crm, "agent") as (client, headers):
        assert client.get("/api/v1/records/case:10", headers=headers).status_code == 200
        run_sql(crm.config.active_url, "ALTER TABLE cases DROP COLUMN score")
        response = client.get("/api/v1/records/case:10", headers=headers)
        assert response.status_code == 200, response.json
        assert response.json["record"]["id"] == "case:10"


def test_crm_rows_are_held_to_their_own_columns_not_to_archivist_s(crm):
    """The length limits of Archivist's own active table (a status of 64 characters) are
    not the CRM's: a row with a longer state is archived like any other."""
    long_state = "closed after review by the regional escalation board, pending nothing"
    assert len(long_state) > 64
    run_sql(crm.config.active_url, f"""
        INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at)
        VALUES (62, 1, 'support', 'long state', '{long_state}', '{OLD}', '{OLD}');
    """)
    run_archive_job(crm, utcnow())
    assert crm.store.find_archived(["case:62"]) == {"case:62"}
    assert crm.store.get("case:62")["status"] == long_state


def test_crm_rows_restored_after_the_backup_are_restored_once_it_is_recovered(crm, tmp_path):
    """Archived in the backup, back in the CRM's tables since: once the backup is recovered
    they are marked restored, never both archived and live."""
    import shutil

    from indexer.jobs.backup import create_backup, recover_backup

    run_archive_job(crm, utcnow())
    folder = tmp_path / "backup"
    create_backup(crm, folder, utcnow())
    restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, "case:10", "admin", utcnow())
    live = snapshot(crm)
    assert PROCESS_A <= set(live)

    second = tmp_path / "second"
    second.mkdir()
    shutil.copy2(tmp_path / "archive.key", second / "archive.key")
    config = load_config(write_config(second, crm.config.active_url))
    recover_backup(config, folder, utcnow())

    with Services.open(config) as target:
        assert {target.store.info(rid).state for rid in PROCESS_A} == {"restored"}
        assert target.store.find_archived(PROCESS_A) == set()
        assert target.index.search(SearchQuery(q="退款")).total == 0
        assert verify_all(target).problems == []
        assert snapshot(target) == live


@pytest.fixture
def sql_datestyle(pg_url: str) -> Iterator[str]:
    """The test database set to print dates as `SQL, DMY` (05/01/2023 09:00:00 UTC)."""
    alter = (
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {}', current_database()); END $$"
    )
    run_sql(pg_url, alter.format("SET DateStyle = ''SQL, DMY''"))
    try:
        yield pg_url
    finally:
        run_sql(pg_url, alter.format("RESET DateStyle"))


def test_crm_a_database_printing_dates_in_another_style_archives_and_restores(
    tmp_path: Path, sql_datestyle: str
) -> None:
    run_sql(sql_datestyle, (EXAMPLE / "schema.sql").read_text())
    run_sql(sql_datestyle, DATA)
    config = load_config(write_config(tmp_path, sql_datestyle))
    with Services.open(config, create=True) as services:
        with services.sessions.begin() as session:
            add_hold(session, "customer", "3", "litigation", utcnow())
        before = snapshot(services)
        assert run_archive_job(services, utcnow()).archived == len(PROCESS_A)
        restore_crm_process(
            services.sessions, services.store, services.index, services.crm, "case:10",
            "tester", utcnow(),
        )
        after = snapshot(services)
    assert {rid: after[rid] for rid in PROCESS_A} == {rid: before[rid] for rid in PROCESS_A}


def test_crm_rows_with_floats_written_with_an_exponent_verify(tmp_path: Path, pg_url: str):
    """A record is hashed from its canonical JSON: a float such as 1e-07 has one spelling
    there, whichever way the record was made (a reflected column name is a str subclass)."""
    run_sql(pg_url, """
        CREATE TABLE readings (id int PRIMARY KEY, queue text NOT NULL, at timestamptz NOT NULL,
                               tag text, value double precision);
        INSERT INTO readings VALUES (1, 'lab', '2020-01-01', 'tiny', 1e-07),
                                    (2, 'lab', '2020-01-01', 'huge', 1e308);
    """)
    config = load_config(write_config(tmp_path, pg_url, note_table_mapping("readings", "r:")))
    with Services.open(config, create=True) as services:
        assert run_archive_job(services, utcnow()).archived == 2
        assert services.store.get("r:1")["attributes"]["columns"]["value"] == 1e-07
        assert verify_all(services).problems == []


PADDED_MAPPING = """[[active.table]]
name = "padded"
key = "id"
id_prefix = "p:"
kind = "note"
category = { column = "cat" }
customer_id = { column = "cust" }
status = "open"
subject = { column = "tag" }
created_at = { column = "upd" }
updated_at = { column = "upd" }

[[active.table]]
name = "coded"
key = "code"
id_prefix = "k:"
kind = "note"
category = "support"
status = "open"
created_at = { column = "upd" }
updated_at = { column = "upd" }

[retention.category.finance]
archive_after_days = 180
"""


def test_crm_char_columns_are_matched_without_their_padding_and_restore_as_they_were(
    tmp_path: Path, pg_url: str
):
    """PostgreSQL pads a char(n) value with spaces and ignores them (casting it to text drops
    them, writing it back pads it again): a row's customer and category are read without
    them, so holds, retention, erasure and search find them, and the row comes back the same."""
    run_sql(pg_url, """
        CREATE TABLE padded (id int PRIMARY KEY, cust char(10), cat char(10) NOT NULL,
                             upd timestamptz NOT NULL, tag char(6), code char(4));
        INSERT INTO padded VALUES
          (1, 'C1', 'finance', now() - interval '200 days', 'one', 'x'),
          (2, 'C2', 'support', '2020-01-01', 'two', NULL),
          (3, 'C3', 'support', '2020-01-01', 'three', ' y '),
          (4, 'C4', 'support', now() - interval '200 days', 'four', NULL);
        CREATE TABLE coded (code char(6) PRIMARY KEY, upd timestamptz NOT NULL);
        INSERT INTO coded VALUES ('K1', '2020-01-01');
    """)
    rows = ("SELECT 'p:' || id, row_to_json(t)::text FROM padded t "
            "UNION ALL SELECT 'k:' || code::text, row_to_json(c)::text FROM coded c")
    config = load_config(write_config(tmp_path, pg_url, PADDED_MAPPING))
    with Services.open(config, create=True) as crm:
        before = _rows(crm, rows)
        with crm.sessions.begin() as session:
            add_hold(session, "customer", "C2", "litigation", utcnow())
        with crm.read_sessions.begin() as session:
            assert count_customer_rows(session, crm.crm, "C1") == 1

        report = run_archive_job(crm, utcnow())

        assert report.archived == 3
        assert crm.store.find_archived(["p:1", "p:2", "p:3", "p:4", "k:K1"]) == {
            "p:1", "p:3", "k:K1"}
        record = crm.store.get("p:1")
        assert (record["customer_id"], record["category"], record["subject"]) == (
            "C1", "finance", "one")
        assert record["attributes"]["columns"]["code"] == "x"
        assert crm.store.get("p:3")["attributes"]["columns"]["code"] == " y"
        assert [h.id for h in crm.index.search(SearchQuery(q="customer_id:C1")).hits] == ["p:1"]
        assert erase_records(crm, customer_id="C1", actor="t", at=utcnow(),
                             dry_run=True).ids == ["p:1"]
        with crm.read_sessions.begin() as session:
            assert count_customer_rows(session, crm.crm, "C2") == 1
        with pytest.raises(OnHold):
            erase_records(crm, customer_id="C2", actor="t", at=utcnow())
        assert erase_records(crm, customer_id="C3", actor="t", at=utcnow()).ids == ["p:3"]

        for record_id in ("p:1", "k:K1"):
            restore_crm_process(crm.sessions, crm.store, crm.index, crm.crm, record_id, "t",
                                utcnow())
        after = _rows(crm, rows)
        assert after == {k: v for k, v in before.items() if k != "p:3"}
        assert '"cust":"C1        "' in after["p:1"]
        assert verify_all(crm).problems == []


def test_crm_a_process_the_crm_edits_after_a_failed_move_stays_active_without_grace(
    crm, monkeypatch
):
    """A move that failed once its records were stored is settled by the next run: a process
    the CRM changed meanwhile stays in the CRM as the rows it never left, aged by their own
    `updated_at` (no restore grace), so that run archives it again as it is now."""
    monkeypatch.setattr("archive_store.faults._passes", {})  # counted per process
    monkeypatch.setenv("ARCHIVIST_FAIL_AT", "archive.after_store:1")
    with pytest.raises(OSError):
        run_archive_job(crm, utcnow())
    monkeypatch.delenv("ARCHIVIST_FAIL_AT")
    assert {e.record_id for e in crm.store.iter_pending()} == PROCESS_A
    run_sql(crm.config.active_url, "UPDATE notes SET body = body || ' (edited)' WHERE id = 1")

    report = run_archive_job(crm, utcnow())

    assert report.archived == len(PROCESS_A)
    assert crm.store.find_archived(PROCESS_A) == PROCESS_A
    assert crm.store.get("note:1")["body"] == "approved (edited)"
    assert {e.restored_at for e in crm.store.entries(PROCESS_A).values()} == {None}
    assert verify_all(crm).problems == []


@pytest.mark.parametrize("fault", ["ARCHIVIST_FAIL_AT", "ARCHIVIST_CRASH_AT"])
def test_crm_a_run_that_fails_or_is_killed_part_way_records_what_it_archived(crm, fault):
    """A full disk, or a kill, at the third batch that stores anything: stats' last run counts
    the records the first two batches moved (process A, then case 60), as over Archivist's
    own table."""
    import json

    from tests.test_cli import archivist

    run_sql(crm.config.active_url, f"""
        INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at)
        VALUES (60, 1, 'support', 'sixty', 'closed', '{OLD}', '{OLD}'),
               (61, 1, 'support', 'sixty-one', 'closed', '{OLD}', '{OLD}');
    """)
    config = str(crm.config.path)
    run = archivist("archive", "--config", config, env={fault: "archive.before_store:3"})
    assert run.returncode != 0

    stats = json.loads(archivist("stats", "--config", config).stdout)
    assert crm.store.find_archived([*PROCESS_A, "case:60", "case:61"]) == {*PROCESS_A, "case:60"}
    assert stats["last_run"]["archived"] == len(PROCESS_A) + 1
    assert stats["last_run"]["error"]


def test_crm_a_run_failing_after_a_batch_left_the_crm_counts_that_batch(crm):
    """A full disk as the store clears the third batch's move marks, after its rows were
    deleted: case 61 left the CRM, so the failed run counts it too."""
    import json

    from tests.test_cli import archivist

    run_sql(crm.config.active_url, f"""
        INSERT INTO cases (id, account_id, queue, title, state, opened_at, last_activity_at)
        VALUES (60, 1, 'support', 'sixty', 'closed', '{OLD}', '{OLD}'),
               (61, 1, 'support', 'sixty-one', 'closed', '{OLD}', '{OLD}');
    """)
    config = str(crm.config.path)
    run = archivist("archive", "--config", config,
                    env={"ARCHIVIST_FAIL_AT": "archive.after_commit:3"})
    assert run.returncode != 0

    stats = json.loads(archivist("stats", "--config", config).stdout)
    assert crm.store.find_archived(["case:61"]) == {"case:61"}
    assert stats["last_run"]["archived"] == len(PROCESS_A) + 2
    assert "No space left on device" in stats["last_run"]["error"]


def test_crm_a_row_without_an_updated_at_keeps_its_process_and_says_why(
    tmp_path: Path, pg_url: str, caplog
):
    """A row whose updated_at column is NULL has no age: its process stays in the CRM, and
    each run logs the row once, as for any other row it cannot archive."""
    run_sql(pg_url, """
        CREATE TABLE steps (id bigint PRIMARY KEY, up bigint REFERENCES steps, queue text NOT NULL,
                            at timestamptz NOT NULL, upd timestamptz, tag text);
        INSERT INTO steps VALUES (1, NULL, 'support', '2020-01-01', '2020-01-01', 'root'),
                                 (2, 1, 'support', '2020-01-01', NULL, 'no age'),
                                 (3, NULL, 'support', '2020-01-01', '2020-01-01', 'alone');
    """)
    mapping = note_table_mapping("steps", "s:").replace(
        'updated_at = { column = "at" }',
        'updated_at = { column = "upd" }\nparent = { column = "up", table = "steps" }')
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        for run in (1, 2):
            report = run_archive_job(crm, utcnow())
            assert crm.store.find_archived(["s:1", "s:2", "s:3"]) == {"s:3"}
            assert report.held_back == 1
            logged = [r.getMessage() for r in caplog.records if "row s:2 " in r.getMessage()]
            assert logged == [
                "row s:2 is not archived: its updated_at column (upd) is NULL, so it has no age"
            ] * run


def test_crm_rows_that_are_each_other_s_parents_stay_in_the_crm_and_say_why(
    tmp_path: Path, pg_url: str, caplog
):
    """The CRM's foreign keys let two rows name each other as parent (set in one statement);
    a restore inserts parents first, one row at a time, and could never bring them back: such
    a process is not archived, and the run says why."""
    run_sql(pg_url, """
        CREATE TABLE loops (id bigint PRIMARY KEY, up bigint REFERENCES loops, queue text NOT NULL,
                            at timestamptz NOT NULL, tag text);
        INSERT INTO loops VALUES (1, NULL, 'support', '2020-01-01', 'a'),
                                 (2, NULL, 'support', '2020-01-01', 'b'),
                                 (3, 2, 'support', '2020-01-01', 'under the loop'),
                                 (4, NULL, 'support', '2020-01-01', 'alone');
        UPDATE loops SET up = CASE id WHEN 1 THEN 2 ELSE 1 END WHERE id IN (1, 2);
    """)
    mapping = note_table_mapping("loops", "l:").replace(
        'updated_at = { column = "at" }',
        'updated_at = { column = "at" }\nparent = { column = "up", table = "loops" }')
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        report = run_archive_job(crm, utcnow())
        assert crm.store.find_archived([f"l:{n}" for n in range(1, 5)]) == {"l:4"}
        assert report.held_back == 1
        assert any(
            "(3 rows) not archived: rows l:" in r.getMessage()
            and "are each other's parents in a loop" in r.getMessage()
            for r in caplog.records
        )
        with crm.engine.connect() as connection:
            assert connection.scalars(text("SELECT id FROM loops ORDER BY id")).all() == [1, 2, 3]


def test_crm_a_text_parent_column_finds_its_char_keyed_parent(tmp_path: Path, pg_url: str):
    """A child's text column naming a char(n) key holds the value without its padding: the
    child is found under its parent, so an aged case with a young message stays in the CRM
    whole, and moves with it once both are aged."""
    run_sql(pg_url, """
        CREATE TABLE kcases (code char(8) PRIMARY KEY, upd timestamptz NOT NULL);
        CREATE TABLE kmsgs (id int PRIMARY KEY, case_code text, upd timestamptz NOT NULL);
        INSERT INTO kcases VALUES ('K1', '2020-01-01'), ('K2', '2020-01-01');
        INSERT INTO kmsgs VALUES (1, 'K1', now()), (2, 'K2', '2020-01-01');
    """)
    mapping = """[[active.table]]
name = "kcases"
key = "code"
id_prefix = "case:"
kind = "ticket"
category = "support"
status = "open"
created_at = { column = "upd" }
updated_at = { column = "upd" }

[[active.table]]
name = "kmsgs"
key = "id"
id_prefix = "msg:"
kind = "note"
category = "support"
status = "open"
created_at = { column = "upd" }
updated_at = { column = "upd" }
parent = { column = "case_code", table = "kcases" }
"""
    with Services.open(load_config(write_config(tmp_path, pg_url, mapping)), create=True) as crm:
        run_archive_job(crm, utcnow())
        assert crm.store.find_archived(["case:K1", "msg:1", "case:K2", "msg:2"]) == {
            "case:K2", "msg:2"}
        assert crm.store.info("msg:2").parent_id == "case:K2"
        with crm.engine.connect() as connection:
            assert connection.scalars(text("SELECT code FROM kcases")).all() == ["K1      "]
            assert connection.scalars(text("SELECT id FROM kmsgs")).all() == [1]
