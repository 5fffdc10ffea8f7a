"""The directory as the pipeline reads it: an immutable snapshot, rebuilt on every change.

Every connector (any protocol, for R-M4's "belongs to another connector"), each
connector's route index (R-R9) and the contact directory of R-R2's sender-company
rule, taken from the store in one read after each change (``directory.ops``).
"""
from __future__ import annotations

from gateway.directory.addresses import AddressBook, normalize_address
from gateway.directory.routing import RouteIndex
from gateway.model import Connector, Route


class Directory:
    """The directory as the pipeline reads it: an immutable snapshot, rebuilt on change.

    Holds every connector (any protocol, for R-M4's "belongs to another
    connector"), each connector's route index (R-R9) and the contact
    directory used by R-R2's sender-company rule.
    """

    def __init__(self, connectors: list[Connector] = (),  # type: ignore[assignment]
                 routes: list[Route] = (),  # type: ignore[assignment]
                 contacts: dict[str, str] | None = None):
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
