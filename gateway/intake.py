"""Intake: turn one received transaction into journaled copies, one per connector.

DESIGN step 1, and the only door into the journal, for pushed and polled mail
alike. Pushed mail (LMTP, SMTP) arrives as one message for a list of
envelope recipients; each recipient belongs to a connector, and each receiving
connector gets its own copy (R-I7, SPEC §3 "one copy per receiving connector").
Intake answers per recipient: accepted only when its connector's copy is
committed, otherwise a temporary failure so the MTA keeps the mail (R-I1).

Nothing here parses MIME: the only thing read from the message is its
Message-ID, by a bounded scan of the header block, so that the API can find
copies by Message-ID before the pipeline has run.

Intake also guards the journal's size (``[storage] backlog_high_water``): while
more copies wait for the pipeline than the high-water mark, :class:`Backpressure`
is closed, a new LMTP/SMTP transaction is answered ``451 4.3.2`` at MAIL FROM
(:meth:`Intake.admit`) so the MTA keeps the mail, and polled mail stays in its
mailbox (:class:`Throttled`). A transaction already in DATA is never refused.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from gateway.directory.addresses import AddressBook
from gateway.model import Copy
from storage.base import Store, StoreError

log = logging.getLogger("mailgate.intake")

_HEADER_SCAN_LIMIT = 256 * 1024
_MESSAGE_ID = re.compile(rb"(?:^|\n)message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^<>\r\n]{1,995}>)",
                         re.IGNORECASE)


def header_block(raw: bytes) -> bytes:
    """The header section of ``raw`` (capped), without the blank line."""
    end = raw.find(b"\r\n\r\n", 0, _HEADER_SCAN_LIMIT)
    if end < 0:
        end = raw.find(b"\n\n", 0, _HEADER_SCAN_LIMIT)
    return raw[:end if end >= 0 else _HEADER_SCAN_LIMIT]


def scan_message_id(raw: bytes) -> str | None:
    """The first Message-ID header's ``<id>``, or None when absent or malformed."""
    match = _MESSAGE_ID.search(header_block(raw))
    if not match:
        return None
    return match.group(1).decode("utf-8", "replace")


# RFC 3463 X.3.2 "system not accepting network messages": temporary, so the MTA keeps
# the mail in its queue and retries; said at MAIL FROM, before any DATA is sent.
THROTTLED_REPLY = "451 4.3.2 Too much mail waiting to be processed, try again later"
REFRESH_SECONDS = 0.25      # the store's count is at most this old when the gate is asked
_TRUSTED_REFRESHES = 4      # a count older than this many refreshes closes nothing itself


class Throttled(StoreError):
    """Intake refused to journal: the backlog is over its high-water mark. Nothing was
    stored; the caller keeps the mail (a poller leaves it in the mailbox) and retries.
    A StoreError, so a caller that knows no better still keeps the mail."""


