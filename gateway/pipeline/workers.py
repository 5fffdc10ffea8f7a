"""Preparation in worker processes: every core, a deadline per copy, and a kill that works.

DESIGN "The store": the pure half of deciding (``pipeline.prepare``) runs away from
the writer and the event loop. Threads would share one interpreter lock with the
front door, and a thread cannot be stopped: a copy built to make the parser spin
would keep it forever. A process can be killed. So each worker is a process of its
own, fed one copy at a time over a pipe; when a copy overruns ``deadline`` its
worker is killed and replaced, and the copy comes back with ``parse_timeout``: it
ends unprocessed (``unparseable``), its raw bytes kept (R-U1, reliability A12).

Workers are forked from a clean ``forkserver`` process that has imported the
preparation code once, so starting or replacing one takes milliseconds and never
copies the gateway's threads or sockets. The settings preparation reads go to each
worker once, and again only when they change.

With ``processes=0`` copies are prepared on a thread of this process instead (for
hosts that cannot start processes, and tests that replace parts of the parser):
same results, but an overrunning copy is only abandoned, not stopped.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from gateway.pipeline.prepare import Prepared, PrepareSettings, prepare
from storage.base import JournaledCopy

log = logging.getLogger("mailgate.pipeline")

DEADLINE = 20.0         # seconds one copy may take (reliability A12)
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.pipeline.prepare"])


def serve(conn: Connection) -> None:
    """A worker's life: settings, then copies, one at a time, until the pipe closes."""
    settings = PrepareSettings()
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            return
        if kind == "settings":
            settings = payload
        else:
            conn.send(prepare(payload, settings))


class _Worker:
    """One worker process, and the thread of ours that talks to it (a pipe's send and
    receive block; the event loop must not)."""

    def __init__(self, number: int):
        self.name = f"prepare-{number}"
        ours, theirs = _CONTEXT.Pipe()
        self.conn = ours
        self.process = _CONTEXT.Process(target=serve, args=(theirs,), name=self.name,
                                        daemon=True)
        self.process.start()
        theirs.close()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self.settings: PrepareSettings | None = None

    def round_trip(self, settings: PrepareSettings, copy: JournaledCopy) -> Prepared:
        if settings is not self.settings:
            self.conn.send(("settings", settings))
            self.settings = settings
        self.conn.send(("copy", copy))
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.close()

    def close(self) -> None:
        self.conn.close()
        self.thread.shutdown(wait=False)
        self.process.join(timeout=5)


class Preparer:
    """Prepares the copies of a batch on ``processes`` workers (default: one per core)."""

    def __init__(self, processes: int | None = None, deadline: float = DEADLINE):
        self.processes = (os.cpu_count() or 1) if processes is None else processes
        self.deadline = deadline
        self._idle: asyncio.Queue[_Worker] | None = None
        self._workers: list[_Worker] = []
        self._numbers = itertools.count(1)
        self._thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self.processes == 0:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
            return
        self._idle = asyncio.Queue()
        self._workers = await asyncio.to_thread(
            lambda: [_Worker(next(self._numbers)) for _ in range(self.processes)])
        for worker in self._workers:
            self._idle.put_nowait(worker)

    async def stop(self) -> None:
        """The workers end; a copy prepared after this (``mailgate explain``, a host
        placing mail while the pipeline is stopped) is prepared on a thread."""
        workers, self._workers, self._idle = self._workers, [], None
        await asyncio.to_thread(lambda: [w.close() for w in workers])
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)

    async def prepare(self, copies: list[JournaledCopy],
                      settings: PrepareSettings) -> list[Prepared]:
        """Each copy prepared, in order; the workers take them as they come free."""
        return list(await asyncio.gather(*(self._one(copy, settings) for copy in copies)))

    async def _one(self, copy: JournaledCopy, settings: PrepareSettings) -> Prepared:
        loop = asyncio.get_running_loop()
        if self._idle is None:
            return await self._bounded(
                loop.run_in_executor(self._thread, prepare, copy, settings), copy, None)
        worker = await self._idle.get()
        done = loop.run_in_executor(worker.thread, worker.round_trip, settings, copy)
        prepared = await self._bounded(done, copy, worker)
        if prepared.parse_error == "parse_timeout" or worker.process.exitcode is not None:
            worker = await self._replace(worker)
        self._idle.put_nowait(worker)
        return prepared

    async def _bounded(self, work: Any, copy: JournaledCopy,
                       worker: _Worker | None) -> Prepared:
        work = asyncio.ensure_future(work)
        try:
            return await asyncio.wait_for(asyncio.shield(work), self.deadline)
        except asyncio.TimeoutError:
            work.add_done_callback(_abandoned)
            log.warning("email %s: preparing it took over %.0f s; it ends unparseable%s",
                        copy.email_id, self.deadline,
                        "" if worker is None else f" and {worker.name} is restarted")
            if worker is not None:
                worker.process.kill()       # its pending receive ends with EOFError
            return _failed(copy, parse_error="parse_timeout")
        except (EOFError, OSError, BrokenPipeError) as exc:
            log.error("email %s: %s died while preparing it (%s); it ends unparseable",
                      copy.email_id, worker.name if worker else "the preparer", exc)
            return _failed(copy, parse_error="worker_died")

    async def _replace(self, worker: _Worker) -> _Worker:
        """A killed or dead worker is replaced by a new one, in a thread (it forks)."""
        self._workers.remove(worker)
        fresh = await asyncio.to_thread(self._swap, worker)
        self._workers.append(fresh)
        return fresh

    def _swap(self, worker: _Worker) -> _Worker:
        worker.kill()
        return _Worker(next(self._numbers))


def _abandoned(future: asyncio.Future) -> None:
    """An overrun copy's round trip ends when its worker is killed: nobody waits for it."""
    if not future.cancelled():
        future.exception()


def _failed(copy: JournaledCopy, *, parse_error: str) -> Prepared:
    return Prepared(email_id=copy.email_id, connector=copy.connector, source=copy.source,
                    mail_from=copy.mail_from, rcpt_to=tuple(copy.rcpt_to),
                    folder_path=copy.folder_path, parse_error=parse_error)
