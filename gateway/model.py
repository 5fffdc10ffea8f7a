"""Plain data the parts of mailgate hand each other. No behaviour, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field

SOURCES = ("lmtp", "smtp", "imap", "pop3", "graph")


@dataclass(frozen=True, slots=True)
class Copy:
    """One received message as one receiving connector got it (R-I7).

    ``raw`` is the message exactly as received (after SMTP dot-unstuffing, which
    is transport, not content). Copies of one message share the same ``raw``
    object; the journal stores those bytes once.
    """
    raw: bytes
    connector: str
    source: str
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    message_id: str | None = None
    peer: str | None = None
    helo: str | None = None
    folder_path: str | None = None


@dataclass(frozen=True, slots=True)
class Connector:
    """A mailbox the gateway serves (R-C1). Only what intake needs so far."""
    name: str
    service: str
    primary_address: str
    aliases: tuple[str, ...] = ()
    enabled: bool = True
    direction: str = "incoming"
    protocol: str = "lmtp"

    def addresses(self) -> tuple[str, ...]:
        return (self.primary_address, *self.aliases)


@dataclass(slots=True)
class EmailRecord:
    """An email as the store returns it to readers (API, CLI)."""
    id: int
    connector: str
    source: str
    direction: str
    mail_from: str | None
    rcpt_to: list[str]
    message_id: str | None
    received_at: float
    size: int
    state: str
    outcome: str | None = None
    reason: str | None = None
    targets: list = field(default_factory=list)
    trace: list = field(default_factory=list)
    peer: str | None = None
    helo: str | None = None
    folder_path: str | None = None
