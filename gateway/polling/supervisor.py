"""The set of running pollers, kept in step with the directory (R-I4, R-C4).

After every directory change the gateway hands the connectors over; a poller
starts for each enabled polled connector that receives mail, restarts when its
settings or login changed, and stops when the connector is disabled or deleted.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from gateway.model import Connector, ConnectorEntry
from gateway.polling.poller import Journal, Poller, PollerStatus
from gateway.protocols.mailbox import Credentials
from storage.base import Store

log = logging.getLogger("mailgate.poller")

def wants_poller(connector: Connector) -> bool:
    return (connector.enabled and connector.polled
            and connector.direction in ("incoming", "both"))


class Pollers:
    def __init__(self, store: Store, journal: Journal, *,
                 observe: Callable[[PollerStatus, float, bool], None] | None = None,
                 forget: Callable[[str, str], None] | None = None,
                 timeout: float | None = None, mailbox_factory: Callable | None = None,
                 max_size: int | None = None, paused: Callable[[], bool] | None = None):
        self.store = store
        self.paused = paused                      # intake's backlog gate (Poller.paused)
        self.max_size = max_size                  # the gateway's size limit for a message
        self.mailbox_factory = mailbox_factory    # (connector, credentials) -> Mailbox
        self.journal = journal
        self.observe = observe
        self.forget = forget
        self.timeout = timeout
        self.running: dict[str, tuple[ConnectorEntry, Poller]] = {}
        self.started = False
        # Two directory changes at once (two API calls) must not both replace a poller:
        # the loser's poller would poll on, unseen, beside the winner's.
        self._syncing = asyncio.Lock()

    async def sync(self, load: Callable[[], Awaitable[list[ConnectorEntry]]]) -> None:
        """Start, restart and stop pollers to match the directory ``load()`` returns.
        The directory is read under the lock, so the last sync always applies the
        newest directory."""
        async with self._syncing:
            await self._sync(await load())

    async def _sync(self, entries: list[ConnectorEntry]) -> None:
        wanted = {e.connector.name: e for e in entries if wants_poller(e.connector)}
        carried: dict[str, PollerStatus] = {}
        for name in list(self.running):
            entry, poller = self.running[name]
            if wanted.get(name) != entry:
                await poller.stop()
                del self.running[name]
                # A fixed password restarts the poller; its health history goes on, so the
                # next good round reports the recovery (one event per failure spell).
                carried[name] = poller.status
                if name not in wanted and self.forget is not None:
                    self.forget(name, entry.connector.protocol)
                log.info("poller %s: stopped (%s)", name,
                         "settings changed" if name in wanted else "disabled or deleted")
        for name, entry in wanted.items():
            if name in self.running:
                continue
            connector = entry.connector
            if not connector.tls_verify:
                log.warning("poller %s: TLS certificate verification is DISABLED for %s "
                            "(tls_verify = false, R-C4)", name, connector.host or "graph")
            try:
                credentials = Credentials.of(entry.username, entry.password, entry.secrets)
                factory = self.mailbox_factory
                new_mailbox = (None if factory is None else
                               lambda c=connector, creds=credentials: factory(c, creds))
                poller = Poller(self.store, connector, credentials, self.journal,
                                new_mailbox=new_mailbox, observe=self.observe,
                                timeout=self.timeout, max_size=self.max_size,
                                paused=self.paused)
            except Exception as exc:  # one broken connector must not stop the others
                log.error("poller %s: cannot start: %s", name, exc)
                continue
            previous = carried.get(name)
            if previous is not None and previous.protocol == connector.protocol:
                previous.state = "failing" if previous.failures else "starting"
                poller.status = previous
            poller.start()
            self.running[name] = (entry, poller)
            log.info("poller %s: polling %s %s every %ds", name, connector.protocol,
                     ", ".join(connector.folders), connector.poll_interval)

    def get(self, name: str) -> Poller | None:
        found = self.running.get(name)
        return found[1] if found else None

    async def poll(self, name: str, timeout: float = 60.0) -> PollerStatus:
        """One round of ``name``'s poller, started now; LookupError if it has none."""
        poller = self.get(name)
        if poller is None:
            raise LookupError(f"connector {name!r} has no running poller (enabled, polled, "
                              "incoming?)")
        return await poller.poll(timeout)

    def statuses(self) -> dict[str, dict]:
        return {name: poller.status.as_json() for name, (_, poller) in self.running.items()}

    async def stop(self) -> None:
        """Stop every poller at once: each may take STOP_GRACE on a silent server, and
        one after another they could outlast the service manager's stop timeout."""
        async with self._syncing:
            pollers = [poller for _, poller in self.running.values()]
            self.running.clear()
            await asyncio.gather(*(poller.stop() for poller in pollers))
