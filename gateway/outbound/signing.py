"""Signing a batch of outbound mail ahead of its sending, on threads of its own.

Each DKIM signature costs about a millisecond of CPU (RSA-2048; Ed25519 far
less), spent inside OpenSSL with the GIL released. Submitting the whole batch
when it is read lets those milliseconds run on another core while the lanes
talk SMTP, so a lane finds its next mail already signed instead of waiting for
it; the event loop never signs.

- One thread fewer than there are cores (at least one): the event loop, which
  sends, keeps a core. More signing threads only fight it for that core.
- Mail goes to the threads in small slices of the batch, in batch order: one
  hand-over and one wake-up of the event loop per slice instead of per mail
  (per mail, that cost about 5% of the sending rate on two cores). The first
  few go one by one, so the lanes can start sending at once.
- The pool is the delivery's own, so signing neither waits behind nor holds up
  other work on asyncio's default executor.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

Signer = Callable[[bytes], tuple[bytes, str | None]]
Signed = asyncio.Future        # of (raw as sent, signing domain or None)
SLICE = 8                      # mails a thread signs before the loop hears of them


class SigningPool:
    def __init__(self, signer: Signer, workers: int | None = None):
        self.signer = signer
        self.workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self._pool: ThreadPoolExecutor | None = None

    def ahead(self, mails: Iterable[tuple[int, bytes]]) -> dict[int, Signed]:
        """Start signing every ``(key, raw)``; a future per key, awaited when sent."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dkim")
        futures: dict[int, Signed] = {}
        batch = list(mails)
        start = 0
        while start < len(batch):
            # the first mails one by one, so the lanes start sending at once
            part = batch[start:start + (1 if start < SLICE else SLICE)]
            start += len(part)
            waiting = [loop.create_future() for _ in part]
            for (key, _), future in zip(part, waiting):
                future.add_done_callback(_observed)
                futures[key] = future
            done = loop.run_in_executor(self._pool, self._sign_all, [raw for _, raw in part])
            done.add_done_callback(lambda d, waiting=waiting: _settle(d, waiting))
        return futures

    def _sign_all(self, raws: list[bytes]) -> list[tuple[bool, object]]:
        """``(True, result)`` or ``(False, exception)`` per mail: one bad mail fails
        only its own send."""
        out: list[tuple[bool, object]] = []
        for raw in raws:
            try:
                out.append((True, self.signer(raw)))
            except Exception as exc:
                out.append((False, exc))
        return out

    def close(self) -> None:
        """Drop signatures not started yet (their mail stays queued); no wait. The
        next ``ahead`` starts new threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _settle(done: asyncio.Future, waiting: list[Signed]) -> None:
    """Hand each mail of a slice its signature, or its error."""
    if done.cancelled() or done.exception() is not None:
        for future in waiting:
            if future.done():
                continue
            if done.cancelled():
                future.cancel()
            else:
                future.set_exception(done.exception())
        return
    for future, (ok, value) in zip(waiting, done.result()):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _observed(future: asyncio.Future) -> None:
    """A signature whose lane stopped before sending it is never awaited; reading its
    error here keeps asyncio from logging it as lost. The lane that does await it
    still gets the error."""
    if not future.cancelled():
        future.exception()
