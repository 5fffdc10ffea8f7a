-- The journal: every received message, stored once, and one email row per
-- receiving connector (R-I7). Raw bytes are kept exactly as received.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    raw         BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    received_at REAL    NOT NULL
);

CREATE TABLE emails (
    id          INTEGER PRIMARY KEY,
    message     INTEGER NOT NULL REFERENCES messages(id),
    connector   TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    direction   TEXT    NOT NULL DEFAULT 'incoming',
    mail_from   TEXT,
    rcpt_to     TEXT    NOT NULL DEFAULT '[]',
    message_id  TEXT,
    folder_path TEXT,
    peer        TEXT,
    helo        TEXT,
    received_at REAL    NOT NULL,
    -- 'journaled' until the pipeline decides; then 'done'
    state       TEXT    NOT NULL DEFAULT 'journaled',
    outcome     TEXT,
    reason      TEXT,
    targets     TEXT    NOT NULL DEFAULT '[]',
    trace       TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX emails_by_message_id ON emails(message_id);
CREATE INDEX emails_journaled ON emails(id) WHERE state = 'journaled';

-- The directory, as far as intake needs it (R-C1).
CREATE TABLE connectors (
    name            TEXT PRIMARY KEY,
    service         TEXT    NOT NULL,
    direction       TEXT    NOT NULL DEFAULT 'incoming',
    protocol        TEXT    NOT NULL DEFAULT 'lmtp',
    primary_address TEXT    NOT NULL,
    aliases         TEXT    NOT NULL DEFAULT '[]',
    enabled         INTEGER NOT NULL DEFAULT 1,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
