"""The shape every background task of the gateway shares: woken on demand, stopped cleanly.

The pipeline, the delivery of the outbound queue and the event dispatcher
each run one task that sleeps until something is committed for it
(``wake``), and that finishes what it is doing when asked to ``stop``.
"""
from __future__ import annotations

import asyncio


class Worker:
    name = "worker"

    def __init__(self) -> None:
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    def start_task(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def wake(self, *_: object) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        """Let the current round finish, then end the task."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        raise NotImplementedError
