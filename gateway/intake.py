"""Intake: turn one received transaction into journaled copies, one per connector.

DESIGN step 1, and the only door into the journal, for pushed and polled mail
alike. Pushed mail (LMTP, SMTP) arrives as one message for a list of
envelope recipients; each recipient belongs to a connector, and each receiving
connector gets its own copy (R-I7, SPEC §3 "one copy per receiving connector").
Intake answers per recipient: accepted only when its connector's copy is
committed, otherwise a temporary failure so the MTA keeps the mail (R-I1).

Nothing here parses MIME: the only thing read from the message is its
Message-ID, by a bounded scan of the header block, so that the API can find
copies by Message-ID before the pipeline has run.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

from gateway.directory.addresses import AddressBook
from gateway.model import Copy
from storage.base import Store, StoreError

log = logging.getLogger("mailgate.intake")

_HEADER_SCAN_LIMIT = 256 * 1024
_MESSAGE_ID = re.compile(rb"(?:^|\n)message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^<>\r\n]{1,995}>)",
                         re.IGNORECASE)


def header_block(raw: bytes) -> bytes:
    """The header section of ``raw`` (capped), without the blank line."""
    end = raw.find(b"\r\n\r\n", 0, _HEADER_SCAN_LIMIT)
    if end < 0:
        end = raw.find(b"\n\n", 0, _HEADER_SCAN_LIMIT)
    return raw[:end if end >= 0 else _HEADER_SCAN_LIMIT]


def scan_message_id(raw: bytes) -> str | None:
    """The first Message-ID header's ``<id>``, or None when absent or malformed."""
    match = _MESSAGE_ID.search(header_block(raw))
    if not match:
        return None
    return match.group(1).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome for one envelope recipient: ``email_id`` set when committed."""
    rcpt: str
    email_id: int | None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.email_id is not None


class Intake:
    """Journals pushed mail; the protocols only speak the wire."""

    def __init__(self, store: Store, addresses: Callable[[], AddressBook],
                 on_received: Callable[[str, str, int], None] | None = None,
                 on_journaled: Callable[[], None] | None = None):
        self.store = store
        self._addresses = addresses
        self.on_received = on_received
        self.on_journaled = on_journaled

    def connector_for(self, rcpt: str) -> str | None:
        return self._addresses().owner(rcpt)

    async def accept(self, *, source: str, raw: bytes, mail_from: str | None,
                     rcpts: list[str], peer: str | None = None,
                     helo: str | None = None) -> list[RecipientResult]:
        """Journal one copy per receiving connector; one result per recipient, in order."""
        book = self._addresses()
        by_connector: dict[str, list[str]] = {}
        owners = []
        for rcpt in rcpts:
            owner = book.owner(rcpt)
            owners.append(owner)
            if owner is not None:
                by_connector.setdefault(owner, []).append(rcpt)
        message_id = scan_message_id(raw)
        copies = [Copy(raw=raw, connector=name, source=source, mail_from=mail_from,
                       rcpt_to=tuple(connector_rcpts), message_id=message_id,
                       peer=peer, helo=helo)
                  for name, connector_rcpts in by_connector.items()]
        email_ids: dict[str, int] = {}
        error = None
        if copies:
            try:
                ids = await self._journal(copies)
                email_ids = {copy.connector: email_id for copy, email_id in zip(copies, ids)}
            except StoreError as exc:
                error = str(exc)
        results = []
        for rcpt, owner in zip(rcpts, owners):
            if owner is None:
                # The connector went away between RCPT and DATA: try again later.
                results.append(RecipientResult(rcpt, None, "no longer a mailgate address"))
            elif owner in email_ids:
                results.append(RecipientResult(rcpt, email_ids[owner]))
            else:
                results.append(RecipientResult(rcpt, None, error or "not stored"))
        return results

    async def accept_polled(self, connector: str, source: str, folder: str,
                            fetched: list[tuple[str, bytes]]) -> list[int]:
        """Journal what a poller fetched from ``folder`` (R-I4): ``(key, raw)`` pairs, the
        key as the poll ledger stores it. Their ids once durably committed, keys included.

        Raises StoreError when the commit failed: the poller then leaves the
        messages on the server and tries again next round.
        """
        return await self._journal([
            Copy(raw=raw, connector=connector, source=source, message_id=scan_message_id(raw),
                 folder_path=folder, poll_key=key) for key, raw in fetched])

    async def _journal(self, copies: list[Copy]) -> list[int]:
        """Commit ``copies``; once committed, wake the pipeline and count them."""
        ids = await self.store.journal(copies)
        if self.on_journaled is not None:
            self.on_journaled()
        if self.on_received is not None:
            for copy in copies:
                self.on_received(copy.source, copy.connector, len(copy.raw))
        return ids
