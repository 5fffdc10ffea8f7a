-- The pipeline (SPEC §3): work items, routes, fingerprints, events, outbound queue.

ALTER TABLE emails ADD COLUMN f1 TEXT;
ALTER TABLE emails ADD COLUMN automated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE emails ADD COLUMN processed_at REAL;
CREATE INDEX emails_f1 ON emails(connector, f1);
CREATE INDEX emails_outcome ON emails(outcome, id);

ALTER TABLE connectors ADD COLUMN route_on_envelope INTEGER NOT NULL DEFAULT 0;

-- One sequence for the numbers of every kind of work item (R-W1).
CREATE TABLE ref_numbers (number INTEGER PRIMARY KEY AUTOINCREMENT, at REAL);

CREATE TABLE work_items (
    ref                   TEXT PRIMARY KEY,
    number                INTEGER NOT NULL UNIQUE,
    kind                  TEXT    NOT NULL,
    uuid                  TEXT    NOT NULL UNIQUE,
    connector             TEXT    NOT NULL,
    mode                  TEXT    NOT NULL DEFAULT 'live',
    state                 TEXT    NOT NULL,
    wait_type             TEXT,
    new_info              INTEGER NOT NULL DEFAULT 0,
    parent                TEXT,
    split_into            TEXT    NOT NULL DEFAULT '[]',
    merged_into           TEXT,
    converted_to          TEXT,
    linked                TEXT    NOT NULL DEFAULT '[]',
    copied_from           TEXT,
    contacts              TEXT    NOT NULL DEFAULT '[]',
    custom_data           TEXT    NOT NULL DEFAULT '{}',
    send_automated_emails INTEGER NOT NULL DEFAULT 0,
    created_at            REAL    NOT NULL,
    updated_at            REAL    NOT NULL
);
CREATE INDEX work_items_connector ON work_items(connector, state);

-- The communications of a work item: which emails, incoming or outgoing.
CREATE TABLE item_emails (
    ref      TEXT    NOT NULL REFERENCES work_items(ref),
    email_id INTEGER NOT NULL REFERENCES emails(id),
    action   TEXT    NOT NULL,            -- created | appended | sent | copied
    at       REAL    NOT NULL,
    PRIMARY KEY (ref, email_id)
);
CREATE INDEX item_emails_by_email ON item_emails(email_id);

CREATE TABLE routes (
    id                    INTEGER PRIMARY KEY,
    connector             TEXT    NOT NULL REFERENCES connectors(name),
    name                  TEXT    NOT NULL,
    email_address         TEXT    NOT NULL,
    folder_path           TEXT    NOT NULL DEFAULT '',
    rules                 TEXT    NOT NULL DEFAULT '{}',
    target                TEXT    NOT NULL DEFAULT '{}',
    send_automated_emails INTEGER NOT NULL DEFAULT 0,
    ack_cc                INTEGER NOT NULL DEFAULT 0,
    test_mode             INTEGER NOT NULL DEFAULT 0,
    enabled               INTEGER NOT NULL DEFAULT 1,
    ord                   INTEGER NOT NULL,
    fallback              INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX routes_by_connector ON routes(connector, ord);

-- R-D1/R-D2: which target already received which fingerprint.
CREATE TABLE fingerprints (
    target     TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    email_id   INTEGER NOT NULL,
    created_at REAL    NOT NULL,
    PRIMARY KEY (target, value)
) WITHOUT ROWID;
CREATE INDEX fingerprints_age ON fingerprints(created_at);

-- R-X1: the ordered events feed.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT    NOT NULL,
    ref        TEXT,
    email_id   INTEGER,
    data       TEXT    NOT NULL DEFAULT '{}',
    created_at REAL    NOT NULL
);

-- R-O4: mail waiting to leave (delivery is a later issue; acks queue here).
CREATE TABLE outbound_queue (
    email_id        INTEGER PRIMARY KEY REFERENCES emails(id),
    state           TEXT    NOT NULL DEFAULT 'queued',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    created_at      REAL    NOT NULL
);

-- R-R2 sender companies: address or *@domain -> company.
CREATE TABLE contacts (
    id      INTEGER PRIMARY KEY,
    pattern TEXT NOT NULL UNIQUE,
    company TEXT NOT NULL
);
