"""SQL of the outbound queue (R-O4): what is due, and what happened to each try."""
from __future__ import annotations

import json

import aiosqlite


async def due(db: aiosqlite.Connection, now: float, limit: int) -> list[dict]:
    """Queued mail whose next try is due, oldest first, with what sending needs."""
    async with db.execute(
            "SELECT q.email_id, q.attempts, q.created_at, e.connector, e.mail_from,"
            " COALESCE(q.pending_rcpts, e.rcpt_to),"
            " e.message_id, m.raw, (SELECT ref FROM item_emails WHERE email_id = q.email_id"
            " LIMIT 1) FROM outbound_queue q JOIN emails e ON e.id = q.email_id"
            " JOIN messages m ON m.id = e.message"
            " WHERE q.state = 'queued' AND q.next_attempt_at <= ? ORDER BY q.next_attempt_at,"
            " q.email_id LIMIT ?", (now, limit)) as cursor:
        rows = await cursor.fetchall()
    return [{"email_id": r[0], "attempts": r[1], "created_at": r[2], "connector": r[3],
             "mail_from": r[4], "rcpt_to": json.loads(r[5]), "message_id": r[6],
             "raw": bytes(r[7]), "ref": r[8]} for r in rows]


async def next_due(db: aiosqlite.Connection) -> float | None:
    async with db.execute("SELECT MIN(next_attempt_at) FROM outbound_queue"
                          " WHERE state = 'queued'") as cursor:
        (when,) = await cursor.fetchone()
    return when


async def finish(db: aiosqlite.Connection, email_id: int, *, state: str, attempts: int,
                 error: str | None, next_attempt_at: float,
                 pending: list[str] | None = None) -> None:
    """The outcome of a try. ``pending``: the recipients a later try is for, when a
    relay refused only some of them for now (the others have the mail)."""
    await db.execute("UPDATE outbound_queue SET state = ?, attempts = ?, last_error = ?,"
                     " next_attempt_at = ?, pending_rcpts = COALESCE(?, pending_rcpts)"
                     " WHERE email_id = ?",
                     (state, attempts, error, next_attempt_at,
                      json.dumps(pending) if pending else None, email_id))


async def delivery(db: aiosqlite.Connection, email_id: int) -> dict | None:
    async with db.execute("SELECT state, attempts, last_error, next_attempt_at FROM"
                          " outbound_queue WHERE email_id = ?", (email_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    return {"state": row[0], "attempts": row[1], "last_error": row[2],
            "next_attempt_at": row[3]}


async def queued(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT COUNT(*) FROM outbound_queue WHERE state = 'queued'") as c:
        (count,) = await c.fetchone()
    return count
