"""R-X1 webhooks: the events feed, POSTed in order, signed, retried until delivered.

Each webhook tails the events table from a cursor kept in the store, so an
event committed before a crash is still delivered after the restart, and a
receiver that was down gets everything it missed, in order (at least once:
a receiver dedups on ``X-Mailgate-Event-Id``).

Signature: ``X-Mailgate-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>." + body)>``
where ``<ts>`` is ``X-Mailgate-Timestamp`` (Unix seconds) and body the exact bytes
sent. The timestamp is signed, so a receiver that refuses old timestamps refuses
replays: a captured delivery cannot be sent again under a fresh one.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path

import aiohttp

from gateway.config import Webhook
from storage.base import Store

log = logging.getLogger("mailgate.webhooks")

BACKOFF_START = 1.0
BACKOFF_MAX = 300.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Mailgate-Signature value for a body sent at ``timestamp``."""
    message = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, store: Store, hook: Webhook, *, backoff_start: float = BACKOFF_START):
        self.store = store
        self.hook = hook
        self.secret = hook.secret or Path(hook.secret_file).read_text().strip()
        self.cursor_key = f"webhook_cursor:{hook.url}"
        self.backoff_start = backoff_start
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook")

    def wake(self, _event: dict | None = None) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        stored = await self.store.settings()
        cursor = stored.get(self.cursor_key)
        if cursor is None:   # a new webhook starts at the present, not at the first event
            cursor = await self.store.last_event_id()
            await self.store.save_settings({self.cursor_key: cursor})
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            while not self._stopping:
                self._wakeup.clear()
                events = await self.store.events(cursor, 100)
                for event in events:
                    if not self.hook.types or event["type"] in self.hook.types:
                        await self._deliver(http, event)
                    cursor = event["id"]
                if events:
                    await self.store.save_settings({self.cursor_key: cursor})
                    continue
                await self._wakeup.wait()

    async def _deliver(self, http: aiohttp.ClientSession, event: dict) -> None:
        """POST until a 2xx; exponential backoff up to 5 minutes between tries."""
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        delay = self.backoff_start
        attempt = 0
        while not self._stopping:
            attempt += 1
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json",
                       "X-Mailgate-Event": event["type"],
                       "X-Mailgate-Event-Id": str(event["id"]),
                       "X-Mailgate-Timestamp": timestamp,
                       "X-Mailgate-Signature": sign(self.secret, timestamp, body)}
            try:        # a redirect is not followed: the events go to the URL configured
                async with http.post(self.hook.url, data=body, headers=headers,
                                     allow_redirects=False) as response:
                    if 200 <= response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("webhook %s: event %s not delivered (attempt %d, %s); retrying in %.0fs",
                        self.hook.url, event["id"], attempt, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
