"""Service presets (R-C1): the host, port and TLS of the mail services people use.

A connector names its ``service``; the preset fills what the admin did not give.
``other`` has no preset: protocol, host and TLS must be given explicitly.
"""
from __future__ import annotations

import dataclasses

from gateway.model import Connector

SERVICES = ("gmail_imap", "gmail_pop3", "o365_imap", "o365_pop3", "o365_graph", "lmtp",
            "other")
PROTOCOLS = ("imap", "pop3", "graph", "lmtp")
TLS_MODES = ("implicit", "starttls", "none")

# service -> (protocol, host, tls, smtp_host)
_PRESETS = {
    "gmail_imap": ("imap", "imap.gmail.com", "implicit", "smtp.gmail.com"),
    "gmail_pop3": ("pop3", "pop.gmail.com", "implicit", "smtp.gmail.com"),
    "o365_imap": ("imap", "outlook.office365.com", "implicit", "smtp.office365.com"),
    "o365_pop3": ("pop3", "outlook.office365.com", "implicit", "smtp.office365.com"),
    "o365_graph": ("graph", "", "implicit", ""),
    "lmtp": ("lmtp", "", "implicit", ""),
}

# (protocol, tls) -> the IANA port
_PORTS = {("imap", "implicit"): 993, ("imap", "starttls"): 143, ("imap", "none"): 143,
          ("pop3", "implicit"): 995, ("pop3", "starttls"): 110, ("pop3", "none"): 110}


def protocol_of(service: str, given: str | None = None) -> str | None:
    """The protocol a service implies; ``other`` takes the one given (None if missing)."""
    preset = _PRESETS.get(service)
    return preset[0] if preset else given


def default_port(protocol: str, tls: str) -> int:
    return _PORTS.get((protocol, tls), 0)


def apply(connector: Connector) -> Connector:
    """``connector`` with its service's protocol, host and port filled where blank."""
    preset = _PRESETS.get(connector.service)
    changes: dict = {}
    if preset is not None:
        protocol, host, tls, smtp_host = preset
        changes["protocol"] = protocol
        if not connector.host and host:
            changes["host"] = host
            changes["tls"] = tls
        if not connector.smtp_host and smtp_host and connector.direction != "incoming":
            changes["smtp_host"] = smtp_host
    merged = dataclasses.replace(connector, **changes)
    if not merged.port and merged.protocol in ("imap", "pop3"):
        merged = dataclasses.replace(merged, port=default_port(merged.protocol, merged.tls))
    return merged


def problems(connector: Connector) -> list[tuple[str, str]]:
    """What is missing for ``connector`` to poll: (field, message) pairs citing R-C1."""
    found = []
    c = connector
    if c.service == "other" and c.protocol not in PROTOCOLS:
        found.append(("protocol", "R-C1: service 'other' needs protocol imap, pop3, graph "
                      "or lmtp"))
    if c.protocol in ("imap", "pop3") and not c.host:
        found.append(("host", f"R-C1: {c.protocol.upper()} connectors need a host (service "
                      "'other' has no preset)"))
    if c.protocol == "graph":
        for name in ("tenant_id", "application_id"):
            if not getattr(c, name):
                found.append((name, f"R-I6: Graph connectors need {name}"))
    if c.tls not in TLS_MODES:
        found.append(("tls", "R-C1: tls is one of implicit, starttls, none"))
    if c.start_from not in ("all", "now"):
        found.append(("start_from", "R-B5: start_from is 'all' or 'now'"))
    return found
