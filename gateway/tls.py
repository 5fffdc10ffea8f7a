"""R-C4: whom the gateway trusts when it is the TLS client — pollers and outbound relays alike.

One function, so an IMAP poller and the connector's own SMTP relay check a server the
same way: the system trust store, plus the connector's ``ca_file`` when it names one;
verification off only when the connector says so explicitly (``tls_verify = false``).
"""
from __future__ import annotations

import ssl

from gateway.model import Connector


def tls_context(connector: Connector) -> ssl.SSLContext:
    """R-C4: the system trust store, plus the connector's ``ca_file`` when given.
    Verification is off only when the connector says so explicitly."""
    context = ssl.create_default_context()
    if connector.ca_file:
        context.load_verify_locations(cafile=connector.ca_file)
    if not connector.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
