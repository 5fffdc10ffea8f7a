"""SQL of the pollers (R-I4, R-B5): which messages of a mailbox folder are journaled.

The ``polled`` table is written in the journal's own commit (``Copy.poll_key``),
so "journaled" and "remembered as journaled" can never disagree. This module
reads it, marks a watermark (messages skipped on a connector's first poll) and
forgets keys that are gone from the server.
"""
from __future__ import annotations

import aiosqlite

# The row that says a folder has been polled before (R-B5 applies to the first poll only).
FIRST_POLL_MARK = "\x00polled"


async def known(db: aiosqlite.Connection, connector: str, folder: str) -> dict[str, int | None]:
    """key → email id (None: skipped by a watermark) for one folder."""
    async with db.execute("SELECT key, email_id FROM polled WHERE connector = ? AND folder = ?",
                          (connector, folder)) as cursor:
        return {key: email_id for key, email_id in await cursor.fetchall()}


async def mark(db: aiosqlite.Connection, connector: str, folder: str, keys: list[str],
               now: float) -> None:
    """Remember ``keys`` as not to be fetched (a watermark), and the folder as polled."""
    await db.executemany(
        "INSERT OR IGNORE INTO polled (connector, folder, key, email_id, fetched_at)"
        " VALUES (?, ?, ?, NULL, ?)",
        [(connector, folder, key, now) for key in (FIRST_POLL_MARK, *keys)])


async def forget(db: aiosqlite.Connection, connector: str, folder: str,
                 keys: list[str]) -> None:
    """Drop the rows of messages that are no longer on the server."""
    await db.executemany("DELETE FROM polled WHERE connector = ? AND folder = ? AND key = ?",
                         [(connector, folder, key) for key in keys])


async def forget_connector(db: aiosqlite.Connection, connector: str) -> None:
    await db.execute("DELETE FROM polled WHERE connector = ?", (connector,))
