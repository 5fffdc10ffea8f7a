-- R-B3 loop breakers.
--
-- The per-sender intake budget counts, per connector, the copies a sender brought
-- in the window. A copy's sender is set when it is decided and it counts: every
-- outcome but duplicate and own_mail, so a flood that goes on keeps itself over
-- the budget. NULL for copies that do not count and for outgoing mail.
ALTER TABLE emails ADD COLUMN sender TEXT;
CREATE INDEX emails_by_sender ON emails(connector, sender, processed_at)
    WHERE sender IS NOT NULL;

-- The per-work-item reopen budget: one row each time a mail reopened a RESOLVED
-- item (R-E3). Rows older than the window are pruned with the fingerprints.
CREATE TABLE reopens (
    ref      TEXT    NOT NULL,
    email_id INTEGER,
    at       REAL    NOT NULL
);
CREATE INDEX reopens_by_ref ON reopens(ref, at);

-- /metrics counts the waiting outbound mail and its oldest at every scrape; the
-- queue keeps every row it ever had, so the count must not scan them all.
CREATE INDEX outbound_queue_waiting ON outbound_queue(created_at) WHERE state = 'queued';

-- R-O4: the recipients still to be tried when a relay refused only some of them
-- with a temporary error (NULL: all of the email's recipients).
ALTER TABLE outbound_queue ADD COLUMN pending_rcpts TEXT;
