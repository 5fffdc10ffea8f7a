"""Polling a POP3 mailbox (R-I4) with stdlib poplib, run in a worker thread.

POP3 is small and blocking, so poplib does it and every call runs in
``asyncio.to_thread``, never on the event loop. The client is poplib adjusted in
:mod:`gateway.protocols.poplib_fixes` (long lines, pipelined RETR); this module
uses only its public methods. Each socket read is bounded by
``timeout`` (poplib's socket timeout), so a dead server ends in
:class:`MailboxError`.

Keys are UIDL values, which RFC 1939 says persist across sessions; message
numbers do not, so the UIDL -> number map lives only for one session.
DELE takes effect only when QUIT ends the session in
the UPDATE state: :meth:`Pop3Mailbox.close` sends QUIT, and a session that drops
before it deletes nothing, so the next round fetches those messages again and
dedup (R-D1) absorbs them. POP3 has one folder, INBOX.
"""
from __future__ import annotations

import asyncio
import logging
import poplib
import socket
from typing import Any, Callable

from gateway.protocols.imap import login_name
from gateway.protocols.mailbox import LARGE_MESSAGE, Fetched, Mailbox, MailboxError
from gateway.protocols.poplib_fixes import Pop3Client, Pop3SslClient, connection_closed
from gateway.tls import tls_context

log = logging.getLogger("mailgate.pop3")

CLOSED = "connection closed by the server"


def _server_text(error: poplib.error_proto) -> str:
    """The server's words after ``-ERR`` (R-C3 reports them as they are)."""
    if connection_closed(error):
        return CLOSED
    reply = error.args[0] if error.args else b""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return text[5:] if text.startswith("-ERR ") else text


class Pop3Mailbox(Mailbox):
    """A POP3 connector's INBOX (R-I4), TLS per R-C4."""
    source = "pop3"
    stable_keys = False     # RFC 1939 lets a server reuse a UIDL once its message is gone

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Pop3Client | None = None
        self._numbers: dict[str, int] = {}

    def folders(self) -> list[str]:
        return ["INBOX"]

    async def _run(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` in a worker thread; network failures become MailboxError."""
        try:
            return await asyncio.to_thread(call, *args)
        except poplib.error_proto as e:
            text = _server_text(e)
            if text == CLOSED:
                self.abort()
            raise MailboxError(text if text != CLOSED else f"{what}: {text}") from e
        except (socket.timeout, TimeoutError) as e:
            self.abort()
            raise MailboxError(f"{what}: no reply within {self.timeout:g} s") from e
        except (OSError, EOFError) as e:
            self.abort()
            raise MailboxError(f"{what}: {e or type(e).__name__}") from e

    def _client_or_fail(self) -> Pop3Client:
        if self._client is None:
            raise MailboxError("the POP3 session is not open")
        return self._client

    # -- session -----------------------------------------------------------------------

    async def open(self) -> None:
        self.abort()
        c = self.connector
        self._client = await self._run(f"connect to {c.host}:{self._port()}", self._connect)

    def _port(self) -> int:
        return self.connector.port or (995 if self.connector.tls == "implicit" else 110)

    def _connect(self) -> Pop3Client:
        c = self.connector
        port = self._port()
        if c.tls == "implicit":
            client: Pop3Client = Pop3SslClient(c.host, port, timeout=self.timeout,
                                               context=tls_context(c))
        else:
            client = Pop3Client(c.host, port, timeout=self.timeout)
        try:
            if c.tls == "starttls":
                client.stls(tls_context(c))
            client.user(login_name(c, self.credentials.username or ""))
            client.pass_(self.credentials.password or "")
            try:
                client.pipelining = "PIPELINING" in client.capa()
            except poplib.error_proto:              # no CAPA (RFC 1939 only)
                client.pipelining = False
        except BaseException:
            client.close_quietly()
            raise
        return client

    async def close(self) -> None:
        client, self._client = self._client, None
        self._numbers = {}
        if client is None:
            return
        try:
            await asyncio.to_thread(client.quit)     # QUIT: the DELEs take effect now
        except Exception as e:
            # The DELEs of this session did not commit: the next round fetches those
            # messages again and dedup (R-D1) absorbs them.
            log.warning("pop3 QUIT to %s failed, deletions not committed: %s",
                        self.connector.host, e)
        finally:
            client.close_quietly()

    def abort(self) -> None:
        """Drop the connection without QUIT: no DELE of this session takes effect
        (RFC 1939 section 6). Used after failures and by tests."""
        client, self._client = self._client, None
        self._numbers = {}
        if client is not None:
            client.close_quietly()

    # -- the poller's three calls ------------------------------------------------------

    async def keys(self, folder: str) -> list[str]:
        client = self._client_or_fail()
        _, lines, _ = await self._run("UIDL", client.uidl)
        numbers: dict[str, int] = {}
        for line in lines:
            number, _, uidl = line.decode("ascii", "replace").strip().partition(" ")
            uidl = uidl.strip()
            if number.isdigit() and uidl and uidl not in numbers:
                numbers[uidl] = int(number)
        self._numbers = numbers
        _, listing, _ = await self._run("LIST", client.list)
        sizes = {}
        for line in listing:
            number, _, size = line.decode("ascii", "replace").strip().partition(" ")
            if number.isdigit() and size.strip().isdigit():
                sizes[int(number)] = int(size.strip())
        self.large = {uidl for uidl, number in numbers.items()
                      if sizes.get(number, 0) > LARGE_MESSAGE}
        self.too_large = {uidl: sizes[number] for uidl, number in numbers.items()
                          if self.max_size and sizes.get(number, 0) > self.max_size}
        return list(numbers)

    async def fetch(self, folder: str, keys: list[str]) -> list[Fetched]:
        client = self._client_or_fail()
        wanted = [(key, self._numbers[key]) for key in dict.fromkeys(keys)
                  if key in self._numbers]

        def retrieve() -> list[Fetched]:
            if client.pipelining:
                replies = client.retr_pipelined([number for _, number in wanted])
            else:
                replies = []
                for _, number in wanted:
                    try:
                        replies.append(client.retr(number)[1])
                    except poplib.error_proto as e:     # deleted meanwhile: left out
                        if _server_text(e) == CLOSED:
                            raise
                        replies.append(None)
            # poplib strips each line's CRLF and undoes dot-stuffing.
            return [Fetched(key, b"\r\n".join(lines) + b"\r\n" if lines else b"")
                    for (key, _), lines in zip(wanted, replies) if lines is not None]

        return await self._run("RETR", retrieve)

    async def remove(self, folder: str, keys: list[str]) -> None:
        if self.connector.keep_on_server:
            # POP3 has no \Seen: keeping means leaving alone (R-B5); the journal's poll
            # keys stop the next round from taking them again.
            return
        client = self._client_or_fail()
        numbers = [self._numbers[key] for key in keys if key in self._numbers]

        def delete() -> None:
            for number in numbers:
                try:
                    client.dele(number)
                except poplib.error_proto as e:     # already deleted: nothing to do
                    log.debug("pop3 DELE %d: %s", number, _server_text(e))

        await self._run("DELE", delete)
