"""SQL of the pollers (R-I4, R-B5): which messages of a mailbox folder are journaled.

The ``polled`` table is written in the journal's own commit (``Copy.poll_key``),
so "journaled" and "remembered as journaled" can never disagree. This module
reads it, marks a watermark (messages skipped on a connector's first poll) and
forgets keys that are gone from the server.

Every stored key starts with the *scope* of the mailbox it came from (see
``gateway.poller.mailbox_scope``): a connector re-pointed at another mailbox
must not take that mailbox's UIDs for the old one's (two Dovecot mailboxes
created in the same second share a UIDVALIDITY).
"""
from __future__ import annotations

import aiosqlite

# The row that says a folder of a mailbox has been polled before (R-B5 applies to the
# first poll only).
FIRST_POLL_MARK = "\x00polled"


async def known(db: aiosqlite.Connection, connector: str, folder: str,
                scope: str) -> tuple[dict[str, int | None], bool, list[str]]:
    """(key → email id (None: skipped by a watermark), polled before?, foreign keys)
    for one folder: keys of this mailbox without their scope, and the stored keys
    of any other mailbox the connector pointed at before."""
    async with db.execute("SELECT key, email_id FROM polled WHERE connector = ? AND folder = ?",
                          (connector, folder)) as cursor:
        rows = await cursor.fetchall()
    mine: dict[str, int | None] = {}
    foreign: list[str] = []
    for key, email_id in rows:
        if key.startswith(scope):
            mine[key[len(scope):]] = email_id
        else:
            foreign.append(key)
    polled_before = mine.pop(FIRST_POLL_MARK, 0) != 0
    return mine, polled_before, foreign


async def mark(db: aiosqlite.Connection, connector: str, folder: str, scope: str,
               keys: list[str], now: float) -> None:
    """Remember ``keys`` as not to be fetched (a watermark), and the folder as polled."""
    await db.executemany(
        "INSERT OR IGNORE INTO polled (connector, folder, key, email_id, fetched_at)"
        " VALUES (?, ?, ?, NULL, ?)",
        [(connector, folder, scope + key, now) for key in (FIRST_POLL_MARK, *keys)])


async def forget(db: aiosqlite.Connection, connector: str, folder: str,
                 stored_keys: list[str]) -> None:
    """Drop rows (stored keys, scope included) of messages no longer on the server."""
    await db.executemany("DELETE FROM polled WHERE connector = ? AND folder = ? AND key = ?",
                         [(connector, folder, key) for key in stored_keys])
