"""Preparation in worker processes: every core, a deadline per copy, and a kill that works.

DESIGN "The store": the pure half of deciding (``pipeline.prepare``) runs away from
the writer and the event loop. Threads would share one interpreter lock with the
front door, and a thread cannot be stopped: a copy built to make the parser spin
would keep it forever. A process can be killed. So each worker is a process of its
own. A batch is split between the workers; each gets its share in one message and
sends each copy back as soon as it is prepared, so a copy that overruns
``deadline`` is known by name: its worker is killed and replaced, the copy comes
back with ``parse_timeout`` (it ends unprocessed, ``unparseable``, its raw bytes
kept: R-U1, reliability A12), and the rest of the share goes to the replacement.

A worker is a fresh interpreter running this module (``python -m
gateway.pipeline.workers``) over a socket pair: it copies none of the gateway's
threads, sockets or state, and it imports only the preparation code. (Python's
``multiprocessing`` start methods either fork a process that has threads, or import
the host's ``__main__`` again in every worker, which would re-run an embedding
host's program.) Starting one takes a few hundred milliseconds, at start and after
a kill. The settings preparation reads go to each worker once, and again only when
they change. Each worker has a thread of ours that talks to it (a socket's send and
receive block; the event loop must not).

With ``processes=0`` (or once stopped) copies are prepared on a thread of this
process instead, for hosts that cannot start processes and for ``mailgate
explain``: same results, but an overrunning copy is only abandoned, not stopped.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from multiprocessing.connection import Connection

from gateway.pipeline.prepare import Prepared, PrepareSettings, prepare
from storage.base import JournaledCopy

log = logging.getLogger("mailgate.pipeline")

DEADLINE = 20.0         # seconds one copy may take (reliability A12)


def serve(conn: Connection) -> None:
    """A worker's life: settings, then shares of copies (the copies without their bytes,
    then each copy's bytes), each copy answered as soon as it is prepared, until the
    pipe closes."""
    settings = PrepareSettings()
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            return
        if kind == "settings":
            settings = payload
            continue
        copies = [replace(copy, raw=conn.recv_bytes()) for copy in payload]
        for copy in copies:
            conn.send(prepare(copy, settings))


class _Worker:
    """One worker process and the socket to it. It ends when the socket closes."""

    def __init__(self, number: int):
        self.name = f"prepare-{number}"
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with theirs:
            self.process = subprocess.Popen(   # -P: the working directory is not on its path
                [sys.executable, "-P", "-m", "gateway.pipeline.workers",
                 str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        self.conn = Connection(ours.detach())
        self.settings: PrepareSettings | None = None

    def close(self, *, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        self.conn.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Lane:
    """A worker and the thread of ours that feeds it; replaces the worker when it must."""

    def __init__(self, numbers: itertools.count, deadline: float):
        self.numbers = numbers
        self.deadline = deadline
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self.worker = _Worker(next(numbers))

    def run(self, copies: list[JournaledCopy], settings: PrepareSettings) -> list[Prepared]:
        """On the lane's thread: every copy of the share prepared, in order."""
        done: list[Prepared] = []
        while len(done) < len(copies):
            rest = copies[len(done):]
            try:
                self._send(rest, settings)
                for copy in rest:
                    if not self.worker.conn.poll(self.deadline):
                        log.warning("email %s: preparing it took over %.0f s; it ends "
                                    "unparseable and %s is restarted", copy.email_id,
                                    self.deadline, self.worker.name)
                        done.append(_failed(copy, "parse_timeout"))
                        self._replace()
                        break
                    done.append(self.worker.conn.recv())
            except (EOFError, OSError) as exc:      # the worker died under this copy
                copy = copies[len(done)]
                log.error("email %s: %s died while preparing it (%s); it ends unparseable",
                          copy.email_id, self.worker.name, exc)
                done.append(_failed(copy, "worker_died"))
                self._replace()
        return done

    def _send(self, copies: list[JournaledCopy], settings: PrepareSettings) -> None:
        if settings is not self.worker.settings:
            self.worker.conn.send(("settings", settings))
            self.worker.settings = settings
        # The raw bytes go as they are, after the rest: pickling a copy would copy them
        # (a 33 MB message would cost 33 MB more on each side).
        self.worker.conn.send(("copies", [replace(copy, raw=b"") for copy in copies]))
        for copy in copies:
            self.worker.conn.send_bytes(copy.raw)

    def _replace(self) -> None:
        self.worker.close(kill=True)
        self.worker = _Worker(next(self.numbers))

    def close(self) -> None:
        self.worker.close()
        self.thread.shutdown(wait=False)


