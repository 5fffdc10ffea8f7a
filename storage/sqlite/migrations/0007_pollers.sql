-- R-C1 incoming settings of polled connectors (IMAP, POP3, Graph). Only the pollers
-- read them, so they live in one JSON object; the secrets beside the password too.
ALTER TABLE connectors ADD COLUMN incoming TEXT NOT NULL DEFAULT '{}';
ALTER TABLE connectors ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';

-- R-I4: what each poller has journaled, per mailbox folder, keyed by the server's id
-- of the message (IMAP "uidvalidity:uid", POP3 UIDL, Graph message id). Written in
-- the same commit as the journaled copy, so a crash between that commit and the
-- delete on the server never stores a message twice. email_id NULL marks a message
-- skipped by an R-B5 watermark. Rows for messages gone from the folder are pruned.
CREATE TABLE polled (
    connector  TEXT    NOT NULL,
    folder     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    email_id   INTEGER,
    fetched_at REAL    NOT NULL,
    PRIMARY KEY (connector, folder, key)
) WITHOUT ROWID;

-- R-C3: the last test of each connector; enabling after a failed test needs force.
CREATE TABLE connector_tests (
    connector TEXT    PRIMARY KEY,
    ok        INTEGER NOT NULL,
    detail    TEXT    NOT NULL,
    tested_at REAL    NOT NULL
);
