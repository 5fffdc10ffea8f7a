"""The SMTP client side of outbound delivery (R-O4): one lane's connections to the relays.

Protocol only, no queue: :mod:`gateway.outbound.delivery` decides what to send, when
to try again and what to record, and hands each mail to a :class:`RelaySessions`.
Like Postfix's smtp client, a connection stays open while there is mail for its
relay, so the next mail reuses it; a connection the relay closed meanwhile (idle
timeout, or 421 "closing", RFC 5321 3.8) is opened again at once rather than the
mail being deferred. TLS trust (R-C4) comes in as an ``ssl.SSLContext`` chosen by
the caller: a connector's own, else the default gateway's.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any, NamedTuple

import aiosmtplib


class Relay(NamedTuple):
    host: str
    port: int
    tls: str
    username: str
    password: str
    name: str
    # a connector's own trust (R-C4: its ca_file, its explicit tls_verify), else None
    # for the default gateway's context
    tls_context: ssl.SSLContext | None = None


class RelaySessions:
    """One lane's open SMTP connections, by relay: the next mail to the same relay
    reuses the connection (MAIL, RCPT, DATA again; aiosmtplib sends RSET after a
    refusal). Closed when the queue runs empty."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._open: dict[Relay, aiosmtplib.SMTP] = {}

    async def send(self, relay: Relay, context: ssl.SSLContext | None, sender: str,
                   recipients: list[str], raw: bytes) -> dict[str, Any]:
        """Send ``raw``; the recipients the relay refused while taking it for the others
        (address → its reply). Raises when it took it for nobody."""
        client = self._open.get(relay)
        if client is not None and client.is_connected:
            try:
                refused, _ = await client.sendmail(sender, recipients, raw)
                return refused
            except aiosmtplib.SMTPServerDisconnected:
                pass            # the relay closed the idle connection: open a new one
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code != 421:
                    raise
                # 421: the relay is closing this connection (RFC 5321 3.8); a new one
                # may well be served, and it is tried at once rather than deferred
        await self._drop(relay)
        client = aiosmtplib.SMTP(
            hostname=relay.host, port=relay.port, timeout=self.timeout,
            use_tls=relay.tls == "implicit", start_tls=relay.tls == "starttls",
            tls_context=context, username=relay.username or None,
            password=relay.password or None)
        await client.connect()
        self._open[relay] = client
        try:
            refused, _ = await client.sendmail(sender, recipients, raw)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError,
                asyncio.TimeoutError):
            await self._drop(relay)
            raise
        return refused

    async def _drop(self, relay: Relay) -> None:
        client = self._open.pop(relay, None)
        if client is not None:
            client.close()

    async def close(self) -> None:
        """QUIT every connection (briefly; a relay that does not answer is cut)."""
        for relay in list(self._open):
            client = self._open.pop(relay)
            try:
                await asyncio.wait_for(client.quit(), 5)
            except Exception:
                client.close()

