"""Delivering the outbound queue (R-O4): SMTP through the relay, DKIM, retries, no loss.

Mail waits in the ``outbound_queue`` table, written in the same transaction
as the work-item change that made it, so nothing composed is ever lost. The
worker sends what is due with aiosmtplib, through the SMTP server of the
outgoing connector that owns the From address, else the system default
gateway (R-O1). Like Postfix's smtp client it keeps connections open while
there is mail for a relay and sends on ``[outbound] concurrency`` of them at
once; a connection the relay closed meanwhile is opened again. 2xx → ``sent``; 4xx or a broken connection → tried again with
exponential backoff until ``max_lifetime``; 5xx → ``failed`` at once, with an
``outbound.failed`` event on the work item. The outcome is committed
right after the relay's answer; a crash in between sends that one mail again
on restart (SMTP offers no better: at least once, never lost).
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import ssl
import time
from typing import Any, Awaitable, Callable

import aiosmtplib

from gateway.config import OutboundSection
from gateway.directory.addresses import normalize_address
from gateway.model import Connector
from gateway.outbound.signing import Signed, Signer, SigningPool
from gateway.protocols.relay import Relay, RelaySessions
from gateway.tls import tls_context
from gateway.worker import Worker
from storage.base import OutboundMail, Store

log = logging.getLogger("mailgate.delivery")

BATCH = 100
STORE_RETRY = 1.0           # seconds between rounds while the store refuses writes


class Delivery(Worker):
    name = "delivery"

    def __init__(self, store: Store, settings: OutboundSection, *,
                 signer: Signer | None = None,
                 on_result: Callable[[str], None] | None = None):
        super().__init__()
        self.store = store
        self.queue = store.outbound
        self.settings = settings
        self.signer = signer
        self._signing: SigningPool | None = None    # for self.signer, made when first used
        self.on_result = on_result
        self.idle = asyncio.Event()
        # R-C4: the system trust store, plus the configured CA file when there is one
        self._tls_context = ssl.create_default_context(
            cafile=settings.default_gateway.ca_file or None)
        # connector trust by (ca_file, tls_verify): relays are looked up every batch, and
        # loading the system store for a new context each time costs milliseconds
        self._trust: dict[tuple[str, bool], ssl.SSLContext] = {}
        self._lanes = [RelaySessions(settings.default_gateway.timeout)
                       for _ in range(max(1, settings.concurrency))]
        # Mail the relay took whose record could not be written (the store failing):
        # never sent again, only recorded again, first thing every round.
        self._unrecorded: dict[int, Callable[[], Awaitable[None]]] = {}
        self._store_trouble = False

    def start(self) -> None:
        self.start_task()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                busy = await self._round()
            except Exception:           # the worker must outlive any one failure
                log.exception("outbound delivery round failed; retrying")
                busy, self._store_trouble = True, True
            if self._stopping:
                break
            if self._store_trouble:     # the store refuses writes: do not spin on it
                self._store_trouble = False
                await asyncio.sleep(STORE_RETRY)
                continue
            if busy:
                continue
            for sessions in self._lanes:    # nothing due: let the relays go
                await sessions.close()
            self.idle.set()
            try:
                when = await self.queue.next_due()
            except Exception:
                log.exception("cannot read the outbound queue")
                when = None
            wait = 30.0 if when is None else max(0.0, min(30.0, when - time.time()))
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self.idle.clear()

    async def _round(self) -> bool:
        """Send what is due; True when there was something to send."""
        self._wakeup.clear()
        for email_id, record in list(self._unrecorded.items()):
            try:                        # sent earlier; only the record of it failed
                await record()
                del self._unrecorded[email_id]
            except Exception as exc:
                log.error("email %s: sent, but its record still cannot be written: %s",
                          email_id, exc)
                self._store_trouble = True
                return True
        due = await self.queue.due(time.time(), BATCH)
        due = [m for m in due if m.email_id not in self._unrecorded]
        if not due:
            return False
        relays = await self._connector_relays()
        signing = self._signing_pool()
        signed = signing.ahead((m.email_id, m.raw) for m in due) if signing is not None else {}
        lanes = self._lanes
        await asyncio.gather(*(self._lane(due[n::len(lanes)], relays, sessions, signed)
                               for n, sessions in enumerate(lanes)))
        return True

    async def _lane(self, mails: list[OutboundMail], relays: dict[str, Relay],
                    sessions: RelaySessions, signed: dict[int, Signed]) -> None:
        """One of ``concurrency`` senders: its share of the batch, in order."""
        for mail in mails:
            if self._stopping:
                break
            try:
                await self._deliver(mail, relays, sessions, signed.get(mail.email_id))
            except Exception as exc:    # a bug (or a signer failing on one mail) must not
                log.exception("email %s: delivery failed", mail.email_id)  # end the lane
                try:        # _deliver never raises once the relay took the mail
                    await self._failed(mail, f"internal error: {type(exc).__name__}: {exc}",
                                       permanent=False)
                except Exception:
                    log.exception("email %s: cannot record the failure", mail.email_id)
                    self._store_trouble = True

    def _signing_pool(self) -> SigningPool | None:
        """DKIM signing off the event loop: threads that sign a batch while it is
        sent (``signing``), for whichever signer is set now."""
        if self.signer is None:
            return None
        if self._signing is None or self._signing.signer is not self.signer:
            if self._signing is not None:
                self._signing.close()
            self._signing = SigningPool(self.signer)
        return self._signing

    async def stop(self) -> None:
        await super().stop()
        if self._signing is not None:
            self._signing.close()
        for sessions in self._lanes:
            await sessions.close()

    async def _connector_relays(self) -> dict[str, Relay]:
        """R-O1: mailbox → the SMTP server of the first enabled outgoing connector (by name)
        that has one; mail From any other address uses the system default gateway."""
        try:
            entries = await self.store.read(lambda t: t.connector_entries())
        except Exception:
            log.exception("cannot read the connectors; using the default gateway")
            return {}
        relays: dict[str, Relay] = {}
        for entry in entries:
            connector, username, password = entry.connector, entry.username, entry.password
            if not (connector.enabled and connector.smtp_host
                    and connector.direction in ("outgoing", "both")):
                continue
            relay = Relay(connector.smtp_host, connector.smtp_port, connector.smtp_tls,
                          username or "", password or "", f"connector {connector.name}",
                          self._connector_trust(connector))
            for address in connector.addresses():
                relays.setdefault(normalize_address(address), relay)
        return relays

    def _connector_trust(self, connector: Connector) -> ssl.SSLContext | None:
        """A connector's own TLS trust (R-C4), or None for the default gateway's."""
        if not connector.ca_file and connector.tls_verify:
            return None
        key = (connector.ca_file, connector.tls_verify)
        if key not in self._trust:
            self._trust[key] = tls_context(connector)
        return self._trust[key]

    async def _deliver(self, mail: OutboundMail, relays: dict[str, Relay] | None = None,
                       sessions: RelaySessions | None = None,
                       signed: Signed | None = None) -> None:
        raw, domain = mail.raw, None
        signing = self._signing_pool()
        if signing is not None:
            if signed is None:
                signed = signing.ahead([(mail.email_id, raw)])[mail.email_id]
            raw, domain = await signed
        gateway = self.settings.default_gateway
        relay = (relays or {}).get(normalize_address(mail.mail_from or ""))
        if relay is None and not gateway.enabled:
            await self._record(mail, "failed", f"R-O1: no outgoing connector sends as "
                               f"{mail.mail_from} and the default gateway is disabled")
            return
        relay = relay or Relay(gateway.host, gateway.port, gateway.tls, gateway.username,
                               gateway.password, "default gateway")
        sessions = sessions or self._lanes[0]
        context = (relay.tls_context or self._tls_context) if relay.tls != "none" else None
        try:
            refused = await sessions.send(relay, context, mail.mail_from, list(mail.rcpt_to),
                                          raw)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            await self._failed(mail, f"recipients refused: {exc}", permanent=min(codes) >= 500)
            return
        except aiosmtplib.SMTPResponseException as exc:
            await self._failed(mail, f"{exc.code} {exc.message}", permanent=exc.code >= 500)
            return
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            await self._failed(mail, f"{type(exc).__name__}: {exc}", permanent=False)
            return
        # The relay has the mail (for some recipients at least): from here on it is never
        # sent to them again, whatever the store does.
        record = functools.partial(self._sent, mail, refused, domain, relay.name)
        try:
            await record()
        except Exception as exc:
            log.error("email %s: sent, but its record cannot be written (%s); kept in "
                      "memory and recorded again, never sent again", mail.email_id, exc)
            self._unrecorded[mail.email_id] = record
            self._store_trouble = True

    async def _sent(self, mail: OutboundMail, refused: dict[str, Any], domain: str | None,
                    relay: str) -> None:
        """Record a send the relay took. Recipients it refused for now are tried again
        later on their own; those it refused for good get an ``outbound.failed`` event."""
        later = sorted(r for r, reply in refused.items() if 400 <= reply.code < 500)
        never = sorted(r for r, reply in refused.items() if reply.code >= 500)
        if never:
            await self.store.emit("outbound.failed", ref=mail.ref, email_id=mail.email_id,
                                  recipients=never,
                                  error="; ".join(f"{r}: {refused[r].code} {refused[r].message}"
                                                  for r in never))
        if later:
            error = "; ".join(f"{r}: {refused[r].code} {refused[r].message}" for r in later)
            await self._failed(dataclasses.replace(mail, rcpt_to=tuple(later)),
                               f"recipients deferred: {error}", permanent=False, pending=later)
            return
        await self._record(mail, "sent", None, signed=domain, relay=relay)

    async def _failed(self, mail: OutboundMail, error: str, *, permanent: bool,
                      pending: list[str] | None = None) -> None:
        attempts = mail.attempts + 1
        age = time.time() - mail.created_at
        if permanent or age >= self.settings.max_lifetime:
            await self._record(mail, "failed", error)
            return
        delay = min(self.settings.retry_initial * 2 ** (attempts - 1), self.settings.retry_max)
        log.warning("email %s to %s not delivered (try %d: %s); next try in %.0fs",
                    mail.email_id, ", ".join(mail.rcpt_to), attempts, error, delay)
        await self.queue.finish(mail, state="queued", error=error,
                                next_attempt_at=time.time() + delay, pending=pending)
        if self.on_result:
            self.on_result("deferred")

    async def _record(self, mail: OutboundMail, state: str, error: str | None, *,
                      signed: str | None = None, relay: str | None = None) -> None:
        await self.queue.finish(mail, state=state, error=error, next_attempt_at=time.time(),
                                event=(f"outbound.{state}",
                                       {"recipients": list(mail.rcpt_to), "error": error,
                                        "dkim": signed, "relay": relay}))
        if state == "failed":
            log.error("email %s to %s failed permanently: %s", mail.email_id,
                      ", ".join(mail.rcpt_to), error)
        if self.on_result:
            self.on_result(state)

    async def drain(self, timeout: float = 30.0) -> None:
        """Until nothing is queued any more: every mail sent or failed (tests, bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.wake()
            await asyncio.sleep(0.05)
            if not await self.queue.queued():
                return
        raise TimeoutError("outbound queue did not drain")