class Backpressure:
    """The journal backlog's high-water gate (``[storage] backlog_high_water``).

    The backlog is the number of copies journaled and not yet decided. The gate
    closes when it reaches ``high`` and opens again once it is down to ``low``
    (80% of ``high`` unless given), so that it does not flap around one number.

    Reading the gate costs nothing on the hot path: the backlog is the store's
    last count (``count``, a COUNT over the partial index of journaled copies)
    plus every copy this process journaled since that count began. The count is
    refreshed in the background when it is older than ``refresh`` seconds and
    someone asks, and every ``refresh`` seconds while the gate is closed, so that
    it opens (and says so) without waiting for the next transaction. Between two
    counts the copies the pipeline decided are not seen, so the estimate errs
    high: the gate may close up to ``refresh`` seconds of pipeline work early.
    It closes late only by one count (milliseconds) when the last count is too
    old to trust, or by what other instances journaled since the last count
    (R-H2: they share the store, and the count). ``high`` 0 turns the gate off.
    """

    def __init__(self, count: Callable[[], Awaitable[int]], high: int, *,
                 low: int | None = None, refresh: float = REFRESH_SECONDS,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.count = count
        self.high = high
        self.low = high * 4 // 5 if low is None else low
        self.refresh_after = refresh
        self.on_change = on_change
        self.clock = clock
        self.closed = False
        self.refused = 0                    # transactions refused in this closed spell
        self._counted = 0                   # the store's last count ...
        self._counted_at = float("-inf")    # ... when it began ...
        self._journaled_at_count = 0        # ... and self._journaled then
        self._journaled = 0                 # copies this process journaled, ever
        self._closed_at = 0.0
        self._refreshing: asyncio.Task | None = None
        self._watching: asyncio.Task | None = None
        self._count_failed = False

    @property
    def enabled(self) -> bool:
        return self.high > 0

    @property
    def backlog(self) -> int:
        """The estimate the gate goes by: the last count, plus what was journaled since."""
        return self._counted + self._journaled - self._journaled_at_count

    async def start(self) -> None:
        """Count once before the listeners open: a gateway restarted over a full
        journal starts closed."""
        if self.enabled:
            await self._refresh_quietly()

    async def stop(self) -> None:
        tasks = [t for t in (self._refreshing, self._watching) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refreshing = self._watching = None

    def admit(self) -> bool:
        """True when a new transaction may start; never waits (the hot path)."""
        if not self.enabled:
            return True
        if self.clock() - self._counted_at >= self.refresh_after:
            self._refresh_soon()
        return not self.closed

    async def admit_fresh(self) -> bool:
        """``admit``, with the count brought up to date first when it is stale (polled
        mail: a batch of a hundred is worth one read)."""
        if not self.enabled:
            return True
        if self.clock() - self._counted_at >= self.refresh_after:
            if self._refreshing is not None and not self._refreshing.done():
                await asyncio.shield(self._refreshing)
            else:
                await self._refresh_quietly()
        return not self.closed

    def journaled(self, copies: int) -> None:
        """``copies`` were just committed: a burst closes the gate before the next count.
        A count older than a few refreshes (the gateway was quiet, and the pipeline may
        have decided everything since) is not trusted to close it: it is read again."""
        self._journaled += copies
        if not self.enabled or self.closed:
            return
        if self.clock() - self._counted_at >= _TRUSTED_REFRESHES * self.refresh_after:
            self._refresh_soon()
        elif self.backlog >= self.high:
            self._set(True)

    def refuse(self) -> None:
        self.refused += 1

    # -- counting ------------------------------------------------------------------------

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(
                self._refresh_quietly(), name="intake:backlog")

    async def _refresh_quietly(self) -> None:
        mark, started = self._journaled, self.clock()
        try:
            counted = await self.count()
        except asyncio.CancelledError:
            raise
        except Exception as exc:    # the store may be failing: keep the gate as it is
            self._counted_at = started          # and ask again after ``refresh``
            if not self._count_failed:
                log.warning("intake: cannot count the journal backlog: %s", exc)
            self._count_failed = True
            return
        self._count_failed = False
        if started >= self._counted_at:         # never let an older count win
            self._counted, self._journaled_at_count, self._counted_at = counted, mark, started
        if not self.closed and self.backlog >= self.high:
            self._set(True)
        elif self.closed and self.backlog <= self.low:
            self._set(False)

    async def _watch(self) -> None:
        """While closed: count every ``refresh`` seconds, so the gate opens on time
        even when no MTA is asking (it was told to come back later)."""
        while self.closed:
            await asyncio.sleep(self.refresh_after)
            await self._refresh_quietly()

    def _set(self, closed: bool) -> None:
        self.closed = closed
        if closed:
            self._closed_at, self.refused = self.clock(), 0
            log.warning("intake: %d copies wait for the pipeline, the high-water mark is %d "
                        "([storage] backlog_high_water): new transactions get 451 4.3.2 and "
                        "mailboxes are not polled until it is down to %d", self.backlog,
                        self.high, self.low)
            if self._watching is None or self._watching.done():
                self._watching = asyncio.get_running_loop().create_task(
                    self._watch(), name="intake:backpressure")
        else:
            log.info("intake: backlog down to %d copies (low-water mark %d): taking mail "
                     "again after %.1f s; %d transaction(s) were told to retry", self.backlog,
                     self.low, self.clock() - self._closed_at, self.refused)
        if self.on_change is not None:
            self.on_change(closed)


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome for one envelope recipient: ``email_id`` set when committed."""
    rcpt: str
    email_id: int | None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.email_id is not None


class Intake:
    """Journals pushed mail; the protocols only speak the wire."""

    def __init__(self, store: Store, addresses: Callable[[], AddressBook],
                 on_received: Callable[[str, str, int], None] | None = None,
                 on_journaled: Callable[[], None] | None = None, *,
                 backlog_high_water: int = 0,
                 on_throttle: Callable[[bool], None] | None = None,
                 on_refused: Callable[[str], None] | None = None):
        self.store = store
        self._addresses = addresses
        self.on_received = on_received
        self.on_journaled = on_journaled
        self.backpressure = Backpressure(store.backlog, backlog_high_water,
                                         on_change=on_throttle)
        self.on_refused = on_refused

    async def start(self) -> None:
        await self.backpressure.start()

    async def stop(self) -> None:
        await self.backpressure.stop()

    def connector_for(self, rcpt: str) -> str | None:
        return self._addresses().owner(rcpt)

    def admit(self, protocol: str) -> bool:
        """May a new LMTP/SMTP transaction start? Asked at MAIL FROM; False means answer
        THROTTLED_REPLY. A transaction that got past MAIL FROM is never refused for it."""
        if self.backpressure.admit():
            return True
        self.backpressure.refuse()
        if self.on_refused is not None:
            self.on_refused(protocol)
        return False

    def throttled(self) -> bool:
        """True while the gate is closed: pollers skip their rounds (no session at all)."""
        return self.backpressure.closed

    async def accept(self, *, source: str, raw: bytes, mail_from: str | None,
                     rcpts: list[str], peer: str | None = None,
                     helo: str | None = None) -> list[RecipientResult]:
        """Journal one copy per receiving connector; one result per recipient, in order."""
        book = self._addresses()
        by_connector: dict[str, list[str]] = {}
        owners = []
        for rcpt in rcpts:
            owner = book.owner(rcpt)
            owners.append(owner)
            if owner is not None:
                by_connector.setdefault(owner, []).append(rcpt)
        message_id = scan_message_id(raw)
        copies = [Copy(raw=raw, connector=name, source=source, mail_from=mail_from,
                       rcpt_to=tuple(connector_rcpts), message_id=message_id,
                       peer=peer, helo=helo)
                  for name, connector_rcpts in by_connector.items()]
        email_ids: dict[str, int] = {}
        error = None
        if copies:
            try:
                ids = await self._journal(copies)
                email_ids = {copy.connector: email_id for copy, email_id in zip(copies, ids)}
            except StoreError as exc:
                error = str(exc)
        results = []
        for rcpt, owner in zip(rcpts, owners):
            if owner is None:
                # The connector went away between RCPT and DATA: try again later.
                results.append(RecipientResult(rcpt, None, "no longer a mailgate address"))
            elif owner in email_ids:
                results.append(RecipientResult(rcpt, email_ids[owner]))
            else:
                results.append(RecipientResult(rcpt, None, error or "not stored"))
        return results

    async def accept_polled(self, connector: str, source: str, folder: str,
                            fetched: list[tuple[str, bytes]]) -> list[int]:
        """Journal what a poller fetched from ``folder`` (R-I4): ``(key, raw)`` pairs, the
        key as the poll ledger stores it. Their ids once durably committed, keys included.

        Raises StoreError when the commit failed: the poller then leaves the
        messages on the server and tries again next round; :class:`Throttled` (one)
        when the backlog is over its high-water mark, before anything is stored.
        """
        if not await self.backpressure.admit_fresh():
            raise Throttled("the journal backlog is over [storage] backlog_high_water; "
                            "the mail stays on the server until it drains")
        return await self._journal([
            Copy(raw=raw, connector=connector, source=source, message_id=scan_message_id(raw),
                 folder_path=folder, poll_key=key) for key, raw in fetched])

    async def _journal(self, copies: list[Copy]) -> list[int]:
        """Commit ``copies``; once committed, wake the pipeline and count them."""
        ids = await self.store.journal(copies)
        self.backpressure.journaled(len(copies))
        if self.on_journaled is not None:
            self.on_journaled()
        if self.on_received is not None:
            for copy in copies:
                self.on_received(copy.source, copy.connector, len(copy.raw))
        return ids
