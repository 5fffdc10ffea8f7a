"""The LMTP and SMTP servers: sockets, limits, TLS and AUTH for the sessions (R-I1..R-I3).

The sessions speak the wire (``protocols/``) and hand every transaction to
intake; this module only opens the servers with what each needs, and keeps what
a drain needs of each (``SessionStats``).
"""
from __future__ import annotations

import asyncio
import secrets
import ssl
from typing import Callable

from gateway.config import ListenerSection, SmtpSection, parse_listen
from gateway.intake import Intake
from gateway.protocols.data import DataLimits
from gateway.protocols.lmtp import LmtpSession
from gateway.protocols.session import GatewayHandler, SessionStats
from gateway.protocols.smtp import SmtpSession
from gateway.version import VERSION
from metrics import Metrics


class Listener:
    """One asyncio server of LMTP or SMTP sessions, with what a drain needs."""

    def __init__(self, protocol: str, server: asyncio.AbstractServer, stats: SessionStats):
        self.protocol = protocol
        self.server = server
        self.stats = stats

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


async def listen(protocol: str, section: ListenerSection, intake: Intake, metrics: Metrics, *,
                 server_name: str) -> Listener:
    """Start serving ``protocol`` ("lmtp" or "smtp") as ``section`` says."""
    host, port = parse_listen(section.listen)
    limits = DataLimits(section.max_message_size, section.max_line_length,
                        section.max_header_count)
    stats = SessionStats(on_change=metrics.sessions_active.labels(protocol).set)
    replies = {c: metrics.replies.labels(protocol, c) for c in "245"}

    def count_reply(cls: str) -> None:
        counter = replies.get(cls)
        if counter is not None:
            counter.inc()

    handler = GatewayHandler(intake, max_recipients=section.max_recipients, on_reply=count_reply)
    session_cls, extra = LmtpSession, {}
    if protocol == "smtp":
        assert isinstance(section, SmtpSection)
        session_cls, extra = SmtpSession, smtp_options(section)

    def factory() -> asyncio.Protocol:
        return session_cls(handler, limits=limits, stats=stats, hostname=server_name,
                           ident=f"mailgate {VERSION}", timeout=section.timeout, **extra)

    server = await asyncio.get_running_loop().create_server(factory, host, port,
                                                            reuse_address=True)
    return Listener(protocol, server, stats)


def smtp_options(section: SmtpSection) -> dict:
    """STARTTLS with the configured certificate, and AUTH when a login is configured
    (only over TLS; the password compared in constant time)."""
    tls = None
    if section.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(section.tls_cert, section.tls_key)
    options: dict = {"tls_context": tls, "require_starttls": section.require_starttls}
    if section.auth_username:
        options.update(auth_required=True, auth_require_tls=True,
                       auth_callback=_login_check(section.auth_username, section.auth_password))
    return options


def _login_check(username: str, password: str) -> Callable[[str, bytes, bytes], bool]:
    expected_user, expected_password = username.encode(), password.encode()

    def check(mechanism: str, login: bytes, given: bytes) -> bool:
        return (secrets.compare_digest(login, expected_user)
                and secrets.compare_digest(given, expected_password))
    return check
