"""WAL checkpoints on a connection and a thread of their own, not inside the writer's commits.

SQLite's automatic checkpoint runs in the commit that takes the WAL past 1,000
pages: that commit copies the pages back into the database file and fsyncs it,
on the writer's thread, while every journal commit (and the ``250`` each one
releases) waits behind it. On the realistic mix that was a quarter of the
writer's time (bench/RESULTS.md, issue 14). So the writer turns the automatic
checkpoint off (``wal_autocheckpoint=0``) and this connection runs a PASSIVE
checkpoint soon after commits, at most every ``every`` seconds. PASSIVE takes no
lock a writer or reader waits for (SQLite "Checkpointing"): it copies what no
reader still needs. Durability is the WAL's either way; a checkpoint only moves
committed pages.

The WAL starts over from its beginning only when a write transaction begins with
all of it copied back, and under steady load the writer has always added frames
while a checkpoint ran. So once the WAL passes ``RESTART_FRAMES`` the writer
itself, between two transactions, copies the last few frames (:func:`catch_up`):
the bulk was copied in the background, and its next transaction starts the WAL
over. The WAL stays within ``RESTART_FRAMES`` pages and what is written in
``CHECKPOINT_EVERY``, however long the load lasts.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("mailgate.store")

CHECKPOINT_EVERY = 0.1      # seconds between checkpoints while commits go on, at least
RESTART_FRAMES = 4000       # WAL pages (16 MB at 4 KB) past which the writer catches up


def catch_up(conn: sqlite3.Connection) -> int:
    """On the writer's thread, between transactions: copy back what the background
    checkpoints left; the WAL's frames afterwards (0 once the next write starts it over)."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
    return frames - copied


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` after writes: never two at once, never more
    often than ``every``, and once more ``every`` after the last write (so a store that
    goes quiet ends with its WAL copied back)."""

    def __init__(self, path: str, every: float = CHECKPOINT_EVERY):
        self.path = path
        self.every = every
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._running: asyncio.Task | None = None
        self._later: asyncio.TimerHandle | None = None
        self._started_at = float("-inf")
        self._closed = False
        self.wal_frames = 0         # the WAL's length at the last checkpoint (pages)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            return conn
        self._conn = await asyncio.get_running_loop().run_in_executor(self._thread, connect)

    def written(self) -> None:
        """A commit happened: checkpoint now, or when the last one is ``every`` old."""
        if self._closed or self._conn is None or self._later is not None:
            return
        wait = self._started_at + self.every - time.monotonic()
        if self._running is not None and not self._running.done():
            wait = max(wait, self.every / 4)        # look again once it may be over
        if wait > 0:
            self._later = asyncio.get_running_loop().call_later(wait, self._due)
        else:
            self._start()

    def caught_up(self) -> None:
        """The writer copied the rest back itself (:func:`catch_up`)."""
        self.wal_frames = 0

    def _due(self) -> None:
        self._later = None
        self.written()

    def _start(self) -> None:
        self._started_at = time.monotonic()
        self._running = asyncio.ensure_future(self._checkpoint())

    async def _checkpoint(self) -> None:
        conn = self._conn
        try:
            [(_, self.wal_frames, _)] = await asyncio.get_running_loop().run_in_executor(
                self._thread, lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except sqlite3.Error as exc:       # the next one tries again; the WAL keeps the data
            log.warning("WAL checkpoint failed: %s", exc)

    async def close(self) -> None:
        """Stop; the connection that closes the database last checkpoints what is left."""
        self._closed = True
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._running is not None:
            await self._running
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)
