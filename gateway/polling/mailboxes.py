"""The mailbox of a polled connector, by its protocol (R-I4, R-I5).

``protocols/`` holds the wire; this is the one place that knows which protocol
module serves which connector, so the protocol modules never import each other
through their common base.
"""
from __future__ import annotations

from gateway.model import Connector
from gateway.protocols.graph import GraphMailbox
from gateway.protocols.imap import ImapMailbox
from gateway.protocols.mailbox import Credentials, Mailbox, MailboxError
from gateway.protocols.pop3 import Pop3Mailbox

_BY_PROTOCOL: dict[str, type[Mailbox]] = {"imap": ImapMailbox, "pop3": Pop3Mailbox,
                                          "graph": GraphMailbox}


def open_mailbox(connector: Connector, credentials: Credentials, **options) -> Mailbox:
    """The :class:`Mailbox` for ``connector``'s protocol."""
    mailbox = _BY_PROTOCOL.get(connector.protocol)
    if mailbox is None:
        raise MailboxError(f"{connector.protocol!r} connectors are not polled")
    return mailbox(connector, credentials, **options)