class Preparer:
    """Prepares the copies of a batch on ``processes`` workers (default: one per core)."""

    def __init__(self, processes: int | None = None, deadline: float = DEADLINE):
        self.processes = (os.cpu_count() or 1) if processes is None else processes
        self.deadline = deadline
        self._lanes: list[_Lane] = []
        self._numbers = itertools.count(1)
        self._started = False

    async def start(self) -> None:
        """From now on copies go to worker processes; they are started with the first
        copy (a gateway that gets no mail starts none)."""
        self._started = True

    async def _ensure_lanes(self) -> None:
        if self._started and self.processes and not self._lanes:
            self._lanes = await asyncio.to_thread(
                lambda: [_Lane(self._numbers, self.deadline) for _ in range(self.processes)])

    async def stop(self) -> None:
        """The workers end; a copy prepared after this (``mailgate explain``, a host
        placing mail while the pipeline is stopped) is prepared on a thread."""
        self._started = False
        lanes, self._lanes = self._lanes, []
        await asyncio.to_thread(lambda: [lane.close() for lane in lanes])

    async def prepare(self, copies: list[JournaledCopy],
                      settings: PrepareSettings) -> list[Prepared]:
        """Each copy prepared, in order."""
        if not copies:
            return []
        await self._ensure_lanes()
        if not self._lanes:
            return await asyncio.gather(*(self._on_thread(copy, settings) for copy in copies))
        loop = asyncio.get_running_loop()
        lanes = self._lanes[:len(copies)]
        for lane in lanes:
            lane.deadline = self.deadline
        shares = [copies[n::len(lanes)] for n in range(len(lanes))]
        prepared = await asyncio.gather(*(loop.run_in_executor(lane.thread, lane.run, share,
                                                                settings)
                                          for lane, share in zip(lanes, shares)))
        ordered: list[Prepared] = [None] * len(copies)      # type: ignore[list-item]
        for n, share in enumerate(prepared):
            ordered[n::len(lanes)] = share
        return ordered

    async def _on_thread(self, copy: JournaledCopy, settings: PrepareSettings) -> Prepared:
        work = asyncio.ensure_future(asyncio.to_thread(prepare, copy, settings))
        try:
            return await asyncio.wait_for(asyncio.shield(work), self.deadline)
        except asyncio.TimeoutError:
            log.warning("email %s: preparing it took over %.0f s; it ends unparseable",
                        copy.email_id, self.deadline)
            return _failed(copy, "parse_timeout")


def _failed(copy: JournaledCopy, parse_error: str) -> Prepared:
    return Prepared(email_id=copy.email_id, connector=copy.connector, source=copy.source,
                    mail_from=copy.mail_from, rcpt_to=tuple(copy.rcpt_to),
                    folder_path=copy.folder_path, parse_error=parse_error)


if __name__ == "__main__":      # a worker: python -m gateway.pipeline.workers <socket fd>
    # A stop is the gateway's to make: it drains, then closes the socket. A Ctrl-C in a
    # terminal or a service manager's SIGTERM to the whole group must not end a worker
    # in the middle of a copy (the copy would come back as if it had killed it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(Connection(int(sys.argv[1])))
