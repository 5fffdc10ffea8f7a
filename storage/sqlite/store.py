"""The SQLite store: WAL, ``synchronous=FULL``, one writer, group commit.

DESIGN "journal first": a front end may only acknowledge a message once its
copy is committed and fsynced. Committing once per message costs one fsync per
message; instead a single writer task owns the write connection and commits
whatever copies have queued up while the previous commit ran (group commit).
Every caller awaits the commit that holds its rows, so no ``250`` is ever sent
for a row that is not on disk, and the batch size adapts to the load by
itself (no wait window: measured in the bench, a window only adds latency).

Each connection lives on a thread of its own (:class:`_Connection`): the writer's
and the reader's. A transaction function runs there whole, in one hop, and its
awaits on the transaction never suspend (:func:`run_to_end`). Readers (the HTTP
API, the workers' queue reads) use the reader connection and never queue behind
the writer.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from gateway.model import Copy, EmailRecord
from storage.base import MESSAGE_ID_COPIES, CommitObserver, JournaledCopy, StoreError
from storage.sqlite.blobs import STREAM_AT, insert_message
from storage.sqlite.checkpoint import RESTART_FRAMES, Checkpointer, catch_up
from storage.sqlite.ports import SqliteOutboundQueue, SqlitePollLedger
from storage.sqlite.txn import BatchTxn, SqliteTxn

log = logging.getLogger("mailgate.store")

T = TypeVar("T")
# A transaction function that keeps awaiting what suspends after being told it cannot
# (a loop around the mistake) is stopped for good after this many.
_SUSPENSIONS_TOLERATED = 1000
_MAX_IDS = ("SELECT (SELECT COALESCE(MAX(id), 0) FROM messages),"
            " (SELECT COALESCE(MAX(id), 0) FROM emails)")


def run_to_end(step: Coroutine[Any, Any, T]) -> T:
    """Run a transaction function's coroutine to its end, here and now.

    On SQLite nothing a transaction function awaits suspends: every method of the
    transaction runs its SQL directly. An await that would suspend (a mistake: it
    waits for an event loop this thread does not run) fails where it stands, with a
    RuntimeError raised into the coroutine at that await, so the code around it
    handles it as any error: the pipeline ends that one copy ``internal_error``.
    """
    mistake = None
    for _ in range(_SUSPENSIONS_TOLERATED):
        try:
            if mistake is None:
                step.send(None)
            else:
                step.throw(mistake)
        except StopIteration as done:
            return done.value
        mistake = RuntimeError(
            "a transaction function awaited something that suspends; on SQLite it runs"
            " on the connection's thread, where only the transaction is available")
    step.close()
    raise mistake


def migrations() -> list[tuple[int, str, str]]:
    """Numbered migration files shipped with the package, in order."""
    found = []
    for entry in resources.files("storage.sqlite").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class _Connection:
    """One sqlite3 connection and the one thread it is used on.

    The connection is in autocommit mode: transactions are opened explicitly
    (``BEGIN IMMEDIATE`` on the writer, so a write never fails half-way on a lock
    another process holds; plain ``BEGIN`` on the reader, so the statements of one
    read see one snapshot)."""

    def __init__(self, path: str, name: str, pragmas: tuple[str, ...]):
        self.path, self.pragmas = path, pragmas
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None)
            for pragma in self.pragmas:
                conn.execute(pragma)
            return conn
        self.conn = await self.run(connect)

    async def close(self) -> None:
        if self.conn is not None:
            await self.run(self.conn.close)
            self.conn = None
        self._thread.shutdown(wait=True)

    def transaction(self, work: Callable[[Any], Awaitable[T]], txn: SqliteTxn, *,
                    begin: str = "BEGIN IMMEDIATE", keep: bool = True) -> T:
        """On the thread: ``work(txn)`` in one transaction, committed when ``keep``."""
        conn = txn.conn
        conn.execute(begin)
        try:
            result = run_to_end(work(txn))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT" if keep else "ROLLBACK")
        return result


class _NotDurable(Exception):
    """The journal cannot commit with an fsync: nothing may be acknowledged any more."""


@dataclass
class _Job:
    future: asyncio.Future
    copies: list[Copy] | None = None
    work: Callable[[Any], Awaitable[Any]] | None = None
    txn: Callable[[sqlite3.Connection], SqliteTxn] = SqliteTxn
    dry_run: bool = False
    durable: bool = True


class SqliteStore:
    """:class:`storage.base.Store` on SQLite. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, path: str, *, batch_max: int = 256,
                 on_commit: CommitObserver | None = None,
                 on_write: Callable[[], None] | None = None):
        self.path = path
        self.batch_max = batch_max
        self.on_commit = on_commit
        self.on_write = on_write        # after a transaction commits (events may be new)
        self.polls = SqlitePollLedger(self)
        self.outbound = SqliteOutboundQueue(self)
        self._writer = _Connection(path, "store-writer",
                                   ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                                    "PRAGMA busy_timeout=5000", "PRAGMA foreign_keys=ON",
                                    "PRAGMA wal_autocheckpoint=0"))      # Checkpointer's job
        self._reader = _Connection(path, "store-reader",
                                   ("PRAGMA busy_timeout=5000", "PRAGMA query_only=ON"))
        self._checkpointer = Checkpointer(path)
        self._pending: collections.deque[_Job] = collections.deque()
        self._journal_jobs = 0      # of them, journal commits (read by the writer's thread)
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
        try:
            await self._writer.open()
            await self._writer.run(self._migrate)
            await self._writer.run(self._reset_ids)
            await self._reader.open()
            await self._checkpointer.open()
        except (sqlite3.Error, StoreError) as exc:
            await self._writer.close()
            await self._reader.close()
            await self._checkpointer.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self.path}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_writer(), name="store-writer")

    async def close(self) -> None:
        """Finish every queued write, then close both connections."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self._checkpointer.close()
        await self._reader.close()
        await self._writer.close()

    def _migrate(self) -> None:
        conn = self._writer.conn
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        known = migrations()
        if known and version > known[-1][0]:
            raise StoreError(f"{self.path}: written by a newer mailgate (schema {version}; "
                             f"this one knows up to {known[-1][0]}): run the newer release")
        for number, name, sql in known:
            if number <= version:
                continue
            log.info("applying migration %s", name)
            conn.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version={number};\nCOMMIT;")

    def _reset_ids(self) -> None:
        """The single writer hands out row ids itself, so a batch needs no round trip
        per row to learn them; ids of a batch that failed are simply reused. On the
        writer's thread."""
        max_message, max_email = self._writer.conn.execute(_MAX_IDS).fetchone()
        self._next_message_id, self._next_email_id = max_message + 1, max_email + 1

    async def ping(self) -> bool:
        """True when the database answers a read and the writer runs (for /readyz)."""
        if self._task is None or self._task.done():
            return False
        try:
            return await self.read(_select_one) == 1
        except Exception:
            return False

    # -- the writer ------------------------------------------------------------------

    def _submit(self, job: _Job) -> asyncio.Future:
        if self._closing or self._broken or self._task is None or self._task.done():
            raise StoreError("store is closed")
        self._pending.append(job)
        if job.copies is not None:
            self._journal_jobs += 1
        self._wakeup.set()
        return job.future

    def _future(self) -> asyncio.Future:
        # the loop is cached: get_running_loop() costs a getpid() per call on 3.11
        return (self._loop or asyncio.get_running_loop()).create_future()

    async def journal(self, copies: list[Copy]) -> list[int]:
        """Store ``copies`` durably; return their email ids once committed.

        Raises StoreError when the commit failed: nothing of it is stored.
        """
        return await self._submit(_Job(self._future(), copies=copies))

    async def transaction(self, work: Callable[[SqliteTxn], Awaitable[T]], *,
                          durable: bool = True) -> T:
        """Run ``work(txn)`` in its own transaction on the writer.

        ``durable=False`` commits without waiting for fsync (``synchronous=NORMAL``):
        for work that can be redone from what is durable. The next durable commit
        syncs the WAL, and with it everything before it, in order.
        """
        return await self._submit(_Job(self._future(), work=work, durable=durable))

    async def decide(self, work: Callable[[BatchTxn], Awaitable[T]], *,
                     dry_run: bool = False, durable: bool = False) -> T:
        """The pipeline's transaction: ``work`` on a :class:`BatchTxn`. Not durable unless
        asked (a decision lost to a power cut is made again from the journal; a person's
        placing is not). With ``dry_run`` it is rolled back: ``mailgate explain``."""
        async def and_flush(txn: BatchTxn) -> T:
            result = await work(txn)
            await txn.flush()       # what waited in the batch is written with it
            return result
        def batch_txn(conn: sqlite3.Connection) -> BatchTxn:
            return BatchTxn(conn, others_waiting=self._journal_pending)
        return await self._submit(_Job(self._future(), work=and_flush, txn=batch_txn,
                                       dry_run=dry_run, durable=durable))

    async def _run_writer(self) -> None:
        while True:
            if self._broken:
                while self._pending:
                    job = self._pending.popleft()
                    self._journal_jobs -= job.copies is not None
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
                await self._written()
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
                self._journal_jobs -= 1
                batch.append(job)
                count += len(job.copies)
            await self._commit_copies(batch, count)
            await self._written()

    async def _written(self) -> None:
        """After a commit: a background checkpoint soon, and the writer's own catch-up
        when the WAL has grown past what the background ones could start over."""
        if self._checkpointer.wal_frames >= RESTART_FRAMES:
            try:
                await self._writer.run(catch_up, self._writer.conn)
                self._checkpointer.caught_up()
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint on the writer failed: %s", exc)
        self._checkpointer.written()

    def _journal_pending(self) -> bool:
        """A journal commit waits. Also asked from the writer's thread, in the middle of a
        pipeline batch (``BatchTxn.others_waiting``): a plain int, written only by the loop."""
        return self._journal_jobs > 0

    def _set_sync(self, full: bool) -> None:
        """FULL for anything acknowledged; NORMAL only for work that can be redone."""
        if self._sync_full != full:
            self._writer.conn.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    async def _commit_copies(self, batch: list[_Job], count: int) -> None:
        started = time.perf_counter()
        message_id, email_id = self._next_message_id, self._next_email_id
        try:
            rows, results, (message_id, email_id) = _journal_rows(batch, message_id, email_id)
        except Exception as exc:        # a copy that cannot be a row: refused, not fatal
            log.error("journal commit of %d copies refused: %s", count, exc)
            error = StoreError(f"journal commit refused: {type(exc).__name__}: {exc}")
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        message_rows, email_rows, polled_rows = rows
        try:
            await self._writer.run(self._insert_copies, message_rows, email_rows, polled_rows)
        except _NotDurable as exc:
            log.critical("cannot set synchronous=FULL: %s; the store refuses writes", exc)
            self._broken = True
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(StoreError("store refuses writes"))
            return
        except Exception as exc:  # any failure: nothing of the batch is acknowledged
            log.error("journal commit of %d copies failed: %s", count, exc)
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

    def _insert_copies(self, message_rows: list, email_rows: list, polled_rows: list) -> None:
        """One journal commit, on the writer's thread, fsynced: after a pipeline batch
        (``synchronous=NORMAL``) the level goes back to FULL in the same hop (a hop of its
        own cost a low-rate ``250`` 0.6 ms at the median and 3.5 ms at p99)."""
        try:
            self._set_sync(True)
        except sqlite3.Error as exc:
            raise _NotDurable(exc) from exc
        conn = self._writer.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            _insert_rows(conn, "INSERT INTO messages (id, raw, size, received_at)",
                         [row for row in message_rows if row[2] <= STREAM_AT],
                         size=lambda row: row[2])
            for message_id, raw, size, received_at in message_rows:
                if size > STREAM_AT:
                    insert_message(conn, message_id, raw, received_at)
            _insert_rows(conn, "INSERT INTO emails (id, message, connector, source, mail_from,"
                         " rcpt_to, message_id, folder_path, peer, helo, received_at)",
                         email_rows)
            if polled_rows:
                _insert_rows(conn, "INSERT OR REPLACE INTO polled (connector, folder, key,"
                             " email_id, fetched_at)", polled_rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def _run_work(self, job: _Job) -> None:
        try:
            result = await self._writer.run(self._work_on_thread, job)
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(_driver_error(exc))
            return
        if not job.future.done():
            job.future.set_result(result)
        if self.on_write is not None and not job.dry_run:
            try:                # the change is committed whatever a listener does
                self.on_write()
            except Exception:
                log.exception("store: a listener of committed changes failed")

    def _work_on_thread(self, job: _Job) -> Any:
        """A transaction job, whole, on the writer's thread (the writer task awaits it,
        so nothing else touches the connection or the id counters meanwhile)."""
        self._set_sync(job.durable)
        txn = job.txn(self._writer.conn)
        try:
            return self._writer.transaction(job.work, txn, keep=not job.dry_run)
        finally:
            # work may have added messages or emails (outgoing mail) with ids of its own
            self._reset_ids()

    async def _reset_ids_quietly(self) -> None:
        try:
            await self._writer.run(self._reset_ids)
        except Exception as exc:
            log.error("cannot re-read row ids after a failed commit: %s", exc)

    # -- reads -------------------------------------------------------------------------

    async def read(self, work: Callable[[SqliteTxn], Awaitable[T]]) -> T:
        """``work(txn)`` on the reader connection: committed data only, one snapshot."""
        if self._reader.conn is None:
            raise StoreError("store is not open")

        def on_thread() -> T:
            return self._reader.transaction(work, SqliteTxn(self._reader.conn), begin="BEGIN")
        try:
            return await self._reader.run(on_thread)
        except sqlite3.Error as exc:
            raise _driver_error(exc) from exc

    async def journaled(self, limit: int, after: int = 0) -> list[JournaledCopy]:
        """Copies waiting for the pipeline after email ``after``, oldest first. Only the
        pipeline moves a copy out of the journal, so a batch is read here and decided in
        :meth:`decide`, and the next one may be read while it is."""
        return await self.read(lambda t: t.journaled(limit, after))

    async def backlog(self) -> int:
        return await self.read(lambda t: t.backlog())

    async def email(self, email_id: int) -> EmailRecord | None:
        return await self.read(lambda t: t.email_record(email_id))

    async def emails_by_message_id(self, message_id: str,
                                   limit: int = MESSAGE_ID_COPIES) -> list[EmailRecord]:
        """The copies with this Message-ID, oldest first, at most ``limit``: anyone can
        send a thousand mails under one Message-ID, and one API call must stay cheap."""
        return await self.read(lambda t: t.emails_by_message_id(message_id, limit))

    async def unprocessed(self, limit: int = 100, after: int = 0) -> list[EmailRecord]:
        """R-U1: copies no rule could place, oldest first."""
        return await self.read(lambda t: t.unprocessed(limit, after))

    async def raw(self, email_id: int) -> bytes | None:
        return await self.read(lambda t: t.raw(email_id))

    async def count_emails(self) -> int:
        return await self.read(lambda t: t.count_emails())

    async def queue_depths(self) -> dict[str, tuple[int, float | None]]:
        """Messages waiting, and when the oldest arrived: the journal (not yet decided by
        the pipeline) and the outbound queue (not yet delivered)."""
        return await self.read(lambda t: t.queue_depths())

    async def events(self, after: int = 0, limit: int = 100) -> list[dict]:
        """R-X1: the ordered events feed, oldest first, ids strictly increasing."""
        return await self.read(lambda t: t.events(after, limit))

    async def last_event_id(self) -> int:
        return await self.read(lambda t: t.last_event_id())

    async def emit(self, event_type: str, **data: Any) -> None:
        """One event in a transaction of its own (a poller's health, R-X1)."""
        await self.transaction(lambda t: t.emit(event_type, **data))

    async def settings(self) -> dict:
        return await self.read(lambda t: t.settings())

    async def save_settings(self, values: dict) -> None:
        await self.transaction(lambda t: t.save_settings(values))


def _journal_rows(batch: list[_Job], message_id: int, email_id: int
                  ) -> tuple[tuple[list, list, list], list[list[int]], tuple[int, int]]:
    """The rows of one journal commit (each message's bytes once, one email row per copy,
    the poll keys), the email ids of each job, and the next free ids."""
    now = time.time()
    message_rows, email_rows, polled_rows, results = [], [], [], []
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
                               copy.mail_from,
                               json.dumps(list(copy.rcpt_to)) if copy.rcpt_to else "[]",
                               copy.message_id, copy.folder_path, copy.peer, copy.helo, now))
            if copy.poll_key is not None:
                polled_rows.append((copy.connector, copy.folder_path or "", copy.poll_key,
                                    email_id, now))
            ids.append(email_id)
            email_id += 1
        results.append(ids)
    return (message_rows, email_rows, polled_rows), results, (message_id, email_id)


