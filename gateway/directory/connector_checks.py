"""Connector settings: ONE set of checks for the API, the config seeds and directory files.

R-C1's poll settings, R-I6's Graph credentials, presets and the credentials an
enabled polled connector needs. ``gateway.api.connectors``, ``gateway.config``
and ``gateway.directory_file`` all call these, so a connector one of them
accepts, the others accept as well. Each problem is ``(field, "R-…: message")``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable

from gateway.directory import presets
from gateway.model import POLL_FIELDS, POLLED_PROTOCOLS, Connector

MAX_FOLDERS = 100
MAX_SECRET = 4096
_HOST = re.compile(r"[A-Za-z0-9._:-]{1,253}")                  # a name or an IP address
_GUID = re.compile(r"[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")       # a GUID or contoso.onmicrosoft.com
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}")
_HTTPS = re.compile(r"https://[^\s/?#@]+(/[^\s?#]*)?")


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _printable(limit: int) -> Callable[[Any], bool]:
    """Free text that ends up in a protocol command or a path: no control character, so
    nothing can smuggle a CR LF into an IMAP command."""
    return lambda v: isinstance(v, str) and len(v) <= limit and v.isprintable()


def _blank_or(pattern: re.Pattern) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and (v == "" or bool(pattern.fullmatch(v)))


def _folders(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and 1 <= len(value) <= MAX_FOLDERS
            and len(set(value)) == len(value)
            and all(isinstance(f, str) and f.strip() and len(f) <= 255 and f.isprintable()
                    for f in value))


def _https(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 2048 and bool(_HTTPS.fullmatch(value))


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


# R-C1 poll settings (and R-C4 TLS, R-I6 Graph, R-B5 onboarding): field -> (test, what the
# value must be). The "what" reads after "must be" in every message that uses it.
POLL_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "host": (_blank_or(_HOST), "a host name or IP address (\"\" takes the service's preset)"),
    "port": (_whole(1, 65535), "a port from 1 to 65535"),
    "tls": (lambda v: v in presets.TLS_MODES, f"one of {', '.join(presets.TLS_MODES)}"),
    "folders": (_folders, f"a list of 1 to {MAX_FOLDERS} different folder names, each 1 to 255 "
                "printable characters (R-I5)"),
    "poll_interval": (_whole(10, 86400), "whole seconds from 10 to 86400 (R-I4)"),
    "shared_mailbox": (_printable(254), "the mailbox to open instead of the login's own (at "
                       "most 254 printable characters; \"\" for none)"),
    "tenant_id": (_blank_or(_TENANT), "the Azure tenant: a GUID or a domain like "
                  "contoso.onmicrosoft.com (R-I6)"),
    "application_id": (_blank_or(_GUID), "the Azure application (client) id, a GUID (R-I6)"),
    "certificate_file": (_printable(4096), "the path of a PFX or PEM file (R-I6)"),
    "certificate_thumbprint": (_blank_or(_THUMBPRINT), "the certificate's SHA-1 thumbprint: "
                               "40 hex digits (R-I6)"),
    "authority_host": (_https, "an https:// URL like https://login.microsoftonline.com (msal "
                       "talks to the authority over TLS only, R-I6)"),
    "graph_base_url": (_https, "an https:// URL like https://graph.microsoft.com/v1.0 (R-I6)"),
    "ca_file": (_printable(4096), "the path of a PEM file of CA certificates (R-C4; \"\" for "
                "the system trust store only)"),
    "tls_verify": (_bool, "true or false (false turns certificate checks off, R-C4)"),
    "keep_on_server": (_bool, "true or false (R-B5)"),
    "start_from": (lambda v: v in ("all", "now"), "'all' or 'now' (R-B5)"),
    "idle": (_bool, "true or false (IMAP IDLE between poll rounds)"),
    "move_to": (_printable(1000), "a folder path like \"Processed\" (\"\" to delete, R-B5)"),
}


_SERVER = ("host", "port", "tls")                       # an IMAP / POP3 server's address
_GRAPH = ("tenant_id", "application_id", "certificate_file", "certificate_thumbprint",
          "authority_host", "graph_base_url")


def _a(protocol: str) -> str:
    """The article as the name is spoken: an IMAP, an LMTP, a POP3, a Graph."""
    return f"{'an' if protocol in ('imap', 'lmtp') else 'a'} {protocol}"


def used_settings(protocol: str) -> tuple[str, ...]:
    """The poll settings a protocol uses: Graph is reached at ``graph_base_url`` (no host,
    port or tls), an IMAP / POP3 server has no Azure settings, a pushed mailbox none."""
    if protocol == "graph":
        return tuple(k for k in POLL_FIELDS if k not in _SERVER)
    if protocol in POLLED_PROTOCOLS:
        return tuple(k for k in POLL_FIELDS if k not in _GRAPH)
    return ()


def implied_protocol(service: str, given: str | None) -> tuple[str, tuple[str, str] | None]:
    """R-C1: the protocol ``service`` implies, else the one given (``other``); and the
    (field, message) problem when a given protocol contradicts the preset."""
    implied = presets.protocol_of(service, given or None)
    if service in presets.SERVICES and service != "other" and given and given != implied:
        return implied or "", ("protocol", f"R-C1: service {service!r} implies protocol "
                               f"{implied!r}; leave protocol out, or use service 'other'")
    return implied or "", None


def with_preset(c: Connector, given: Iterable[str] = ()) -> Connector:
    """``presets.apply``, keeping a ``tls`` the admin gave: the preset fills a blank host
    together with its own TLS mode, which must not overrule an explicit choice (the
    port then follows the given mode unless a port was given too)."""
    applied = presets.apply(c)
    if "tls" in given and applied.tls != c.tls:
        port = c.port or presets.default_port(applied.protocol, c.tls)
        applied = dataclasses.replace(applied, tls=c.tls, port=port)
    return applied


def connector_problems(c: Connector, given: Iterable[str] = ()) -> list[tuple[str, str]]:
    """What makes ``c`` (presets applied) unusable, as (field, "R-…: message") pairs.
    ``given`` names the fields the admin wrote: a poll setting written for a pushed
    connector is a mistake worth saying (R-C1: an lmtp connector has no poll settings)."""
    found = [(f, m) for f, m in presets.problems(c)    # an outgoing-only one polls nothing
             if not (c.direction == "outgoing" and f in ("host", "tenant_id", "application_id"))]
    unused = sorted(set(given) & (set(POLL_FIELDS) - set(used_settings(c.protocol))))
    for name in unused:
        found.append((name, f"R-C1: {name} is a poll setting, and {_a(c.protocol or 'push')} "
                      "connector's mail is pushed: remove it (or choose a polled service)"
                      if c.protocol not in POLLED_PROTOCOLS else
                      f"R-C1: {_a(c.protocol)} connector does not use {name}: remove it"))
    if c.protocol == "pop3" and tuple(c.folders) != ("INBOX",):
        found.append(("folders", "R-I5: a POP3 mailbox has only INBOX; folders are for imap "
                      "and graph connectors"))
    if c.move_to and c.protocol == "pop3":
        found.append(("move_to", "R-B5: a POP3 mailbox has no folders to move mail to; use "
                      "keep_on_server, or an imap connector"))
    if c.move_to and c.move_to.strip("/").casefold() in \
            {f.strip("/").casefold() for f in c.folders}:
        found.append(("move_to", f"R-B5: move_to {c.move_to!r} is one of the polled folders: "
                      "moved mail would be fetched again; name another folder"))
    if c.protocol == "graph" and c.certificate_file.lower().endswith((".pem", ".key")) \
            and not c.certificate_thumbprint:
        found.append(("certificate_thumbprint", "R-I6: a PEM certificate_file needs "
                      "certificate_thumbprint (a PFX file needs certificate_password instead)"))
    return found


def credential_problems(c: Connector, username: str | None, password: str | None,
                        secrets: dict) -> list[tuple[str, str]]:
    """What an ENABLED polled connector needs to log in (R-C1, R-I6). A disabled one may
    lack it (it polls nothing), and the directory file never holds credentials."""
    if not c.enabled or c.protocol not in POLLED_PROTOCOLS or c.direction == "outgoing":
        return []
    found = []
    if c.protocol in ("imap", "pop3") and not (username and password):
        field = "password" if username else "username"
        found.append((field, f"R-C1: an enabled {c.protocol} connector logs in: set username "
                      "and password (or create it with enabled false)"))
    if c.protocol == "graph":
        secret = secrets.get("client_secret")
        if not (secret or c.certificate_file):
            found.append(("client_secret", "R-I6: an enabled graph connector needs "
                          "client_secret, or certificate_file (a PFX with certificate_password, "
                          "or a PEM key with certificate_thumbprint)"))
        elif secret and c.certificate_file:
            found.append(("certificate_file", "R-I6: give client_secret or certificate_file, "
                          "not both (clear the other with null or \"\")"))
    return found

# -- writing ------------------------------------------------------------------------------
