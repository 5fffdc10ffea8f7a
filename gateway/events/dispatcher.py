"""R-X1 event callbacks for an embedding host (SPEC §5.4).

The events table is the source of truth: every change commits its events in
the same transaction as the change. The dispatcher tails that table after
each commit and hands each new event, in id order, to every subscriber, so
a host's callback sees exactly what ``GET /api/v1/events`` returns, in the
same order, and never an event whose change was rolled back.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable

from gateway.worker import Worker
from storage.base import Store

log = logging.getLogger("mailgate.events")

Callback = Callable[[dict], Any | Awaitable[Any]]


class EventDispatcher(Worker):
    name = "events"

    def __init__(self, store: Store):
        super().__init__()
        self.store = store
        self.subscribers: list[tuple[Callback, frozenset[str] | None]] = []
        self.last_id = 0

    def subscribe(self, callback: Callback, types: set[str] | None = None) -> None:
        """Call ``callback(event)`` for each new event (of ``types``, or all)."""
        self.subscribers.append((callback, frozenset(types) if types else None))

    async def start(self) -> None:
        self.last_id = await self.store.last_event_id()   # history is in the feed, not replayed
        self.start_task()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            if self.subscribers:
                await self._deliver()
            if self._stopping:
                return
            await self._wakeup.wait()

    async def _deliver(self) -> None:
        while True:
            try:
                events = await self.store.events(self.last_id, 500)
            except Exception:  # the store is closing
                return
            if not events:
                return
            for event in events:
                self.last_id = event["id"]
                for callback, types in self.subscribers:
                    if types is not None and event["type"] not in types:
                        continue
                    try:
                        result = callback(event)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:  # a host's bug must not stop the gateway
                        log.exception("event callback %r failed on event %s", callback,
                                      event["id"])
