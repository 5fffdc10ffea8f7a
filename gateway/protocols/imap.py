"""Polling an IMAP mailbox (R-I4, R-I5) with aioimaplib.

A message's key is ``"<uidvalidity>:<uid>"``: RFC 3501 section 2.3.1.1 makes the
pair the only identity that survives sessions. Keys of
another UIDVALIDITY are never fetched or removed, since their UIDs may now name
other messages; the poller's dedup (R-D1) absorbs the resync that follows.

Wire choices, and why:

* ``UID SEARCH UNDELETED``: a message already flagged ``\\Deleted`` is on its way
  out (by us after a crash between STORE and EXPUNGE, or by a person).
* ``UID FETCH <set> (UID RFC822.SIZE BODY.PEEK[]<0.n>)``: one command per chunk of
  messages, never one per message, and PEEK so a ``keep_on_server`` mailbox keeps its
  unread state until :meth:`ImapMailbox.remove` marks what was journaled (R-B5). At
  most one byte more than LARGE_MESSAGE of each: a message that fills it is large,
  left out and fetched alone (whole) afterwards, or left on the server when its size
  is over the gateway's limit. Sizes are learnt with the bytes because asking for
  them first (``SEARCH LARGER``) made the server read every message twice where it
  does not store sizes (a Maildir without ``W=`` in its file names): that search
  took about 15% of a 5,000-message drain.
* ``\\Deleted`` then ``UID EXPUNGE`` (RFC 4315, UIDPLUS) so only our own messages
  go; plain ``EXPUNGE`` only when the server lacks UIDPLUS.
* aioimaplib 2.0.3 has no STARTTLS method: we send the command and upgrade the
  transport with ``loop.start_tls``, then ask CAPABILITY again (RFC 3501 6.2.1).
* aioimaplib does not fail pending commands when the connection drops, and its
  own timeouts do not cover connecting or the greeting. Every await here races
  the connection-lost signal and a timeout, so a dead server ends in
  :class:`MailboxError`, never in a hung poller.
* Draining thousands of messages: aioimaplib's response splitter recurses per line
  and its FETCH bookkeeping is quadratic; ``ImapProtocol`` and ``UidFetch`` from
  :mod:`gateway.protocols.aioimaplib_fixes` replace those two pieces (same contract),
  which roughly doubled the measured drain rate next to stdlib imaplib's fetch-all,
  and take a FETCH item that one read holds whole in one step.
* IDLE (RFC 2177) on a session of its own tells the poller of new mail. While the
  poller's own round drains the folder, that session leaves IDLE (``WatchHold``):
  Dovecot would sync it and send it an EXPUNGE line for every message removed. It
  compares the folder's UIDNEXT before and after the round instead.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import re
import ssl
from typing import Any, Awaitable, Callable, Iterable

from aioimaplib.aioimaplib import (AUTH, NONAUTH, SELECTED, AioImapException, Command, Response,
                                   quoted)

from gateway.model import Connector
from gateway.protocols.aioimaplib_fixes import ImapProtocol, UidFetch
from gateway.protocols.mailbox import (LARGE_MESSAGE, Fetched, Mailbox, MailboxError,
                                       WatchHold, WatchUnsupported)
from gateway.tls import tls_context

log = logging.getLogger("mailgate.imap")

# Messages per UID FETCH. Upstream aioimaplib parses what one read returns (up to
# 256 KiB) with one recursive call per line, two per message, so a few hundred tiny
# messages in one command exceed Python's recursion limit (iroco-co/aioimaplib#118).
# ImapProtocol parses iteratively; the bound stays as a second line of defence,
# and measured on loopback 200 is as fast as 1000.
FETCH_CHUNK = 200
# UIDs per UID STORE / UID EXPUNGE: command lines well under Dovecot's 64 KiB and,
# like FETCH_CHUNK, a bounded number of "* n EXPUNGE" lines per reply.
STORE_CHUNK = 1000
# RFC 2177: a client should re-issue IDLE at least every 29 minutes, or servers may
# log it out as inactive.
IDLE_RENEW = 25 * 60
_EXISTS = re.compile(rb"^\d+ EXISTS\b", re.I)

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_START = re.compile(rb"\d+ FETCH \(")
_UID = re.compile(rb"(?<![\w-])UID (\d+)")
_SIZE = re.compile(rb"(?<![\w-])RFC822\.SIZE (\d+)")
# Bytes of each message a batch asks for: a literal this long is a large message.
PARTIAL = LARGE_MESSAGE + 1


def login_name(connector: Connector, username: str) -> str:
    """The login for ``username``, or for ``username`` opening ``shared_mailbox``
    ("access another mailbox", R-C1) when the connector names one.

    Servers spell delegated login differently. Dovecot's master users (and most
    servers copying it) take ``shared*master``; Office 365 takes
    ``user@x\\shared@x``. We use the Office 365 form for the ``o365_*`` services and
    the Dovecot form everywhere else. The password is always the logging-in user's.
    """
    shared = connector.shared_mailbox.strip()
    if not shared:
        return username
    if connector.service.startswith("o365_"):
        return f"{username}\\{shared}"
    return f"{shared}*{username}"


def encode_mailbox(name: str) -> str:
    """``name`` in IMAP's modified UTF-7 (RFC 3501 section 5.1.3), so a folder such
    as "Entrées" is found on servers without UTF8=ACCEPT."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",")
                       + "-")
            pending.clear()

    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mailbox_arg(name: str) -> str:
    """A folder name ready for the command line: modified UTF-7, then quoted (spaces)."""
    return quoted(encode_mailbox(name))


