"""The SQLite store: WAL, ``synchronous=FULL``, one writer task, group commit.

DESIGN "journal first": a front end may only acknowledge a message once its
copy is committed and fsynced. Committing once per message costs one fsync per
message; instead a single writer task owns the write connection and commits
whatever copies have queued up while the previous commit ran (group commit).
Every caller awaits the commit that holds its rows, so no ``250`` is ever sent
for a row that is not on disk, and the batch size adapts to the load by
itself (no wait window: measured in the bench, a window only adds latency).

Readers (the HTTP API, the CLI) use their own connection and never queue
behind the writer.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable

import aiosqlite

from gateway.model import Connector, Copy, EmailRecord
from storage import directory_sql

log = logging.getLogger("mailgate.store")

CommitObserver = Callable[[int, float, bool], None]  # copies, seconds, committed
_MAX_IDS = ("SELECT (SELECT COALESCE(MAX(id), 0) FROM messages),"
            " (SELECT COALESCE(MAX(id), 0) FROM emails)")


class StoreError(Exception):
    """The store could not do what was asked; callers answer 4xx, never 5xx."""


@dataclass
class _Job:
    future: asyncio.Future
    copies: list[Copy] | None = None
    # async work(aiosqlite connection), or with on_thread a plain work(sqlite3 connection)
    work: Callable[[Any], Any] | None = None
    dry_run: bool = False
    durable: bool = True
    on_thread: bool = False


def migrations() -> list[tuple[int, str, str]]:
    """Numbered migration files shipped with the package, in order."""
    found = []
    for entry in resources.files("storage").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


# Copies one Message-ID lookup answers at most (GET /api/v1/emails?message_id=).
MESSAGE_ID_COPIES = 100

class SqliteStore:
    """Store protocol on SQLite. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: str, *, batch_max: int = 256,
                 on_commit: CommitObserver | None = None,
                 on_write: Callable[[], None] | None = None):
        self.path = path
        self.batch_max = batch_max
        self.on_commit = on_commit
        self.on_write = on_write        # after a work job commits (events may be new)
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._pending: collections.deque[_Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._broken = False
        self._last_was_work = False
        self._sync_full = True
        self._next_message_id = 1
        self._next_email_id = 1

    # -- lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        self._writer = await aiosqlite.connect(self.path)
        await self._writer.execute("PRAGMA journal_mode=WAL")
        await self._writer.execute("PRAGMA synchronous=FULL")
        await self._writer.execute("PRAGMA busy_timeout=5000")
        await self._writer.execute("PRAGMA foreign_keys=ON")
        await self._migrate(self._writer)
        await self._reset_id_counters()
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute("PRAGMA busy_timeout=5000")
        self._reader.row_factory = aiosqlite.Row
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_writer(), name="store-writer")

    async def close(self) -> None:
        """Finish every queued write, then close both connections."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        for number, name, sql in migrations():
            if number <= version:
                continue
            log.info("applying migration %s", name)
            await db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")

    async def _reset_id_counters(self) -> None:
        """The single writer hands out row ids itself, so a batch needs no round trip
        per row to learn them; ids of a batch that failed are simply reused."""
        assert self._writer is not None
        async with self._writer.execute(_MAX_IDS) as cursor:
            max_message, max_email = await cursor.fetchone()
        self._next_message_id, self._next_email_id = max_message + 1, max_email + 1

    # -- the writer ------------------------------------------------------------------

    def _submit(self, job: _Job) -> asyncio.Future:
        if self._closing or self._broken or self._task is None or self._task.done():
            raise StoreError("store is closed")
        self._pending.append(job)
        self._wakeup.set()
        return job.future

    async def journal(self, copies: list[Copy]) -> list[int]:
        """Store ``copies`` durably; return their email ids once committed.

        Raises StoreError when the commit failed: nothing of it is stored.
        """
        # the loop is cached: get_running_loop() costs a getpid() per call on 3.11
        future = (self._loop or asyncio.get_running_loop()).create_future()
        return await self._submit(_Job(future, copies=copies))

    async def write(self, work: Callable[[aiosqlite.Connection], Awaitable[Any]], *,
                    dry_run: bool = False, durable: bool = True) -> Any:
        """Run ``work`` in its own transaction on the writer connection.

        With ``dry_run`` the transaction is rolled back: ``mailgate explain``
        runs the real pipeline and keeps nothing. ``durable=False`` commits
        without waiting for fsync (``synchronous=NORMAL``): for work that can be
        redone from what is durable, i.e. the pipeline's decisions, which are
        recomputed from the journal if a power loss takes them. The next durable
        commit syncs the WAL, and with it everything before it, in order.
        """
        future = asyncio.get_running_loop().create_future()
        return await self._submit(_Job(future, work=work, dry_run=dry_run, durable=durable))

    async def write_sync(self, work: Callable[[sqlite3.Connection], Any], *,
                         dry_run: bool = False, durable: bool = True) -> Any:
        """As :meth:`write`, but ``work`` is a plain function of the sqlite3 connection and
        runs on that connection's thread: the job, its commit and the row-id bookkeeping
        are one hop, however many statements ``work`` runs (the pipeline's batches).

        ``work`` blocks the writer for as long as it runs, as a :meth:`write` job does.
        """
        future = asyncio.get_running_loop().create_future()
        return await self._submit(_Job(future, work=work, dry_run=dry_run, durable=durable,
                                       on_thread=True))

    async def read(self, work: Callable[[aiosqlite.Connection], Awaitable[Any]]) -> Any:
        """Run ``work`` on the reader connection (committed data only)."""
        assert self._reader is not None, "store is not open"
        return await work(self._reader)

    async def _run_writer(self) -> None:
        while True:
            if self._broken:
                while self._pending:
                    job = self._pending.popleft()
                    if not job.future.done():
                        job.future.set_exception(StoreError("store refuses writes"))
                return
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Journal commits and other work alternate: a pending acknowledgement waits
            # for at most one work job (a pipeline batch), and work is never starved.
            head = self._pending[0]
            if head.work is not None and not (self._last_was_work and self._journal_pending()):
                self._pending.popleft()
                self._last_was_work = True
                await self._run_work(head)
                continue
            self._last_was_work = False
            batch: list[_Job] = []
            count = 0
            for job in list(self._pending):
                if job.copies is None:
                    continue
                if batch and count + len(job.copies) > self.batch_max:
                    break
                self._pending.remove(job)
                batch.append(job)
                count += len(job.copies)
            await self._commit_copies(batch, count)

    def _journal_pending(self) -> bool:
        return any(job.copies is not None for job in self._pending)

    async def _set_sync(self, full: bool) -> None:
        """FULL for anything acknowledged; NORMAL only for work that can be redone."""
        if self._sync_full != full:
            assert self._writer is not None
            await self._writer.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    async def _commit_copies(self, batch: list[_Job], count: int) -> None:
        db = self._writer
        assert db is not None
        started = time.perf_counter()
        now = time.time()
        message_rows, email_rows, results, polled_rows = [], [], [], []
        message_id, email_id = self._next_message_id, self._next_email_id
        for job in batch:
            stored: dict[int, int] = {}
            ids = []
            for copy in job.copies:
                key = id(copy.raw)
                if key not in stored:
                    stored[key] = message_id
                    message_rows.append((message_id, copy.raw, len(copy.raw), now))
                    message_id += 1
                email_rows.append((email_id, stored[key], copy.connector, copy.source,
                                   copy.mail_from, json.dumps(list(copy.rcpt_to)),
                                   copy.message_id, copy.folder_path, copy.peer, copy.helo, now))
                if copy.poll_key is not None:
                    polled_rows.append((copy.connector, copy.folder_path or "", copy.poll_key,
                                        email_id, now))
                ids.append(email_id)
                email_id += 1
            results.append(ids)
        try:
            await self._set_sync(True)
        except Exception as exc:
            log.critical("cannot set synchronous=FULL: %s; the store refuses writes", exc)
            self._broken = True
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(StoreError("store refuses writes"))
            return
        try:
            await db.executemany("INSERT INTO messages (id, raw, size, received_at)"
                                 " VALUES (?, ?, ?, ?)", message_rows)
            await db.executemany(
                "INSERT INTO emails (id, message, connector, source, mail_from, rcpt_to,"
                " message_id, folder_path, peer, helo, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", email_rows)
            if polled_rows:
                await db.executemany(
                    "INSERT OR REPLACE INTO polled (connector, folder, key, email_id, fetched_at)"
                    " VALUES (?, ?, ?, ?, ?)", polled_rows)
            await db.commit()
        except Exception as exc:  # any failure: nothing of the batch is acknowledged
            log.error("journal commit of %d copies failed: %s", count, exc)
            await self._rollback_quietly()
            await self._reset_ids_quietly()
            if self.on_commit is not None:
                self.on_commit(count, time.perf_counter() - started, False)
            error = StoreError(f"journal commit failed: {exc}")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self._next_message_id, self._next_email_id = message_id, email_id
        if self.on_commit is not None:
            self.on_commit(count, time.perf_counter() - started, True)
        for job, ids in zip(batch, results):
            if not job.future.done():
                job.future.set_result(ids)

    async def _run_work(self, job: _Job) -> None:
        db = self._writer
        assert db is not None and job.work is not None
        try:
            if job.on_thread:
                # aiosqlite's own execute() and commit() are built on _execute: a function
                # run on its thread, one queue put and one future (no public API does it).
                result = await db._execute(self._transaction, db._conn, job)
            else:
                await self._set_sync(job.durable)
                result = await job.work(db)
                if job.dry_run:
                    await db.rollback()
                else:
                    await db.commit()
                # work may have added messages or emails (outgoing mail) with ids of its own
                await self._reset_id_counters()
            if self.on_write is not None and not job.dry_run:
                self.on_write()
        except Exception as exc:
            await self._rollback_quietly()
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    def _transaction(self, conn: sqlite3.Connection, job: _Job) -> Any:
        """A :meth:`write_sync` job, whole, on the connection's thread (the writer task
        awaits it, so nothing else touches the connection or these counters meanwhile).
        A failure propagates to :meth:`_run_work`, which rolls back."""
        if self._sync_full != job.durable:
            conn.execute(f"PRAGMA synchronous={'FULL' if job.durable else 'NORMAL'}")
            self._sync_full = job.durable
        result = job.work(conn)
        if job.dry_run:
            conn.rollback()
        else:
            conn.commit()
        # work may have added messages or emails (outgoing mail) with ids of its own
        max_message, max_email = conn.execute(_MAX_IDS).fetchone()
        self._next_message_id, self._next_email_id = max_message + 1, max_email + 1
        return result

    async def _reset_ids_quietly(self) -> None:
        try:
            await self._reset_id_counters()
        except Exception as exc:
            log.error("cannot re-read row ids after a failed commit: %s", exc)

    async def _rollback_quietly(self) -> None:
        try:
            assert self._writer is not None
            await self._writer.rollback()
        except Exception as exc:  # the connection itself may be gone
            log.error("rollback failed: %s", exc)

    # -- directory -----------------------------------------------------------------

    async def connectors(self) -> list[Connector]:
        """Every connector, without credentials (the directory snapshot's view)."""
        assert self._reader is not None
        return [row[0] for row in await directory_sql.connectors(self._reader)]

    async def save_connector(self, connector: Connector, *, create_only: bool = False) -> bool:
        """Insert or update ``connector``; with ``create_only`` leave an existing one.

        Returns True when a row was written.
        """
        now = time.time()

        async def work(db: aiosqlite.Connection) -> bool:
            on_conflict = ("DO NOTHING" if create_only else
                           "DO UPDATE SET service = excluded.service, direction = excluded.direction,"
                           " protocol = excluded.protocol, primary_address = excluded.primary_address,"
                           " aliases = excluded.aliases, enabled = excluded.enabled,"
                           " route_on_envelope = excluded.route_on_envelope,"
                           " incoming = excluded.incoming, updated_at = excluded.updated_at")
            cursor = await db.execute(
                "INSERT INTO connectors (name, service, direction, protocol, primary_address,"
                " aliases, enabled, route_on_envelope, incoming, created_at, updated_at)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) {on_conflict}",
                (connector.name, connector.service, connector.direction, connector.protocol,
                 connector.primary_address, json.dumps(list(connector.aliases)),
                 int(connector.enabled), int(connector.route_on_envelope),
                 directory_sql.incoming_json(connector), now, now))
            return cursor.rowcount > 0

        return await self.write(work)

    async def delete_connector(self, name: str) -> bool:
        async def work(db: aiosqlite.Connection) -> bool:
            cursor = await db.execute("DELETE FROM connectors WHERE name = ?", (name,))
            return cursor.rowcount > 0

        return await self.write(work)

    # -- emails ----------------------------------------------------------------------

    _EMAIL_COLUMNS = ("e.id, e.connector, e.source, e.direction, e.mail_from, e.rcpt_to,"
                      " e.message_id, e.received_at, m.size, e.state, e.outcome, e.reason,"
                      " e.targets, e.trace, e.peer, e.helo, e.folder_path")

    @staticmethod
    def _email(row: aiosqlite.Row) -> EmailRecord:
        return EmailRecord(
            id=row["id"], connector=row["connector"], source=row["source"],
            direction=row["direction"], mail_from=row["mail_from"],
            rcpt_to=json.loads(row["rcpt_to"]), message_id=row["message_id"],
            received_at=row["received_at"], size=row["size"], state=row["state"],
            outcome=row["outcome"], reason=row["reason"], targets=json.loads(row["targets"]),
            trace=json.loads(row["trace"]), peer=row["peer"], helo=row["helo"],
            folder_path=row["folder_path"])

    async def emails_by_message_id(self, message_id: str,
                                   limit: int = MESSAGE_ID_COPIES) -> list[EmailRecord]:
        """The copies with this Message-ID, oldest first, at most ``limit``: anyone can
        send a thousand mails under one Message-ID, and one API call must stay cheap."""
        assert self._reader is not None
        async with self._reader.execute(
                f"SELECT {self._EMAIL_COLUMNS} FROM emails e JOIN messages m ON m.id = e.message"
                " WHERE e.message_id = ? ORDER BY e.id LIMIT ?", (message_id, limit)) as cursor:
            return [self._email(r) for r in await cursor.fetchall()]

    async def email(self, email_id: int) -> EmailRecord | None:
        assert self._reader is not None
        async with self._reader.execute(
                f"SELECT {self._EMAIL_COLUMNS} FROM emails e JOIN messages m ON m.id = e.message"
                " WHERE e.id = ?", (email_id,)) as cursor:
            row = await cursor.fetchone()
        return self._email(row) if row else None

    async def events(self, after: int = 0, limit: int = 100) -> list[dict]:
        """R-X1: the ordered events feed, oldest first, ids strictly increasing."""
        assert self._reader is not None
        async with self._reader.execute(
                "SELECT id, type, ref, email_id, data, created_at FROM events WHERE id > ?"
                " ORDER BY id LIMIT ?", (after, limit)) as cursor:
            rows = await cursor.fetchall()
        return [{"id": r["id"], "type": r["type"], "ref": r["ref"], "email_id": r["email_id"],
                 "data": json.loads(r["data"]), "created_at": r["created_at"]} for r in rows]

    async def last_event_id(self) -> int:
        assert self._reader is not None
        async with self._reader.execute("SELECT COALESCE(MAX(id), 0) FROM events") as cursor:
            (last,) = await cursor.fetchone()
        return last

    async def queue_depths(self) -> dict[str, tuple[int, float | None]]:
        """Messages waiting, and when the oldest arrived: the journal (not yet decided by
        the pipeline) and the outbound queue (not yet delivered)."""
        assert self._reader is not None
        async with self._reader.execute(      # both on the partial index of the journal
                "SELECT COUNT(*), (SELECT received_at FROM emails WHERE state = 'journaled'"
                " ORDER BY id LIMIT 1) FROM emails WHERE state = 'journaled'") as c:
            journal = tuple(await c.fetchone())
        async with self._reader.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbound_queue"
                " WHERE state = 'queued'") as c:
            outbound = tuple(await c.fetchone())
        return {"journal": journal, "outbound": outbound}

    async def settings(self) -> dict:
        assert self._reader is not None
        async with self._reader.execute("SELECT key, value FROM settings") as cursor:
            return {r["key"]: json.loads(r["value"]) for r in await cursor.fetchall()}

    async def save_settings(self, values: dict) -> None:
        now = time.time()

        async def work(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                [(k, json.dumps(v), now) for k, v in values.items()])
        await self.write(work)

    async def unprocessed(self, limit: int = 100, after: int = 0) -> list[EmailRecord]:
        """R-U1: copies no rule could place, oldest first."""
        assert self._reader is not None
        async with self._reader.execute(
                f"SELECT {self._EMAIL_COLUMNS} FROM emails e JOIN messages m ON m.id = e.message"
                " WHERE e.outcome = 'unprocessed' AND e.state = 'done' AND e.id > ?"
                " ORDER BY e.id LIMIT ?", (after, limit)) as cursor:
            return [self._email(r) for r in await cursor.fetchall()]

    async def raw(self, email_id: int) -> bytes | None:
        assert self._reader is not None
        async with self._reader.execute(
                "SELECT m.raw FROM emails e JOIN messages m ON m.id = e.message WHERE e.id = ?",
                (email_id,)) as cursor:
            row = await cursor.fetchone()
        return bytes(row[0]) if row else None

    async def count_emails(self) -> int:
        assert self._reader is not None
        async with self._reader.execute("SELECT COUNT(*) FROM emails") as cursor:
            (count,) = await cursor.fetchone()
        return count

    async def ping(self) -> bool:
        """True when the database answers a read (for /readyz)."""
        if self._reader is None or self._task is None or self._task.done():
            return False
        try:
            async with self._reader.execute("SELECT 1") as cursor:
                await cursor.fetchone()
            return True
        except Exception:
            return False
