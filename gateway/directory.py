"""The directory as intake sees it: which connector an envelope address belongs to.

R-C1: an ``lmtp`` connector owns every envelope recipient equal to its primary
address or an alias, compared case-insensitively with any plus tag removed.
The snapshot is an immutable dict rebuilt on every directory change, so the
RCPT path is one dict lookup however many connectors exist.
"""
from __future__ import annotations

from gateway.model import Connector


def normalize_address(address: str) -> str:
    """``Info+123-T@Example.COM`` → ``info@example.com`` (the mailbox, tag removed)."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip().lower()
    mailbox = local.split("+", 1)[0]
    return f"{mailbox or local}@{domain}".lower()


class AddressBook:
    """Envelope address → name of the enabled push connector that receives it."""

    def __init__(self, connectors: list[Connector] = ()):  # type: ignore[assignment]
        self._owners: dict[str, str] = {}
        self.connectors = {c.name: c for c in connectors}
        for connector in connectors:
            if not connector.enabled or connector.protocol != "lmtp":
                continue
            for address in connector.addresses():
                self._owners.setdefault(normalize_address(address), connector.name)

    def owner(self, address: str) -> str | None:
        """The connector receiving ``address``, or None (→ ``550 5.1.1``, R-I1)."""
        return self._owners.get(normalize_address(address))

    def __len__(self) -> int:
        return len(self._owners)


class Directory:
    """The directory as the pipeline reads it: an immutable snapshot, rebuilt on change.

    Holds every connector (any protocol, for R-M4's "belongs to another
    connector"), each connector's route index (R-R9) and the contact
    directory used by R-R2's sender-company rule.
    """

    def __init__(self, connectors: list[Connector] = (), routes: list = (),  # type: ignore[assignment]
                 contacts: dict[str, str] | None = None):
        from gateway.routes import RouteIndex

        self.connectors = {c.name: c for c in connectors}
        self.book = AddressBook(list(connectors))
        self.contacts = contacts or {}
        self._owners: dict[str, str] = {}
        self._addresses: dict[str, frozenset[str]] = {}
        for connector in connectors:
            mailboxes = frozenset(normalize_address(a) for a in connector.addresses())
            self._addresses[connector.name] = mailboxes
            if connector.enabled:
                for mailbox in mailboxes:
                    self._owners.setdefault(mailbox, connector.name)
        by_connector: dict[str, list] = {name: [] for name in self.connectors}
        for route in routes:
            by_connector.setdefault(route.connector, []).append(route)
        self.routes = {name: RouteIndex(rs) for name, rs in by_connector.items()}

    def owner(self, address: str) -> str | None:
        """The enabled connector (any protocol) whose address this is (tags ignored)."""
        return self._owners.get(normalize_address(address))

    def mailboxes(self, connector: str) -> frozenset[str]:
        """A connector's primary address and aliases, normalised."""
        return self._addresses.get(connector, frozenset())
