"""The small ports the workers use (:class:`storage.base.PollLedger`,
:class:`storage.base.OutboundQueue`), each call one read or one transaction of the store."""
from __future__ import annotations

from storage.base import DeliveryState, OutboundMail, PolledKeys, Store
from storage.sqlite.txn import SqliteTxn


class SqlitePollLedger:
    def __init__(self, store: Store):
        self.store = store

    async def known(self, connector: str, folder: str, scope: str) -> PolledKeys:
        return await self.store.read(lambda t: t.polled_keys(connector, folder, scope))

    async def mark(self, connector: str, folder: str, scope: str, keys: list[str]) -> None:
        await self.store.transaction(lambda t: t.mark_polled(connector, folder, scope, keys))

    async def forget(self, connector: str, folder: str, stored_keys: list[str]) -> None:
        """Not durable: a forgotten key that comes back is only forgotten again."""
        await self.store.transaction(lambda t: t.forget_polled(connector, folder, stored_keys),
                                     durable=False)


class SqliteOutboundQueue:
    def __init__(self, store: Store):
        self.store = store

    async def due(self, now: float, limit: int) -> list[OutboundMail]:
        """Queued mail whose next try is due, oldest first, with what sending needs."""
        return await self.store.read(lambda t: t.outbound_due(now, limit))

    async def next_due(self) -> float | None:
        return await self.store.read(lambda t: t.outbound_next_due())

    async def queued(self) -> int:
        return await self.store.read(lambda t: t.outbound_queued())

    async def delivery(self, email_id: int) -> DeliveryState | None:
        return await self.store.read(lambda t: t.outbound_delivery(email_id))

    async def finish(self, mail: OutboundMail, *, state: str, error: str | None,
                     next_attempt_at: float, pending: list[str] | None = None,
                     event: tuple[str, dict] | None = None) -> None:
        """The outcome of a try, with its event when one is given. ``pending``: the
        recipients a later try is for, when a relay refused only some of them for now
        (the others have the mail)."""
        async def work(txn: SqliteTxn) -> None:
            await txn.outbound_finish(mail.email_id, state=state, attempts=mail.attempts + 1,
                                      error=error, next_attempt_at=next_attempt_at,
                                      pending=pending)
            if event is not None:
                event_type, data = event
                await txn.emit(event_type, ref=mail.ref, email_id=mail.email_id, **data)
        await self.store.transaction(work)
