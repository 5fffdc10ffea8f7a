"""SQLite SQL of the poll ledger (R-I4, R-B5): which messages of a mailbox folder are journaled.

The ``polled`` table is written in the journal's own commit (``Copy.poll_key``),
so "journaled" and "remembered as journaled" can never disagree. These read it,
mark a watermark (messages skipped on a connector's first poll) and forget keys
that are gone from the server. A mixin of :class:`storage.sqlite.txn.SqliteTxn`;
``storage.sqlite.ports`` offers them to the pollers as :class:`storage.base.PollLedger`.

Every stored key starts with the *scope* of the mailbox it came from (see
``gateway.polling.poller.mailbox_scope``): a connector re-pointed at another
mailbox must not take that mailbox's UIDs for the old one's (two Dovecot
mailboxes created in the same second share a UIDVALIDITY).
"""
from __future__ import annotations

import sqlite3
from typing import Iterable

from storage.base import PolledKeys

# The row that says a folder of a mailbox has been polled before (R-B5 applies to the
# first poll only).
FIRST_POLL_MARK = "\x00polled"


class PollSql:
    conn: sqlite3.Connection
    now: float

    def _all(self, sql: str, params: Iterable = ()) -> list: ...   # SqliteTxn's

    async def polled_keys(self, connector: str, folder: str, scope: str) -> PolledKeys:
        """Keys of this mailbox's folder without their scope (→ email id, None for a
        watermark), whether it was polled before, and the stored keys of any other
        mailbox the connector pointed at before."""
        mine: dict[str, int | None] = {}
        foreign: list[str] = []
        for key, email_id in self._all("SELECT key, email_id FROM polled WHERE connector = ?"
                                       " AND folder = ?", (connector, folder)):
            if key.startswith(scope):
                mine[key[len(scope):]] = email_id
            else:
                foreign.append(key)
        polled_before = mine.pop(FIRST_POLL_MARK, 0) != 0
        return PolledKeys(mine, polled_before, tuple(foreign))

    async def mark_polled(self, connector: str, folder: str, scope: str,
                          keys: list[str]) -> None:
        """Remember ``keys`` as not to be fetched (a watermark), and the folder as polled."""
        self.conn.executemany(
            "INSERT OR IGNORE INTO polled (connector, folder, key, email_id, fetched_at)"
            " VALUES (?, ?, ?, NULL, ?)",
            [(connector, folder, scope + key, self.now) for key in (FIRST_POLL_MARK, *keys)])

    async def forget_polled(self, connector: str, folder: str, stored_keys: list[str]) -> None:
        """Drop rows (stored keys, scope included) of messages no longer on the server."""
        self.conn.executemany("DELETE FROM polled WHERE connector = ? AND folder = ? AND key = ?",
                              [(connector, folder, key) for key in stored_keys])

