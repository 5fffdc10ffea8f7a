"""R-C3: ``test`` a connector — a real connection with its credentials — and keep the result.

What is tested is what the gateway would do with the connector: a polled mailbox
logs in and reads one folder (IMAP LOGIN + SELECT, POP3 USER/PASS + STAT, Graph
token + one folder read, through the protocol's :class:`~gateway.protocols.mailbox.Mailbox`);
an outgoing one with its own relay says EHLO and, with a username, AUTH. A pushed
(``lmtp``) mailbox has nothing to connect to.

A failure is a *result*, not an error: the test ran and the server said no, so the
answer is ``(False, the server's words)`` exactly as they came — that is what the
admin needs to fix the connector. The last result is kept (``connector_tests``)
because enabling an incoming connector whose last test failed is refused unless
forced (``directory.ops.DirectoryOps.update_connector``).
"""
from __future__ import annotations

import asyncio
import logging
import time

import aiosmtplib

from gateway.directory.ops import DirectoryOps
from gateway.model import ConnectorEntry
from gateway.polling.mailboxes import open_mailbox
from gateway.protocols.mailbox import Credentials, MailboxError
from gateway.tls import tls_context

log = logging.getLogger("mailgate.connector_test")

LMTP_DETAIL = "lmtp: mail is pushed; nothing to connect to"
Result = tuple[bool, str]


async def run_test(entry: ConnectorEntry, *, timeout: float = 30) -> Result:
    """R-C3 for one connector: (ok, detail). An incoming side and an outgoing relay are
    both tested when the connector has both; ``ok`` only when every part passed."""
    c = entry.connector
    parts: list[Result] = []
    if c.direction != "outgoing":
        parts.append(await _bounded(_incoming(entry, timeout), timeout, c.protocol))
    if c.direction != "incoming" and c.smtp_host:
        parts.append(await _bounded(_outgoing(entry, timeout), timeout, "smtp"))
    if not parts:
        parts.append((True, "smtp: no smtp_host; this connector's mail leaves through the "
                            "system default gateway (R-O1)"))
    return all(ok for ok, _ in parts), "; ".join(detail for _, detail in parts)


async def test_and_record(ops: DirectoryOps, entry: ConnectorEntry, *, timeout: float = 30
                          ) -> tuple[bool, str, float]:
    """Run the test, then keep its result (a test changes no setting)."""
    ok, detail = await run_test(entry, timeout=timeout)
    at = time.time()
    name = entry.connector.name
    await ops.record_test(name, ok, detail, at)
    log.log(logging.INFO if ok else logging.WARNING, "connector %s test %s: %s", name,
            "passed" if ok else "failed", detail)
    return ok, detail, at


async def _bounded(work, timeout: float, what: str) -> Result:
    """No test waits longer than ``timeout``, whatever the protocol module does; a
    failure nobody foresaw is still a failed test (and a logged traceback), never a 500."""
    try:
        return await asyncio.wait_for(work, timeout)
    except (asyncio.TimeoutError, TimeoutError):
        return False, f"{what}: no answer within {timeout:g} s"
    except (MailboxError, OSError) as exc:
        return False, f"{what}: {_words(exc)}"
    except Exception as exc:  # noqa: BLE001 - reported to the admin, traceback to the log
        log.exception("testing a %s connector failed unexpectedly", what)
        return False, f"{what}: {type(exc).__name__}: {exc}"


async def _incoming(entry: ConnectorEntry, timeout: float) -> Result:
    c = entry.connector
    if not c.polled:
        return True, LMTP_DETAIL
    credentials = Credentials.of(entry.username, entry.password, entry.secrets)
    return True, await open_mailbox(c, credentials, timeout=timeout).test()


async def _outgoing(entry: ConnectorEntry, timeout: float) -> Result:
    """SMTP EHLO (+ STARTTLS or implicit TLS per ``smtp_tls``) and AUTH when a username
    is set; certificates verified as R-C4 says (``ca_file``, ``tls_verify``)."""
    c = entry.connector
    client = aiosmtplib.SMTP(hostname=c.smtp_host, port=c.smtp_port, timeout=timeout,
                             use_tls=c.smtp_tls == "implicit",
                             start_tls=True if c.smtp_tls == "starttls" else False,
                             tls_context=tls_context(c) if c.smtp_tls != "none" else None)
    try:
        await client.connect()          # with STARTTLS: EHLO, STARTTLS, EHLO again
        if client.is_ehlo_or_helo_needed:
            await client.ehlo()
        said = (f"smtp: {c.smtp_host}:{c.smtp_port} answered EHLO"
                + ("" if c.smtp_tls == "none" else f" over TLS ({c.smtp_tls})"))
        if entry.username:
            await client.login(entry.username, entry.password or "")
            said += f"; AUTH as {entry.username} accepted"
        return True, said
    except aiosmtplib.SMTPResponseException as exc:
        return False, f"smtp: {exc.code} {exc.message}"
    except aiosmtplib.SMTPException as exc:
        return False, f"smtp: {exc}"
    finally:
        try:
            if client.is_connected:
                await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()


def _words(exc: BaseException) -> str:
    """The exception's own text (the server's words for a MailboxError); an OSError
    without text (a bare timeout) still says what it was."""
    text = str(exc).strip()
    return text or type(exc).__name__