def uid_set(uids: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"`` (short command lines)."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = None
    for uid in ordered:
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def parse_fetch(lines: list, sizes: dict[int, int] | None = None) -> dict[int, bytes]:
    """UID -> body from an aioimaplib FETCH response. aioimaplib hands literals over as
    ``bytearray`` items between the text lines (``b'1 FETCH (UID 5 BODY[] {12}'``,
    literal, ``b')'``); the UID may come before or after the literal. Unsolicited FETCH
    responses (flag changes) have no literal and are dropped. With ``sizes``, the
    RFC822.SIZE of each message that has one is put there."""
    found: dict[int, bytes] = {}
    uid: int | None = None
    size: int | None = None
    body: bytes | None = None

    def keep() -> None:
        if uid is not None and body is not None:
            found[uid] = body
            if sizes is not None and size is not None:
                sizes[uid] = size

    for line in lines[:-1]:             # the last line is the tagged completion text
        if isinstance(line, bytearray):
            if body is None:
                body = bytes(line)
            continue
        if _FETCH_START.match(line):
            keep()
            uid, size, body = None, None, None
        if uid is None:
            match = _UID.search(line)
            if match:
                uid = int(match.group(1))
        if size is None and sizes is not None:
            match = _SIZE.search(line)
            if match:
                size = int(match.group(1))
    keep()
    return found


def _parse_keys(keys: Iterable[str], uidvalidity: int) -> list[int]:
    """The UIDs of ``keys`` that belong to ``uidvalidity`` (others are stale: skipped)."""
    uids = []
    for key in keys:
        validity, _, uid = key.partition(":")
        if validity.isdigit() and uid.isdigit() and int(validity) == uidvalidity:
            uids.append(int(uid))
    return uids


def _text(response: Response) -> str:
    """The server's words on the tagged reply line (after ``NO``/``BAD``)."""
    last = response.lines[-1] if response.lines else b""
    return bytes(last).decode("utf-8", "replace").strip()


def _settle(future: asyncio.Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class ImapMailbox(Mailbox):
    """An IMAP connector's mailbox (R-I4, R-I5), TLS per R-C4."""
    source = "imap"
    two_step_remove = True      # \Deleted, then (UID) EXPUNGE; keys() lists UNDELETED only

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._protocol: ImapProtocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._lost: asyncio.Future | None = None
        self._selected: str | None = None
        self._uidvalidity = 0
        self._uidnext: int | None = None        # as the last SELECT said, if it did
        # Keys a fetch found over LARGE_MESSAGE (or over the limit), with their size:
        # kept across sessions while the message is there, so later rounds fetch a large
        # one alone at once, and never fetch one left on the server for its size.
        self._big: dict[str, tuple[int | None, bool]] = {}     # key -> (size, too large)

    # -- session -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._protocol is not None:
            self.abort()
        c = self.connector
        implicit = c.tls == "implicit"
        context = tls_context(c) if c.tls in ("implicit", "starttls") else None
        port = c.port or (993 if implicit else 143)
        loop = asyncio.get_running_loop()
        # Each session has its own "lost" future: the previous session's transport may
        # report its end after this one began, and must not end this one.
        lost = self._lost = loop.create_future()
        protocol = ImapProtocol(loop, lambda exc: _settle(lost, exc))
        self._protocol = protocol
        try:
            transport, _ = await self._call(
                f"connect to {c.host}:{port}",
                loop.create_connection(lambda: protocol, c.host, port,
                                       ssl=context if implicit else None))
            self._transport = transport
            await self._call("greeting", protocol.wait(f"{AUTH}|{NONAUTH}"))
            if c.tls == "starttls":
                await self._starttls(context)
            if protocol.state == NONAUTH:
                response = await self._call("LOGIN", protocol.login(
                    quoted(login_name(c, self.credentials.username or "")),
                    self.credentials.password or ""))
                if response.result != "OK":
                    raise MailboxError(_text(response))
            # Capabilities change at login (Dovecot announces UIDPLUS only then).
            await self._call("CAPABILITY", protocol.capability())
        except Exception:
            self.abort()
            await asyncio.sleep(0)      # let the transport finish closing its socket
            raise
        except BaseException:
            self.abort()
            raise

    async def _starttls(self, context: ssl.SSLContext) -> None:
        protocol = self._protocol
        if "STARTTLS" not in protocol.capabilities:
            raise MailboxError("the server does not offer STARTTLS; refusing to log in "
                               "unencrypted (set tls to none to allow it)")
        response = await self._call("STARTTLS", protocol.execute(
            Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)))
        if response.result != "OK":
            raise MailboxError(f"STARTTLS refused: {_text(response)}")
        transport = await self._call("TLS handshake", protocol.loop.start_tls(
            self._transport, protocol, context, server_hostname=self.connector.host))
        protocol.transport = self._transport = transport
        await self._call("CAPABILITY", protocol.capability())

    async def close(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        try:
            if protocol.state in (NONAUTH, AUTH, SELECTED) and not self._lost.done():
                await self._call("LOGOUT", protocol.logout())
        except Exception as e:          # a polite goodbye is optional
            log.debug("imap logout from %s failed: %s", self.connector.host, e)
        finally:
            # After LOGOUT the server hangs up anyway: no TLS close_notify dance.
            self.abort()
        await asyncio.sleep(0)          # let the transport finish closing its socket

    def abort(self) -> None:
        """Drop the connection now (no LOGOUT). Used after timeouts and by tests."""
        protocol, transport = self._protocol, self._transport
        self._protocol = self._transport = None
        self._selected, self._uidvalidity, self._uidnext = None, 0, None
        if transport is not None:
            transport.abort()
        if protocol is not None:
            for task in list(protocol.tasks):
                if task.done():
                    if not task.cancelled():
                        task.exception()    # retrieved: no "never retrieved" warning
                else:
                    task.cancel()

    async def _call(self, what: str, awaitable: Awaitable, *,
                    activity: UidFetch | None = None) -> Any:
        """Await ``awaitable`` unless the connection drops or ``self.timeout`` passes
        first (with ``activity``: passes without a byte received); every failure
        becomes a :class:`MailboxError`."""
        limit = self.timeout
        task = asyncio.ensure_future(awaitable)
        waiters = {task} if self._lost is None else {task, self._lost}
        try:
            while True:
                done, _ = await asyncio.wait(waiters, timeout=limit,
                                             return_when=asyncio.FIRST_COMPLETED)
                if done or activity is None:
                    break
                limit = activity.last_activity + self.timeout - asyncio.get_running_loop().time()
                if limit <= 0:
                    break
        except BaseException:
            task.cancel()
            raise
        if task in done:
            try:
                return task.result()
            except (AioImapException, OSError, EOFError, ValueError) as e:
                self.abort()
                raise MailboxError(f"{what}: {e or type(e).__name__}") from e
        task.cancel()
        lost = self._lost is not None and self._lost.done()
        self.abort()
        if lost:
            reason = self._lost.result()
            raise MailboxError(f"{what}: connection closed by the server"
                               + (f" ({reason})" if reason else ""))
        raise MailboxError(f"{what}: no reply within {self.timeout:g} s")

    def _live(self) -> ImapProtocol:
        if self._protocol is None:
            raise MailboxError("the IMAP session is not open")
        return self._protocol

    async def _select(self, folder: str) -> int:
        """SELECT ``folder`` unless it is the selected one; its UIDVALIDITY."""
        protocol = self._live()
        if self._selected == folder and protocol.state == SELECTED:
            return self._uidvalidity
        self._selected = None
        response = await self._call(f"SELECT {folder}",
                                    protocol.select(mailbox_arg(folder)))
        if response.result != "OK":
            raise MailboxError(f"SELECT {folder}: {_text(response)}")
        uidvalidity = self._uidnext = None
        for line in response.lines:
            line = bytes(line)
            if match := _UIDVALIDITY.search(line):
                uidvalidity = int(match.group(1))
            elif match := _UIDNEXT.search(line):
                self._uidnext = int(match.group(1))
        if uidvalidity is None:
            raise MailboxError(f"SELECT {folder}: the server sent no UIDVALIDITY")
        self._uidvalidity = uidvalidity
        self._selected = folder
        return self._uidvalidity

    # -- the poller's three calls ------------------------------------------------------

    async def keys(self, folder: str) -> list[str]:
        uidvalidity = await self._select(folder)
        protocol = self._live()
        response = await self._call(f"UID SEARCH {folder}", protocol.search(
            "UNDELETED", charset=None, by_uid=True))
        if response.result != "OK":
            raise MailboxError(f"UID SEARCH {folder}: {_text(response)}")
        uids = sorted({int(token) for line in response.lines[:-1]
                       for token in bytes(line).split() if token.isdigit()})
        keys = [f"{uidvalidity}:{uid}" for uid in uids]
        # Sizes come with the bytes (see fetch); what earlier fetches found large is known.
        present = set(keys)
        self._big = {key: known for key, known in self._big.items() if key in present}
        self.large = set(self._big)
        self.too_large = {key: size for key, (size, too_large) in self._big.items()
                          if too_large}
        return keys

    def _over_limit(self, size: int | None) -> bool:
        return self.max_size is not None and size is not None and size > self.max_size

    async def fetch(self, folder: str, keys: list[str]) -> list[Fetched]:
        """The bytes of ``keys``. Messages not known to be large are asked for with their
        size and at most PARTIAL bytes: one that fills PARTIAL is large, so it is left
        out and named in ``large`` (the poller then fetches it alone, whole); one over
        the gateway's limit is left out and named in ``too_large``."""
        uidvalidity = await self._select(folder)
        uids = list(dict.fromkeys(_parse_keys(keys, uidvalidity)))
        large = set(_parse_keys(self.large, uidvalidity)) if self.large else set()
        bodies: dict[int, bytes] = {}
        for chunk in _chunks([uid for uid in uids if uid in large], FETCH_CHUNK):
            bodies.update(await self._fetch(folder, chunk, "(UID BODY.PEEK[])"))
        rest = [uid for uid in uids if uid not in large]
        for chunk in _chunks(rest, FETCH_CHUNK):
            sizes: dict[int, int] = {}
            got = await self._fetch(folder, chunk,
                                    f"(UID RFC822.SIZE BODY.PEEK[]<0.{PARTIAL}>)", sizes)
            over: set[int] = set()
            unsized = [uid for uid, body in got.items()
                       if len(body) > LARGE_MESSAGE and uid not in sizes]
            if unsized and self.max_size is not None:   # RFC 3501 requires RFC822.SIZE;
                over = await self._larger(folder, unsized, self.max_size)   # just in case
            for uid, body in got.items():
                key = f"{uidvalidity}:{uid}"
                if len(body) <= LARGE_MESSAGE:                  # whole: its size is exact
                    size: int | None = len(body)
                    if not self._over_limit(size):
                        bodies[uid] = body
                        continue
                else:
                    size = sizes.get(uid)
                too_large = uid in over or self._over_limit(size)
                self._big[key] = (size, too_large)
                self.large.add(key)
                if too_large:
                    self.too_large[key] = size
        return [Fetched(f"{uidvalidity}:{uid}", bodies[uid]) for uid in uids if uid in bodies]

    async def _fetch(self, folder: str, uids: list[int], items: str,
                     sizes: dict[int, int] | None = None) -> dict[int, bytes]:
        protocol = self._live()
        # The timeout bounds silence, not the whole transfer: a large chunk on a slow
        # link is fine as long as bytes keep coming.
        command = UidFetch(protocol.new_tag(), uid_set(uids), items, loop=protocol.loop)
        response = await self._call(f"UID FETCH {folder}", protocol.execute(command),
                                    activity=command)
        if response.result != "OK":
            raise MailboxError(f"UID FETCH {folder}: {_text(response)}")
        return parse_fetch(response.lines, sizes)

    async def _larger(self, folder: str, uids: list[int], size: int) -> set[int]:
        """Which of ``uids`` the server counts as larger than ``size`` bytes."""
        response = await self._call(f"UID SEARCH {folder}", self._live().search(
            "UID", uid_set(uids), "LARGER", str(size), charset=None, by_uid=True))
        if response.result != "OK":
            raise MailboxError(f"UID SEARCH {folder}: {_text(response)}")
        return {int(token) for line in response.lines[:-1]
                for token in bytes(line).split() if token.isdigit()}

    async def remove(self, folder: str, keys: list[str]) -> None:
        """Delete (``\\Deleted`` + EXPUNGE), or R-B5: move to ``move_to``, or flag
        ``\\Seen`` with ``keep_on_server``."""
        uidvalidity = await self._select(folder)
        uids = _parse_keys(keys, uidvalidity)
        target = self.connector.move_to
        for chunk in _chunks(sorted(set(uids)), STORE_CHUNK):
            protocol = self._live()
            uidset = uid_set(chunk)
            if target and "MOVE" in protocol.capabilities:      # RFC 6851: one step
                await self._to_folder(folder, "MOVE", uidset, target)
                continue
            if target:                                          # COPY, then delete below
                await self._to_folder(folder, "COPY", uidset, target)
            keep = self.connector.keep_on_server and not target
            flag = r"(\Seen)" if keep else r"(\Deleted)"
            response = await self._call(f"UID STORE {folder}", protocol.store(
                uidset, "+FLAGS.SILENT", flag, by_uid=True))
            if response.result != "OK":
                raise MailboxError(f"UID STORE {folder}: {_text(response)}")
            if keep:
                continue
            if "UIDPLUS" in protocol.capabilities:
                response = await self._call(f"UID EXPUNGE {folder}",
                                            protocol.expunge(uidset, by_uid=True))
            else:
                response = await self._call(f"EXPUNGE {folder}", protocol.expunge())
            if response.result != "OK":
                raise MailboxError(f"EXPUNGE {folder}: {_text(response)}")

    async def _to_folder(self, folder: str, verb: str, uidset: str, target: str) -> None:
        """UID MOVE or UID COPY ``uidset`` to ``target``, creating it once when the server
        answers [TRYCREATE] (RFC 3501 6.4.7)."""
        protocol = self._live()
        for attempt in (1, 2):
            command = (protocol.move(uidset, mailbox_arg(target), by_uid=True) if verb == "MOVE"
                       else protocol.copy(uidset, mailbox_arg(target), by_uid=True))
            response = await self._call(f"UID {verb} {folder} to {target}", command)
            if response.result == "OK":
                return
            if attempt == 1 and "TRYCREATE" in _text(response).upper():
                created = await self._call(f"CREATE {target}", protocol.simple_command(
                    "CREATE", mailbox_arg(target)))
                if created.result == "OK":
                    log.info("imap %s: created folder %s for moved mail (R-B5)",
                             self.connector.name, target)
                    continue
            raise MailboxError(f"UID {verb} {folder} to {target}: {_text(response)}")

    # -- push: RFC 2177 IDLE -------------------------------------------------------------

    async def watch(self, folder: str, wake: Callable[[], None], *,
                    renew: float = IDLE_RENEW, hold: WatchHold | None = None) -> None:
        """Hold this session in IDLE on ``folder`` and call ``wake()`` on every
        ``* n EXISTS`` (new mail), re-issuing IDLE every ``renew`` seconds. Runs until
        cancelled; a dropped or refused session is a :class:`MailboxError`. Only the
        poller's other session reads and removes mail: this one only listens.

        While the poller's round holds it (``hold``, see :class:`WatchHold`) the session
        leaves IDLE and only notes the folder's UIDNEXT (SELECT); after the round it
        selects again and wakes the poller when UIDNEXT moved, i.e. new mail came. A
        server that names no UIDNEXT is never held: it listens through rounds."""
        protocol = self._live()
        if "IDLE" not in protocol.capabilities:
            raise WatchUnsupported("the server does not offer IDLE (RFC 2177)")
        await self._select(folder)
        if self._uidnext is None:
            hold = None
        try:
            while True:
                if hold is not None and not hold.may_listen():
                    await self._held(folder, wake, hold)
                    continue
                await self._idle(folder, wake, renew, hold)
        finally:
            if hold is not None:
                hold.stopped()

    async def _held(self, folder: str, wake: Callable[[], None], hold: WatchHold) -> None:
        """Out of IDLE while a round runs; wake the poller after it if mail came."""
        before = await self._mark(folder)
        protocol = self._live()
        while not protocol.idle_queue.empty():      # told before the note: the round
            protocol.idle_queue.get_nowait()        # lists after it, so it takes them
        late = await hold.held()
        if await self._mark(folder) != before or late:
            wake()

    async def _mark(self, folder: str) -> tuple[int, int | None]:
        """SELECT ``folder`` again: where it stands (UIDVALIDITY, UIDNEXT)."""
        self._selected = None
        uidvalidity = await self._select(folder)
        return uidvalidity, self._uidnext

    async def _idle(self, folder: str, wake: Callable[[], None], renew: float,
                    hold: WatchHold | None) -> None:
        """One IDLE, until ``renew`` seconds passed or a round holds the watcher."""
        protocol = self._live()
        loop = asyncio.get_running_loop()
        idling = asyncio.ensure_future(protocol.idle())
        started = asyncio.ensure_future(protocol.wait_for_idle_response())
        try:
            done, _ = await asyncio.wait({idling, started, self._lost}, timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            idling.cancel()
            raise
        finally:
            started.cancel()
        if started not in done:                             # no "+ idling"
            idling.cancel()
            if self._lost.done():
                why = "connection closed by the server"
            elif idling in done and idling.exception() is None:
                why = _text(idling.result()) or "refused"
            elif idling in done:
                why = str(idling.exception())
            else:
                why = f"no reply within {self.timeout:g} s"
            self.abort()
            raise MailboxError(f"IDLE {folder}: {why}")
        deadline = loop.time() + renew
        requested = None if hold is None else asyncio.ensure_future(hold.requested.wait())
        try:
            while (left := deadline - loop.time()) > 0:
                pushed = asyncio.ensure_future(protocol.idle_queue.get())
                waiting = {pushed, self._lost} | ({requested} if requested else set())
                try:
                    done, _ = await asyncio.wait(waiting, timeout=left,
                                                 return_when=asyncio.FIRST_COMPLETED)
                except BaseException:
                    pushed.cancel()
                    raise
                if pushed not in done:
                    pushed.cancel()
                    if self._lost.done():
                        raise MailboxError(f"IDLE {folder}: connection closed by the server")
                    break                                   # time to renew, or held
                if any(_EXISTS.match(bytes(line)) for line in pushed.result()):
                    wake()
                if requested is not None and requested.done():
                    break
        except BaseException:
            idling.cancel()
            raise
        finally:
            if requested is not None:
                requested.cancel()
        protocol.idle_done()                                # DONE ends this IDLE
        response = await self._call(f"IDLE {folder} DONE", idling)
        if response.result != "OK":
            raise MailboxError(f"IDLE {folder}: {_text(response)}")
