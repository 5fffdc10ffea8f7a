"""The directory as intake sees it: which connector an envelope address belongs to.

R-C1: an ``lmtp`` connector owns every envelope recipient equal to its primary
address or an alias, compared case-insensitively with any plus tag removed.
The book is an immutable dict rebuilt on every directory change, so the
RCPT path is one dict lookup however many connectors exist.
"""
from __future__ import annotations

import re

from gateway.model import Connector

# R-C1: a connector's address is a plain mailbox: no plus tag (a tag names a work item,
# R-P1), no quoting, no comments; at most RFC 5321's 254 characters.
_CONNECTOR_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'/=?^_`{|}~.-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
NOT_A_CONNECTOR_ADDRESS = "is not an address like support@example.com (no plus tag)"


def is_connector_address(value: object) -> bool:
    """R-C1: may ``value`` be a connector's primary address or alias?"""
    return isinstance(value, str) and len(value) <= 254 \
        and bool(_CONNECTOR_ADDRESS.fullmatch(value))


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
