-- R-B3's acknowledgement budget, counted by recipient. Each automated mail leaves one
-- row per recipient (lower case), so the budget's question "how many automated mails
-- did this address get in the last day?" is a range on (address, at), whatever the
-- store holds; before, it was a LIKE over every email ever stored.
CREATE TABLE automated_sent (
    address  TEXT    NOT NULL,
    at       REAL    NOT NULL,
    email_id INTEGER NOT NULL
);
CREATE INDEX automated_sent_by_address ON automated_sent(address, at);

-- What earlier releases sent in the last day still counts.
INSERT INTO automated_sent (address, at, email_id)
    SELECT lower(r.value), e.received_at, e.id
    FROM emails e, json_each(e.rcpt_to) r
    WHERE e.direction = 'outgoing' AND e.automated = 1
      AND e.received_at >= CAST(strftime('%s', 'now') AS REAL) - 86400;
