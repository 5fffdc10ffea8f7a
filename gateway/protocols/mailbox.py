"""What every polled mailbox offers the poller (R-I4): list, fetch, remove.

IMAP, POP3 and Graph differ on the wire but the poller's loop is the same:
open a session, list the messages of each folder by a key that stays stable
across sessions (IMAP ``uidvalidity:uid``, POP3 UIDL, Graph message id), fetch
the raw bytes of the ones not yet journaled, journal them, and only then remove
them from the server. Each protocol module implements :class:`Mailbox`.

Every network wait is bounded (``timeout``): a dropped connection must end in a
:class:`MailboxError`, never in a poller that hangs.
"""
from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from gateway.model import Connector

log = logging.getLogger("mailgate.mailbox")

DEFAULT_TIMEOUT = 60.0
# A message above this size is fetched alone, so that a batch holds at most about
# batch x LARGE_MESSAGE bytes in memory, however large the mail in a mailbox is.
LARGE_MESSAGE = 1024 * 1024


class MailboxError(Exception):
    """The server refused or the connection failed. ``str()`` is the server's own
    words where it gave any (R-C3 reports them as they are)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A connector's login, read from the directory only by what logs in."""
    username: str | None = None
    password: str | None = None
    client_secret: str | None = None
    certificate_password: str | None = None

    @classmethod
    def of(cls, username: str | None, password: str | None, secrets: dict) -> "Credentials":
        """From what the directory keeps: the login and the ``secrets`` of SECRET_FIELDS."""
        return cls(username=username, password=password,
                   client_secret=secrets.get("client_secret") or None,
                   certificate_password=secrets.get("certificate_password") or None)


@dataclass(frozen=True, slots=True)
class Fetched:
    key: str
    raw: bytes


class Mailbox(abc.ABC):
    """Sessions with one mailbox. Use as ``async with``: open on enter, close on exit.

    The poller keeps one object per connector for its whole life and opens a new
    session every round, so what outlives a session (Graph's token cache, a
    folder-id cache) belongs on the object."""
    source = ""             # the R-I7 source name: imap, pop3, graph
    # True when the server never gives a key to another message (IMAP UIDs under one
    # UIDVALIDITY, Graph ids). POP3 UIDLs may be reused once a message is gone.
    stable_keys = True
    # True when removing is two steps (IMAP: flag \Deleted, then EXPUNGE): a crash
    # between them hides the message from keys() without removing it, so known keys
    # missing from a listing are removed once more before they are forgotten.
    two_step_remove = False

    def __init__(self, connector: Connector, credentials: Credentials, *,
                 timeout: float = DEFAULT_TIMEOUT, max_size: int | None = None):
        self.connector = connector
        self.credentials = credentials
        self.timeout = timeout
        # keys of messages over LARGE_MESSAGE, as far as the last keys() call could tell
        # cheaply (POP3 LIST, Graph's size property), or as fetch() found them (IMAP);
        # the poller fetches them one by one
        self.large: set[str] = set()
        # the gateway's size limit, and the keys (with sizes, when known) keys() or
        # fetch() found over it: the poller leaves those on the server and says so
        self.max_size = max_size
        self.too_large: dict[str, int | None] = {}

    async def __aenter__(self) -> "Mailbox":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and log in; :class:`MailboxError` with the server's reply if refused."""

    def folders(self) -> list[str]:
        """The folders this session polls (R-I5; POP3 has only INBOX)."""
        return list(self.connector.folders) or ["INBOX"]

    @abc.abstractmethod
    async def keys(self, folder: str) -> list[str]:
        """The stable keys of the messages in ``folder``, oldest first."""

    @abc.abstractmethod
    async def fetch(self, folder: str, keys: list[str]) -> list[Fetched]:
        """The raw bytes of ``keys`` (exactly as the server holds them). A key whose
        message vanished meanwhile is left out. So is one that turns out to be large
        when fetched with others, or over the limit: it is then added to ``large``
        (and ``too_large``), for the poller to fetch alone (or leave)."""

    @abc.abstractmethod
    async def remove(self, folder: str, keys: list[str]) -> None:
        """Delete ``keys`` (R-I4), or with ``keep_on_server`` mark them seen (R-B5).
        Called only after their copies are committed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the session politely (POP3: QUIT commits the DELEs). Never raises."""

    def abort(self) -> None:
        """Drop the session now, without a goodbye (after timeouts, for listeners)."""

    async def watch(self, folder: str, wake: Callable[[], None], *,
                    hold: "WatchHold | None" = None) -> None:
        """Call ``wake()`` whenever the server says new mail reached ``folder``, until
        cancelled; :class:`MailboxError` when the session fails. Raises
        :class:`WatchUnsupported` when the protocol or the server cannot push. With
        ``hold``, the poller's rounds may hold the watch out of listening meanwhile."""
        raise WatchUnsupported(f"{self.source} has no push")

    async def test(self) -> str:
        """R-C3: log in and read one folder; a line saying what was seen."""
        async with self:
            folder = self.folders()[0]
            count = len(await self.keys(folder))
            await self.check_move_to()
        return f"{self.source}: logged in; {folder} holds {count} message(s)"

    async def check_move_to(self) -> None:
        """R-B5: raise :class:`MailboxError` when ``move_to`` cannot take mail and will not
        be created on first use (IMAP creates it on [TRYCREATE]; Graph cannot)."""


