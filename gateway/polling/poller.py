"""Mailbox pollers (R-I4, R-I5, R-B5): fetch, journal, and only then delete.

One :class:`Poller` per enabled polled connector. Every ``poll_interval`` it
opens a session with the mailbox and, folder by folder:

1. lists the messages by their stable key (IMAP ``uidvalidity:uid``, POP3
   UIDL, Graph id);
2. fetches, in batches, those the ``polled`` table does not know;
3. journals them through intake: each copy carries its key, and the journal writes
   the key in the same fsynced commit as the copy (``Copy.poll_key``);
4. removes them from the server (or, with ``keep_on_server``, marks them seen),
   REMOVE_BATCH at a time, each only after its commit returned.

A crash anywhere leaves a consistent state: before 3 the message is still on
the server and is fetched again; after 3 the next round finds its key known and
only removes it again, so it is never journaled twice. Dedup (R-D1) absorbs the
two cases that do fetch a message again: a server handing the same bytes back
under a new key, and a poller replaced (directory change) while the commit of
its last batch was still queued behind the next poller's listing. Keys of messages
gone from a folder are forgotten, so the table is as big as the mailboxes.

Between rounds an IMAP connector with ``idle`` (the default) keeps one more
session in IDLE (RFC 2177) on its first folder: new mail there starts a round at
once (and the round reads every folder), so the interval is only the fallback.
During a round that session leaves IDLE (``WatchHold``): it would otherwise be told
of every message the round removes.

R-B5: with ``start_from = "now"`` the first round of a folder only remembers
what is there (a watermark) and fetches nothing; those messages stay untouched.

A failing mailbox never takes the gateway down: the poller reports (status,
metrics, one event per failure spell), backs off exponentially and retries.

While intake's journal backlog is over its high-water mark (``paused``), a round
opens no session and the mail stays in the mailbox; a round that intake refuses
half-way (:class:`gateway.intake.Throttled`) ends there. Neither is the mailbox's
failure: no ``failing`` state, no event, no backoff; the poller looks again every
PAUSED_RECHECK seconds (or its interval, when shorter).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterator

from gateway.intake import Throttled
from gateway.model import Connector
from gateway.polling.mailboxes import open_mailbox
from gateway.protocols.mailbox import (Credentials, Mailbox, MailboxError, WatchHold,
                                       WatchUnsupported)
from storage.base import Store, StoreError

log = logging.getLogger("mailgate.poller")

BATCH = 100                 # messages per fetch and per journal commit
# Committed messages are removed from the server this many at a time (and at the end
# of each folder). Removal is the server's dearest step: Dovecot (Maildir) pays a
# fixed cost per EXPUNGE, ~60 us a message in batches of 100 against ~33 us in
# batches of 1000 (bench/RESULTS.md). Waiting is safe: a committed message's key
# is in the journal, so a crash before its removal only makes the next round remove
# it (or, for POP3, fetch it again for dedup to absorb).
REMOVE_BATCH = 1000
# Journal commits a folder's drain may have in flight while it fetches on. With one,
# the poller waited for each commit in turn, and on two cores shared with the event loop
# and the server a commit (an fsync) often took longer than the next fetch. Up to a
# removal batch's worth may now queue; the store merges what queued into one commit.
# In bytes, at most AHEAD_BYTES wait: a large message is a batch of its own, so memory
# stays at about two batches then, as before.
COMMITS_AHEAD = REMOVE_BATCH // BATCH
AHEAD_BYTES = 16 * 1024 * 1024
MAX_BACKOFF = 30 * 60       # seconds: a broken mailbox is retried at least this often
MIN_BACKOFF = 5
STOP_GRACE = 5.0            # seconds a stopping poller may spend logging out
IDLE_RETRY = 30             # seconds before a failed IDLE watcher reconnects (then doubling)
IDLE_STABLE = 300           # seconds an IDLE watch must have held for the pause to reset
PAUSED_RECHECK = 5          # seconds between looks while intake is throttled
HOLD_WAIT = 5.0             # seconds a round waits for its IDLE watcher to step aside

# Intake's door for polled mail: (connector, source, folder, [(stored key, raw)]) → ids,
# once durably committed (``Intake.accept_polled``).
Journal = Callable[[str, str, str, list[tuple[str, bytes]]], Awaitable[list[int]]]


@dataclass
class PollerStatus:
    """What ``/readyz`` and ``GET /connectors/{name}/status`` show of one poller."""
    connector: str
    protocol: str
    state: str = "starting"             # starting | ok | failing | stopped
    rounds: int = 0
    failures: int = 0                   # consecutive
    last_error: str | None = None
    last_success_at: float | None = None
    last_round_fetched: int = 0
    next_poll_at: float | None = None
    fetched_total: int = 0
    too_large: int = 0                  # messages over the size limit, left on the server

    def as_json(self) -> dict:
        return {"connector": self.connector, "protocol": self.protocol, "state": self.state,
                "rounds": self.rounds, "failures": self.failures,
                "last_error": self.last_error, "last_success_at": self.last_success_at,
                "last_round_fetched": self.last_round_fetched,
                "fetched_total": self.fetched_total, "next_poll_at": self.next_poll_at,
                "too_large": self.too_large}


@dataclass
class RoundResult:
    fetched: int = 0
    removed: int = 0
    skipped: int = 0
    too_large: int = 0
    folders: dict[str, int] = field(default_factory=dict)


def mailbox_scope(connector: Connector, credentials: Credentials) -> str:
    """A short stable name of the mailbox a connector reads, prefixed to its stored
    keys: re-pointing the connector (another host, login or shared mailbox) starts
    afresh instead of trusting keys that belong to a different mailbox."""
    parts = (connector.protocol, connector.host.lower(), str(connector.port),
             (credentials.username or "").lower(), connector.shared_mailbox.lower())
    if connector.protocol == "graph":
        parts = (connector.protocol, connector.graph_base_url.rstrip("/").lower(),
                 connector.tenant_id.lower(),
                 (connector.shared_mailbox or connector.primary_address).lower())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16] + ":"


def batches(keys: list[str], size: int, large: set[str]) -> Iterator[list[str]]:
    """``keys`` in order, ``size`` at a time, each large message in a batch of its own:
    memory stays bounded by size x LARGE_MESSAGE plus one large message."""
    batch: list[str] = []
    for key in keys:
        if key in large:
            if batch:
                yield batch
                batch = []
            yield [key]
            continue
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def backoff(failures: int, interval: int) -> float:
    """Seconds to wait after ``failures`` failed rounds in a row: doubling from the
    poll interval (at least MIN_BACKOFF), capped, with jitter so that many
    connectors of one broken server do not retry in lockstep."""
    base = max(MIN_BACKOFF, min(interval, MAX_BACKOFF))
    delay = min(base * 2 ** max(0, failures - 1), MAX_BACKOFF)
    return delay * random.uniform(0.8, 1.0)


class Poller:
    """Polls one connector's mailbox until stopped."""

    def __init__(self, store: Store, connector: Connector, credentials: Credentials,
                 journal: Journal, *, mailbox: Mailbox | None = None,
                 new_mailbox: Callable[[], Mailbox] | None = None, batch: int = BATCH,
                 observe: Callable[[PollerStatus, float, bool], None] | None = None,
                 timeout: float | None = None, max_size: int | None = None,
                 paused: Callable[[], bool] | None = None):
        self.ledger = store.polls           # which messages are journaled (R-I4)
        self.store = store
        self.connector = connector
        self.credentials = credentials
        self.journal = journal
        options: dict = {"max_size": max_size}
        if timeout is not None:
            options["timeout"] = timeout
        # a second session per watched folder (IMAP IDLE) comes from here too
        self.new_mailbox = new_mailbox or (
            lambda: open_mailbox(connector, credentials, **options))
        self.mailbox = mailbox or self.new_mailbox()
        self.batch = batch
        self.observe = observe
        self.paused = paused        # intake's backlog gate is closed: take nothing now
        self.status = PollerStatus(connector.name, connector.protocol)
        self.scope = mailbox_scope(connector, credentials)
        self._task: asyncio.Task | None = None
        self._poll_now = asyncio.Event()
        self._started_rounds = 0
        # Keys this process removed completely; any other known key that vanished from
        # a listing may be flagged but not expunged (see two_step_remove).
        self._removed: dict[str, set[str]] = {}
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._watchers: list[asyncio.Task] = []
        # Rounds hold the watcher out of IDLE while they drain (see WatchHold).
        self._watch_hold = WatchHold()
        self._reported_too_large: set[tuple[str, str]] = set()     # (folder, key): said once

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"poller:{self.connector.name}")
        if self.connector.idle and self.connector.protocol == "imap":
            # One listening session, on the first folder: servers cap sessions per login
            # (Dovecot 10 per user and address, Gmail 15), and a watcher per folder
            # could leave the rounds none. A round reads every folder anyway.
            folder = self.mailbox.folders()[0]
            self._watchers = [loop.create_task(self._watch(folder),
                                               name=f"idle:{self.connector.name}:{folder}")]

    async def stop(self) -> None:
        """Cancel at the next await. Safe anywhere: a journal commit already handed to
        the writer completes on its own, and its keys are then known next time."""
        for watcher in self._watchers:          # listeners only: dropped, no goodbye
            watcher.cancel()
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)
            self._watchers = []
        if self._task is None:
            return
        self._task.cancel()
        # The cancelled round still says goodbye (IMAP LOGOUT, POP3 QUIT) on its way
        # out; a server that does not answer gets STOP_GRACE seconds, then the door.
        done, _ = await asyncio.wait({self._task}, timeout=STOP_GRACE)
        if not done:
            log.warning("poller %s: the server did not let go within %.0f s; closing",
                        self.connector.name, STOP_GRACE)
            self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        self.status.state = "stopped"
        self.status.next_poll_at = None
        for _, future in self._waiters:        # "poll now" callers learn it stopped
            if not future.done():
                future.set_result(self.status)
        self._waiters = []

    def poll_now(self) -> None:
        """Start the next round at once instead of after the interval."""
        self._poll_now.set()

    async def poll(self, timeout: float = 60.0) -> PollerStatus:
        """Run a round that starts after this call and wait for its end (an admin's
        "poll now", tests, the bench). Returns the status it left."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((self._started_rounds + 1, future))
        self.poll_now()
        return await asyncio.wait_for(future, timeout)

    async def _run(self) -> None:
        while True:
            self._poll_now.clear()
            self._started_rounds += 1
            number = self._started_rounds
            started = time.monotonic()
            interval = self.connector.poll_interval
            # None: intake is throttled (before the round or during it); the mail stays
            # on the server, and that is nobody's failure.
            ok = None if self.paused is not None and self.paused() else await self._round()
            if ok is None:
                delay = min(interval, PAUSED_RECHECK)
            else:
                delay = interval if ok else backoff(self.status.failures, interval)
                if self.observe is not None:
                    self.observe(self.status, time.monotonic() - started, ok)
            self.status.next_poll_at = time.time() + delay
            waiting = []
            for wanted, future in self._waiters:
                if wanted > number:
                    waiting.append((wanted, future))
                elif not future.done():
                    future.set_result(self.status)
            self._waiters = waiting
            # asyncio.wait, not wait_for: Python 3.11's wait_for returns instead of raising
            # when it is cancelled just as the event is set (a watcher's wake as the
            # poller stops), and the stopping poller would then start another round.
            waking = asyncio.ensure_future(self._poll_now.wait())
            try:
                await asyncio.wait({waking}, timeout=delay)
            finally:
                waking.cancel()

    async def _watch(self, folder: str) -> None:
        """IMAP IDLE on ``folder`` (``connector.idle``): new mail starts a round at once
        instead of after ``poll_interval``. The watcher only listens, on a session of
        its own; rounds still read, journal and remove. A watcher that fails reconnects
        after a pause (the rounds report the mailbox's health); one the server cannot
        serve ends, and the interval alone remains."""
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            mailbox, started = None, loop.time()
            try:
                mailbox = self.new_mailbox()
                await mailbox.open()
                await mailbox.watch(folder, self.poll_now, hold=self._watch_hold)
            except WatchUnsupported as exc:
                log.info("poller %s: %s; polling %s every %d s", self.connector.name, exc,
                         folder, self.connector.poll_interval)
                return
            except (MailboxError, OSError, asyncio.TimeoutError) as exc:
                log.debug("poller %s: IDLE on %s ended: %s", self.connector.name, folder, exc)
            except asyncio.CancelledError:
                raise
            except Exception:       # a bug must not end the watching for good
                log.exception("poller %s: IDLE on %s failed", self.connector.name, folder)
            finally:
                if mailbox is not None:
                    mailbox.abort()
            # Only a watch that held for a while resets the pause: a server that logs
            # us in and then refuses IDLE must not be asked again every 30 s for ever.
            failures = 1 if loop.time() - started > IDLE_STABLE else failures + 1
            await asyncio.sleep(backoff(failures, IDLE_RETRY))

    async def _round(self) -> bool | None:
        """True when the round succeeded, False when it failed, None when intake refused
        the mail (backlog over its high-water mark) and the round stopped there."""
        status = self.status
        status.rounds += 1
        result = RoundResult()
        try:
            if self._watchers:
                await self._watch_hold.hold(HOLD_WAIT)
            await self.poll_once(result)
        except asyncio.CancelledError:
            raise
        except Throttled:
            status.last_round_fetched = result.fetched      # journaled before the gate shut
            status.fetched_total += result.fetched
            log.debug("poller %s: intake is throttled; the rest stays on the server",
                      self.connector.name)
            return None
        except (MailboxError, StoreError, OSError, asyncio.TimeoutError) as exc:
            return await self._failed(str(exc) or exc.__class__.__name__, result)
        except Exception as exc:  # a bug must not end the poller for good
            log.exception("poller %s: unexpected error", self.connector.name)
            return await self._failed(f"internal error: {exc.__class__.__name__}: {exc}",
                                      result)
        finally:
            self._watch_hold.release()
        recovered = status.state == "failing"
        status.state, status.failures, status.last_error = "ok", 0, None
        status.last_success_at = time.time()
        status.last_round_fetched = result.fetched
        status.fetched_total += result.fetched
        status.too_large = result.too_large
        if result.fetched or result.skipped:
            log.info("poller %s: fetched %d, removed %d, skipped %d (%s)", self.connector.name,
                     result.fetched, result.removed, result.skipped,
                     ", ".join(f"{f}: {n}" for f, n in result.folders.items()))
        if recovered:
            log.info("poller %s: mailbox reachable again", self.connector.name)
            await self._emit("connector.poll_recovered")
        return True

    async def _failed(self, error: str, result: RoundResult) -> bool:
        status = self.status
        status.last_round_fetched = result.fetched      # what was journaled before it broke
        status.fetched_total += result.fetched
        first = status.state != "failing"
        status.state, status.last_error = "failing", error
        status.failures += 1
        log.warning("poller %s: round failed (%d in a row): %s", self.connector.name,
                    status.failures, error)
        if first:
            await self._emit("connector.poll_failed", error=error)
        return False

    async def _committed(self, folder: str, keys: list[str], commit: asyncio.Task,
                         result: RoundResult, pending: list[str]) -> None:
        """Wait for a batch's journal commit; its keys then wait in ``pending`` for removal."""
        await commit                        # durable, keys included (R-I4); raises if not
        result.fetched += len(keys)
        result.folders[folder] += len(keys)
        pending.extend(keys)

    async def _remove(self, mailbox: Mailbox, folder: str, keys: list[str],
                      result: RoundResult) -> None:
        """Remove committed messages (only ever called with keys already journaled)."""
        await mailbox.remove(folder, keys)
        result.removed += len(keys)
        self._removed.setdefault(folder, set()).update(keys)

    async def _leave_too_large(self, mailbox: Mailbox, folder: str, new: list[str],
                               result: RoundResult) -> list[str]:
        """Messages over the gateway's size limit (``[lmtp] max_message_size``) are not
        fetched: they stay on the server, where nothing is lost, and each is reported
        once (log, ``connector.message_too_large`` event, status) for a person to deal
        with. Fetching them would hold the whole message in memory."""
        too_large = [k for k in new if k in mailbox.too_large]
        if not too_large:
            return new
        result.too_large += len(too_large)
        for key in too_large:
            if (folder, key) in self._reported_too_large:
                continue
            self._reported_too_large.add((folder, key))
            size = mailbox.too_large[key]
            log.warning("poller %s: %s message %s is %s, over the limit of %d bytes; left on "
                        "the server", self.connector.name, folder, key,
                        f"{size} bytes" if size else "larger", mailbox.max_size)
            await self._emit("connector.message_too_large", folder=folder, key=key,
                             size=size, limit=mailbox.max_size)
        skip = set(too_large)
        return [k for k in new if k not in skip]

    async def _emit(self, event_type: str, **data: object) -> None:
        """One event per change of health, so a host can alert (R-X1)."""
        try:
            await self.store.emit(event_type, connector=self.connector.name,
                                  protocol=self.connector.protocol, **data)
        except Exception as exc:  # the store may be the very thing that fails
            log.error("poller %s: cannot record %s: %s", self.connector.name, event_type, exc)

    # -- one round ------------------------------------------------------------------------

    async def poll_once(self, result: RoundResult | None = None) -> RoundResult:
        """One session: every folder, every new message journaled before it is removed.
        ``result`` is filled as it goes, so a round that breaks still tells what it did."""
        result = result if result is not None else RoundResult()
        failed: list[str] = []
        async with self.mailbox as mailbox:
            for folder in mailbox.folders():
                # One missing or broken folder must not keep the others from being polled.
                try:
                    await self._poll_folder(mailbox, folder, result)
                except MailboxError as exc:
                    failed.append(f"{folder}: {exc}")
        if failed:
            raise MailboxError("; ".join(failed))
        return result

    async def _poll_folder(self, mailbox: Mailbox, folder: str, result: RoundResult) -> None:
        name, scope = self.connector.name, self.scope
        present = await mailbox.keys(folder)
        ledger = await self.ledger.known(name, folder, scope)
        known = ledger.known
        if ledger.foreign:      # keys of a mailbox this connector no longer points at
            await self.ledger.forget(name, folder, list(ledger.foreign))
        if not ledger.polled_before and self.connector.start_from == "now":
            await self.ledger.mark(name, folder, scope, present)
            result.skipped += len(present)
            log.info("poller %s: %s first polled with start_from=now: %d message(s) left "
                     "as they are (R-B5)", name, folder, len(present))
            return
        if not ledger.polled_before:
            await self.ledger.mark(name, folder, scope, [])
        # Journaled before, still on the server: the delete of an earlier round did not
        # happen (crash, dropped session). With keys the server never reuses (IMAP
        # uidvalidity:uid, Graph ids) remove it now and never journal it again. A POP3
        # UIDL may be reused for new mail once the old one is gone, so POP3 fetches it
        # again and lets dedup (R-D1) absorb an identical copy: nothing new is lost.
        leftover = [k for k in present if known.get(k) is not None]
        if not mailbox.stable_keys and self.connector.clears_folder:
            new = [k for k in present if known.get(k, 0) is not None]
        else:
            new = [k for k in present if k not in known]
            if leftover and self.connector.clears_folder:
                await self._remove(mailbox, folder, leftover, result)
        result.folders[folder] = 0
        new = await self._leave_too_large(mailbox, folder, new, result)
        # Commits (an fsync each, on the writer's thread) overlap the fetches: up to
        # COMMITS_AHEAD batches (AHEAD_BYTES) commit, oldest first, while the next is
        # fetched. Committed keys wait in ``pending`` and are removed REMOVE_BATCH at a
        # time: a key is never removed before its own commit returned.
        committing: collections.deque[tuple[list[str], int, asyncio.Future]] = \
            collections.deque()
        pending: list[str] = []
        # A mailbox that learns sizes as it fetches (IMAP) leaves a large message out of
        # a batch and names it in ``large``: it is fetched alone after the others.
        found_large: list[str] = []

        def work() -> Iterator[list[str]]:
            yield from batches(new, self.batch, mailbox.large)
            while found_large:
                yield [found_large.pop(0)]

        try:
            for batch in work():
                fetched = await mailbox.fetch(folder, batch)
                if len(batch) > 1 and len(fetched) < len(batch):
                    got = {f.key for f in fetched}
                    found_large += await self._leave_too_large(
                        mailbox, folder, [k for k in batch
                                          if k not in got and k in mailbox.large], result)
                while committing and (committing[0][2].done()
                                      or len(committing) >= COMMITS_AHEAD
                                      or sum(size for _, size, _ in committing) >= AHEAD_BYTES):
                    keys, _, commit = committing.popleft()
                    await self._committed(folder, keys, commit, result, pending)
                if len(pending) >= REMOVE_BATCH:
                    await self._remove(mailbox, folder, pending, result)
                    pending = []
                if fetched:
                    stored = [(scope + f.key, f.raw) for f in fetched]
                    committing.append(([f.key for f in fetched], sum(len(f.raw) for f in fetched),
                                       asyncio.ensure_future(self.journal(
                                           name, mailbox.source, folder, stored))))
            while committing:
                keys, _, commit = committing.popleft()
                await self._committed(folder, keys, commit, result, pending)
            if pending:
                await self._remove(mailbox, folder, pending, result)
        finally:
            if committing:      # a fetch or a commit failed: let the others finish, keep
                await asyncio.gather(*(c for _, _, c in committing),   # the mail
                                     return_exceptions=True)
        on_server = set(present)
        gone = [k for k in known if k not in on_server]
        removed = self._removed.setdefault(folder, set())
        half_removed = [k for k in gone if known[k] is not None and k not in removed]
        if half_removed and mailbox.two_step_remove and self.connector.clears_folder:
            await mailbox.remove(folder, half_removed)      # flagged, never expunged
        removed.difference_update(gone)
        if gone:
            await self.ledger.forget(name, folder, [scope + k for k in gone])
