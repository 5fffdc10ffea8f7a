"""What the LMTP and SMTP listeners share: aiosmtpd sessions that journal before replying.

aiosmtpd keeps the wire protocol (commands, STARTTLS, AUTH); this module
changes five things, each for a reason:

- DATA is read in chunks (``data.read_data``) and answered by the subclass:
  one reply per accepted recipient for LMTP (RFC 2033; aiosmtpd issue #517),
  one reply for SMTP, on the error paths too.
- Every reply carries an enhanced status code (RFC 2034, required of an LMTP
  server by RFC 2033 §5), and LHLO/EHLO advertise PIPELINING and
  ENHANCEDSTATUSCODES.
- Any internal error answers ``451 4.3.0`` (aiosmtpd's default is a ``500``,
  which makes the MTA bounce mail we could have taken later).
- ``MAIL FROM`` is answered ``451 4.3.2`` while intake's backlog gate is closed
  (``Intake.admit``); a transaction past MAIL FROM is never refused for it.
- ``MAIL FROM``/``RCPT TO`` with a plain ``<local@domain>`` skip the stdlib's
  header-grammar parser (a third of a bare server's CPU in the bench profiles);
  anything else still goes through aiosmtpd's parser.

Only aiosmtpd's public API is used here; what needs its private members (the
address parser, the connection's reader, the end-of-transaction reset) is in
:mod:`gateway.protocols.aiosmtpd_fixes`, with the reasons.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Callable

from aiosmtpd.smtp import SMTP, syntax

from gateway.intake import THROTTLED_REPLY, Intake, RecipientResult
from gateway.protocols.aiosmtpd_fixes import SmtpWorkarounds
from gateway.protocols.data import DataLimits, read_data

log = logging.getLogger("mailgate.session")

_HAS_ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
_DEFAULT_ENHANCED = {
    "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5", "252": "2.5.0",
    "421": "4.3.2", "450": "4.2.0", "451": "4.3.0", "452": "4.5.3", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "552": "5.3.4",
    "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}
# The greeting, the LHLO/EHLO capability lines and the 354 go out as they are.
_NO_ENHANCED = ("220", "354", "334")

TEMPFAIL = "451 4.3.0 Temporary local error, try again later"


def with_enhanced_code(reply: str) -> str:
    """``503 Error: need RCPT`` → ``503 5.5.1 Error: need RCPT`` (RFC 2034)."""
    code = reply[:3]
    if code in _NO_ENHANCED or _HAS_ENHANCED.match(reply):
        return reply
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0" if code[:1] in "245" else None)
    if enhanced is None or len(reply) < 3:
        return reply
    return f"{code}{reply[3:4] or ' '}{enhanced} {reply[4:]}".rstrip()


class SessionStats:
    """Live sessions of one listener, so that a drain knows whom to wait for."""

    def __init__(self, on_change: Callable[[int], None] | None = None):
        self.sessions: set["DurableSession"] = set()
        self.on_change = on_change

    def add(self, session: "DurableSession") -> None:
        self.sessions.add(session)
        if self.on_change:
            self.on_change(len(self.sessions))

    def discard(self, session: "DurableSession") -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            if self.on_change:
                self.on_change(len(self.sessions))

    def busy(self) -> int:
        return sum(1 for s in self.sessions if s.in_data)


class GatewayHandler:
    """aiosmtpd hooks: RCPT checks against the directory, capability lines, 451 on errors."""

    def __init__(self, intake: Intake, *, max_recipients: int,
                 on_reply: Callable[[str], None] | None = None):
        self.intake = intake
        self.max_recipients = max_recipients
        self.on_reply = on_reply

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"]
        capabilities = responses[:-1] + extra + responses[-1:]
        server.capability_lines = frozenset(capabilities)
        return capabilities

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if not self.intake.admit(server.source):
            # The journal backlog is over its high-water mark: a new transaction is told
            # to come back before it sends DATA (R-I1: 4xx, the MTA keeps the mail).
            return THROTTLED_REPLY
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.max_recipients} per message)"
        if self.intake.connector_for(address) is None:
            # R-I1: never an open relay; refuse at RCPT time, permanently.
            return f"550 5.1.1 <{address}>: Recipient address rejected: not a mailgate address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient ok"

    async def handle_exception(self, error: Exception) -> str:
        log.error("session error: %r", error, exc_info=error)
        return TEMPFAIL


class DurableSession(SmtpWorkarounds):
    """An aiosmtpd session whose DATA is journaled before any positive reply."""

    # The StreamReader's buffer limit. Commands are still held to 512 octets by
    # aiosmtpd's own check; a larger buffer lets DATA arrive in big reads.
    line_length_limit = 65536
    source = "smtp"

    def __init__(self, handler: GatewayHandler, *, limits: DataLimits, stats: SessionStats,
                 **kwargs: Any):
        super().__init__(handler, data_size_limit=limits.max_size, **kwargs)
        self.limits = limits
        self.stats = stats
        self.in_data = False
        self.capability_lines: frozenset[str] = frozenset()
        self._counted = False

    # -- bookkeeping for drain and metrics ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._counted:
            self._counted = True
            self.stats.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.stats.discard(self)
        super().connection_lost(error)

    def close_idle(self, reply: str = "421 4.3.2 Service shutting down") -> bool:
        """Say goodbye and close, unless a DATA transaction is in progress."""
        if self.in_data or self.transport is None:
            return False
        try:
            self.transport.write(reply.encode("ascii") + b"\r\n")
        except Exception:  # the peer may already be gone
            pass
        self.transport.close()
        return True

    # -- wire details -----------------------------------------------------------------

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and "\r\n" not in status \
                and status not in self.capability_lines:
            status = with_enhanced_code(status)
        handler = self.event_handler
        if getattr(handler, "on_reply", None) is not None and isinstance(status, str):
            for line in status.split("\r\n"):
                handler.on_reply(line[:1])
        await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """Replaces aiosmtpd's DATA (see aiosmtpd_fixes): chunked read, replies from
        the subclass after the journal commit."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self.in_data = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            result = await read_data(self.client_stream(), self.limits)
            rcpts = list(self.envelope.rcpt_tos)
            if result.error is not None:
                replies = self.error_replies(result.error, rcpts)
            else:
                replies = await self._deliver(result.content, rcpts)
            self.end_transaction()
            await self.push("\r\n".join(replies))
        finally:
            self.in_data = False

    async def _deliver(self, content: bytes, rcpts: list[str]) -> list[str]:
        assert self.envelope is not None and self.session is not None
        peer = self.session.peer
        try:
            results = await self.event_handler.intake.accept(
                source=self.source, raw=content, mail_from=self.envelope.mail_from,
                rcpts=rcpts, peer=f"{peer[0]}:{peer[1]}" if peer else None,
                helo=self.session.host_name)
        except Exception as exc:  # never a 5xx for our own failure
            log.exception("intake failed: %r", exc)
            return self.error_replies(TEMPFAIL, rcpts)
        return self.data_replies(results)

    # -- what the subclass decides ------------------------------------------------------

    def error_replies(self, reply: str, rcpts: list[str]) -> list[str]:
        raise NotImplementedError

    def data_replies(self, results: list[RecipientResult]) -> list[str]:
        raise NotImplementedError


def accepted_reply(result: RecipientResult) -> str:
    return f"250 2.0.0 <{result.rcpt}> Ok: stored as email {result.email_id}"


def failed_reply(result: RecipientResult) -> str:
    return f"451 4.3.0 <{result.rcpt}> Not stored, try again later"