# Rows per INSERT statement of a journal commit, and bytes of messages bound at once.
# executemany binds and steps once per row, handing the interpreter lock to the event
# loop and waiting to take it back at every step; a statement of many rows binds in one
# call and steps once. Measured on polled copies: a commit of 100 alone 5.3 -> 4.8 ms,
# the IMAP journal-only drain about 3% faster (bench/RESULTS.md, issue 14). Each
# statement's row count is a power of two up to INSERT_ROWS: few statements to prepare
# and cache.
INSERT_ROWS = 32
INSERT_BYTES = 1 << 20


def _insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple],
                 size: Callable[[tuple], int] | None = None) -> None:
    """``head VALUES (...), (...)`` for ``rows``, a few statements for them all. With
    ``size``, a statement binds at most INSERT_BYTES (or a single row): binding copies
    each value, and the copies live until the statement has run."""
    start = 0
    while start < len(rows):
        count, bound = 0, 0
        while start + count < len(rows) and count < INSERT_ROWS:
            if size is not None:
                bound += size(rows[start + count])
                if count and bound > INSERT_BYTES:
                    break
            count += 1
        step = 1 << (count.bit_length() - 1)        # the largest power of two <= count
        chunk = rows[start:start + step]
        conn.execute(_values_sql(head, len(chunk[0]), step),
                     [value for row in chunk for value in row])
        start += step


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([one] * rows)}"


def _driver_error(exc: Exception) -> Exception:
    """What the driver said, as the store's own error: callers never see sqlite3."""
    if isinstance(exc, sqlite3.Error):
        error = StoreError(f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error
    return exc


async def _select_one(txn: SqliteTxn) -> int:
    return txn.conn.execute("SELECT 1").fetchone()[0]