class WatchUnsupported(MailboxError):
    """The mailbox cannot tell us about new mail; the poller keeps its interval."""


class WatchHold:
    """How a poller's round holds its own watcher (IMAP IDLE) out of listening while the
    round reads and removes mail, and how the watcher still learns of mail that arrived.

    Why: a session in IDLE on the folder a round drains is told of every message the
    round removes. Dovecot syncs that session and sends it an EXPUNGE line per message,
    and the watcher reads them all: on a drain of 5,000 messages this cost more CPU
    than the journal's commits. Held, the watcher's session stays open and silent.

    The protocol, on the event loop (no await between a check and what follows it):

    * the round calls :meth:`hold`; if the watcher listens, it waits (at most
      ``timeout``) until the watcher has left IDLE and noted where the folder stands
      (:meth:`held`), so mail that arrives later is mail the watcher can tell apart;
    * the watcher asks :meth:`may_listen` right before each IDLE, leaves IDLE when
      :attr:`requested` is set, notes the folder, calls :meth:`held` and waits there
      until the round calls :meth:`release`;
    * :meth:`held` returns True when the round did not wait for the note (the watcher
      was connecting, or slow): the watcher then wakes the poller after the round
      whatever it sees, since mail may have come between the round's listing and the
      note. Otherwise it wakes the poller only when the folder changed meanwhile.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()    # set while a round holds the watcher
        self._released = asyncio.Event()
        self._released.set()
        self._held = asyncio.Event()
        self._listening = False             # the watcher's session will see a request
        self._round_waits = False

    # -- the round --------------------------------------------------------------------

    async def hold(self, timeout: float) -> None:
        self._released.clear()
        self._held.clear()
        self.requested.set()
        if not self._listening:
            return
        self._round_waits = True
        held = asyncio.ensure_future(self._held.wait())
        try:    # asyncio.wait: 3.11's wait_for can swallow a cancel that meets the event
            await asyncio.wait({held}, timeout=timeout)
        finally:
            held.cancel()
            self._round_waits = False

    def release(self) -> None:
        self.requested.clear()
        self._released.set()

    # -- the watcher ------------------------------------------------------------------

    def may_listen(self) -> bool:
        """Right before IDLE: False while a round holds the watcher."""
        if self.requested.is_set():
            return False
        self._listening = True
        return True

    async def held(self) -> bool:
        """The watcher left IDLE and noted the folder: the round may go on. Returns once
        released; True when the round did not wait for the note."""
        late = not self._round_waits
        self._held.set()
        await self._released.wait()
        return late

    def stopped(self) -> None:
        """The watcher's session ended: a round waiting for it goes on at once."""
        self._listening = False
        self._held.set()
