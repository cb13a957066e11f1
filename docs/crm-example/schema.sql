-- A small CRM on PostgreSQL: accounts, cases (a case may belong to a parent case), the messages
-- and notes of a case, and attachments of messages. Archivist maps cases, case_messages and
-- notes (mapping.toml); accounts and attachments stay the CRM's alone.

CREATE TABLE accounts (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    region      text
);

CREATE TABLE cases (
    id               bigint PRIMARY KEY,
    account_id       bigint NOT NULL REFERENCES accounts (id),
    parent_case_id   bigint REFERENCES cases (id) ON DELETE RESTRICT,
    queue            text NOT NULL,
    assignee         text,
    title            text,
    description      text NOT NULL DEFAULT '',
    state            text NOT NULL,
    priority         smallint NOT NULL DEFAULT 3,
    amount           numeric(12, 2),
    score            double precision,
    escalated        boolean NOT NULL DEFAULT false,
    due_on           date,
    opened_at        timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL,
    local_opened     timestamp,
    external_ref     uuid,
    tags             text[],
    custom           jsonb,
    raw_payload      json,
    signature        bytea,
    created_stamp    timestamptz,
    modified_stamp   timestamptz
);

CREATE TABLE case_messages (
    msg_id      uuid PRIMARY KEY,
    case_id     bigint NOT NULL REFERENCES cases (id) ON DELETE RESTRICT,
    queue       text NOT NULL,
    subject     text,
    text        text NOT NULL,
    sent_at     timestamptz NOT NULL,
    headers     jsonb,
    ratings     integer[],
    sent_on     date[]
);

CREATE TABLE notes (
    id          bigint PRIMARY KEY,
    case_id     bigint NOT NULL REFERENCES cases (id) ON DELETE RESTRICT,
    author      text,
    body        text NOT NULL,
    written_at  timestamp NOT NULL,
    minutes     numeric
);

-- Not mapped: a message with an attachment stays in the CRM (its case is `blocked`).
CREATE TABLE attachments (
    id          bigint PRIMARY KEY,
    message_id  uuid NOT NULL REFERENCES case_messages (msg_id) ON DELETE RESTRICT,
    file_name   text NOT NULL,
    content     bytea
);

-- Foreign keys are checked on every delete of the row they reference: index their columns.
CREATE INDEX cases_parent_case_id ON cases (parent_case_id);
CREATE INDEX case_messages_case_id ON case_messages (case_id);
CREATE INDEX notes_case_id ON notes (case_id);
CREATE INDEX attachments_message_id ON attachments (message_id);

-- Every insert and update of a case is logged, and stamped: created_stamp once, when not given;
-- modified_stamp on every update.
CREATE TABLE case_log (
    id       bigserial PRIMARY KEY,
    case_id  bigint NOT NULL,
    op       text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION stamp_case() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.created_stamp := coalesce(NEW.created_stamp, clock_timestamp());
    ELSE
        NEW.modified_stamp := clock_timestamp();
    END IF;
    INSERT INTO case_log (case_id, op) VALUES (NEW.id, TG_OP);
    RETURN NEW;
END $$;

CREATE TRIGGER cases_stamp BEFORE INSERT OR UPDATE ON cases
    FOR EACH ROW EXECUTE FUNCTION stamp_case();
