"""Delivering the outbound queue (R-O4): SMTP through the relay, DKIM, retries, no loss.

Mail waits in the ``outbound_queue`` table, written in the same transaction
as the work-item change that made it, so nothing composed is ever lost. A
single worker sends what is due through the system default gateway (R-O1)
with aiosmtplib: 2xx → ``sent``; 4xx or a broken connection → tried again
with exponential backoff until ``max_lifetime``; 5xx → ``failed`` at once,
with an ``outbound.failed`` event on the work item. The outcome is committed
right after the relay's answer; a crash in between sends that one mail again
on restart (SMTP offers no better: at least once, never lost).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Callable

import aiosmtplib
import aiosqlite

from gateway.config import OutboundSection
from gateway.worker import Worker
from storage import outbound_sql
from storage.sqlite import SqliteStore
from storage.txn import Txn

log = logging.getLogger("mailgate.delivery")

Signer = Callable[[bytes], tuple[bytes, str | None]]
BATCH = 20


class Delivery(Worker):
    name = "delivery"

    def __init__(self, store: SqliteStore, settings: OutboundSection, *,
                 signer: Signer | None = None,
                 on_result: Callable[[str], None] | None = None):
        super().__init__()
        self.store = store
        self.settings = settings
        self.signer = signer
        self.on_result = on_result
        self.idle = asyncio.Event()
        gateway = settings.default_gateway
        self._tls_context = None
        if gateway.tls != "none":
            self._tls_context = ssl.create_default_context(cafile=gateway.ca_file or None)

    def start(self) -> None:
        self.start_task()

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                due = await self.store.read(lambda db: outbound_sql.due(db, time.time(), BATCH))
            except Exception:
                log.exception("cannot read the outbound queue")
                due = []
            for mail in due:
                if self._stopping:
                    return
                await self._deliver(mail)
            if due:
                continue
            self.idle.set()
            when = await self.store.read(outbound_sql.next_due)
            wait = 30.0 if when is None else max(0.0, min(30.0, when - time.time()))
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self.idle.clear()

    async def _deliver(self, mail: dict) -> None:
        raw, domain = mail["raw"], None
        if self.signer is not None:
            raw, domain = await asyncio.to_thread(self.signer, raw)
        gateway = self.settings.default_gateway
        try:
            await aiosmtplib.send(
                raw, sender=mail["mail_from"], recipients=mail["rcpt_to"],
                hostname=gateway.host, port=gateway.port, timeout=gateway.timeout,
                use_tls=gateway.tls == "implicit", start_tls=gateway.tls == "starttls",
                tls_context=self._tls_context, username=gateway.username or None,
                password=gateway.password or None)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            await self._failed(mail, f"recipients refused: {exc}", permanent=min(codes) >= 500)
        except aiosmtplib.SMTPResponseException as exc:
            await self._failed(mail, f"{exc.code} {exc.message}", permanent=exc.code >= 500)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            await self._failed(mail, f"{type(exc).__name__}: {exc}", permanent=False)
        else:
            await self._record(mail, "sent", None, signed=domain)

    async def _failed(self, mail: dict, error: str, *, permanent: bool) -> None:
        attempts = mail["attempts"] + 1
        age = time.time() - mail["created_at"]
        if permanent or age >= self.settings.max_lifetime:
            await self._record(mail, "failed", error)
            return
        delay = min(self.settings.retry_initial * 2 ** (attempts - 1), self.settings.retry_max)
        log.warning("email %s to %s not delivered (try %d: %s); next try in %.0fs",
                    mail["email_id"], ", ".join(mail["rcpt_to"]), attempts, error, delay)

        async def work(db: aiosqlite.Connection) -> None:
            await outbound_sql.finish(db, mail["email_id"], state="queued", attempts=attempts,
                                      error=error, next_attempt_at=time.time() + delay)
        await self.store.write(work)
        if self.on_result:
            self.on_result("deferred")

    async def _record(self, mail: dict, state: str, error: str | None, *,
                      signed: str | None = None) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            await outbound_sql.finish(db, mail["email_id"], state=state,
                                      attempts=mail["attempts"] + 1, error=error,
                                      next_attempt_at=time.time())
            await Txn(db).emit(f"outbound.{state}", ref=mail["ref"], email_id=mail["email_id"],
                               recipients=mail["rcpt_to"], error=error, dkim=signed)
        await self.store.write(work)
        if state == "failed":
            log.error("email %s to %s failed permanently: %s", mail["email_id"],
                      ", ".join(mail["rcpt_to"]), error)
        if self.on_result:
            self.on_result(state)

    async def drain(self, timeout: float = 30.0) -> None:
        """Until nothing is queued any more: every mail sent or failed (tests, bench)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.wake()
            await asyncio.sleep(0.05)
            if not await self.store.read(outbound_sql.queued):
                return
        raise TimeoutError("outbound queue did not drain")
