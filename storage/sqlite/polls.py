"""SQLite's poll ledger (R-I4, R-B5): which messages of a mailbox folder are journaled.

The ``polled`` table is written in the journal's own commit (``Copy.poll_key``),
so "journaled" and "remembered as journaled" can never disagree. This module
reads it, marks a watermark (messages skipped on a connector's first poll) and
forgets keys that are gone from the server.

Every stored key starts with the *scope* of the mailbox it came from (see
``gateway.polling.poller.mailbox_scope``): a connector re-pointed at another
mailbox must not take that mailbox's UIDs for the old one's (two Dovecot
mailboxes created in the same second share a UIDVALIDITY).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from storage.base import PolledKeys

if TYPE_CHECKING:
    from storage.sqlite.store import SqliteStore
    from storage.sqlite.txn import SqliteTxn

# The row that says a folder of a mailbox has been polled before (R-B5 applies to the
# first poll only).
FIRST_POLL_MARK = "\x00polled"


class SqlitePollLedger:
    def __init__(self, store: SqliteStore):
        self.store = store

    async def known(self, connector: str, folder: str, scope: str) -> PolledKeys:
        """Keys of this mailbox's folder without their scope (→ email id, None for a
        watermark), whether it was polled before, and the stored keys of any other
        mailbox the connector pointed at before."""
        async def work(txn: SqliteTxn) -> list:
            return txn.conn.execute("SELECT key, email_id FROM polled WHERE connector = ?"
                                    " AND folder = ?", (connector, folder)).fetchall()
        mine: dict[str, int | None] = {}
        foreign: list[str] = []
        for key, email_id in await self.store.read(work):
            if key.startswith(scope):
                mine[key[len(scope):]] = email_id
            else:
                foreign.append(key)
        polled_before = mine.pop(FIRST_POLL_MARK, 0) != 0
        return PolledKeys(mine, polled_before, tuple(foreign))

    async def mark(self, connector: str, folder: str, scope: str, keys: list[str]) -> None:
        """Remember ``keys`` as not to be fetched (a watermark), and the folder as polled."""
        now = time.time()
        rows = [(connector, folder, scope + key, now) for key in (FIRST_POLL_MARK, *keys)]

        async def work(txn: SqliteTxn) -> None:
            txn.conn.executemany("INSERT OR IGNORE INTO polled (connector, folder, key,"
                                 " email_id, fetched_at) VALUES (?, ?, ?, NULL, ?)", rows)
        await self.store.transaction(work)

    async def forget(self, connector: str, folder: str, stored_keys: list[str]) -> None:
        """Drop rows (stored keys, scope included) of messages no longer on the server.
        Not durable: a forgotten key that comes back is only forgotten again."""
        rows = [(connector, folder, key) for key in stored_keys]

        async def work(txn: SqliteTxn) -> None:
            txn.conn.executemany("DELETE FROM polled WHERE connector = ? AND folder = ?"
                                 " AND key = ?", rows)
        await self.store.transaction(work, durable=False)
