"""SQLite SQL of outgoing mail (R-O*): composing into the queue, the R-B3 budget, and
the queue the delivery worker drains. A mixin of :class:`storage.sqlite.txn.SqliteTxn`;
``storage.sqlite.ports`` offers the queue's part as :class:`storage.base.OutboundQueue`."""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

from storage.base import DeliveryState, OutboundMail


class OutgoingSql:
    """Outgoing mail inside a transaction."""
    conn: sqlite3.Connection
    now: float

    def _one(self, sql: str, params: Iterable = ()) -> Any: ...   # SqliteTxn's

    def _all(self, sql: str, params: Iterable = ()) -> list: ...

    async def store_outgoing(self, raw: bytes, *, connector: str, message_id: str,
                             mail_from: str, rcpt_to: list[str], automated: bool,
                             summary: dict | None = None) -> int:
        """Keep ``raw`` as an outgoing email and queue it for delivery; its email id.
        ``summary``: the headers the API shows."""
        message = self.conn.execute(
            "INSERT INTO messages (raw, size, received_at) VALUES (?, ?, ?)",
            (raw, len(raw), self.now)).lastrowid
        email_id = self.conn.execute(
            "INSERT INTO emails (message, connector, source, direction, mail_from, rcpt_to,"
            " message_id, received_at, state, automated, processed_at, summary)"
            " VALUES (?, ?, 'gateway', 'outgoing', ?, ?, ?, ?, 'done', ?, ?, ?)",
            (message, connector, mail_from, json.dumps(rcpt_to), message_id,
             self.now, int(automated), self.now,
             json.dumps(summary) if summary else None)).lastrowid
        self.conn.execute("INSERT INTO outbound_queue (email_id, next_attempt_at, created_at)"
                          " VALUES (?, ?, ?)", (email_id, self.now, self.now))
        if automated:       # R-B3: what the acknowledgement budget counts, by recipient
            self.conn.executemany(
                "INSERT INTO automated_sent (address, at, email_id) VALUES (?, ?, ?)",
                [(address.lower(), self.now, email_id) for address in dict.fromkeys(rcpt_to)])
        return email_id

    async def automated_sent_to(self, address: str, *, since: float) -> int:
        """R-B3: automated mails composed for ``address`` (case ignored) since ``since``."""
        return self._one("SELECT COUNT(*) FROM automated_sent WHERE address = ? AND at >= ?",
                         (address.lower(), since))[0]

    async def prune_automated_sent(self, older_than: float) -> int:
        return self.conn.execute("DELETE FROM automated_sent WHERE at < ?",
                                 (older_than,)).rowcount

    # -- the queue (read and finished by the delivery worker) --------------------------

    async def outbound_due(self, now: float, limit: int) -> list[OutboundMail]:
        rows = self._all(
            "SELECT q.email_id, q.attempts, q.created_at, e.connector, e.mail_from,"
            " COALESCE(q.pending_rcpts, e.rcpt_to),"
            " e.message_id, m.raw, (SELECT ref FROM item_emails WHERE email_id = q.email_id"
            " LIMIT 1) FROM outbound_queue q JOIN emails e ON e.id = q.email_id"
            " JOIN messages m ON m.id = e.message"
            " WHERE q.state = 'queued' AND q.next_attempt_at <= ? ORDER BY q.next_attempt_at,"
            " q.email_id LIMIT ?", (now, limit))
        return [OutboundMail(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6],
                             bytes(r[7]), r[8]) for r in rows]

    async def outbound_next_due(self) -> float | None:
        return self._one("SELECT MIN(next_attempt_at) FROM outbound_queue"
                         " WHERE state = 'queued'")[0]

    async def outbound_queued(self) -> int:
        return self._one("SELECT COUNT(*) FROM outbound_queue WHERE state = 'queued'")[0]

    async def outbound_delivery(self, email_id: int) -> DeliveryState | None:
        row = self._one("SELECT state, attempts, last_error, next_attempt_at FROM"
                        " outbound_queue WHERE email_id = ?", (email_id,))
        return DeliveryState(*row) if row is not None else None

    async def outbound_finish(self, email_id: int, *, state: str, attempts: int,
                              error: str | None, next_attempt_at: float,
                              pending: list[str] | None) -> None:
        self.conn.execute("UPDATE outbound_queue SET state = ?, attempts = ?, last_error = ?,"
                          " next_attempt_at = ?, pending_rcpts = COALESCE(?, pending_rcpts)"
                          " WHERE email_id = ?",
                          (state, attempts, error, next_attempt_at,
                           json.dumps(pending) if pending else None, email_id))
