"""``/api/v1/connectors``: the mailboxes the gateway serves (R-C1..R-C5, R-I6, R-B5).

A connector names its ``service``; the service's preset (``gateway.presets``) fills
the protocol, host, port and TLS the admin left out, and ``other`` must give them.
Pushed (``lmtp``) connectors have no poll settings; polled ones (IMAP, POP3, Graph)
show theirs. The password and the Graph secrets are stored (a login needs them back)
but never leave through the API: a connector answers ``password_set``,
``client_secret_set`` and ``certificate_password_set`` instead, and the history
records a changed secret as ``***`` (R-C5). Every change rebuilds the RCPT snapshot
at once, so a new address receives mail from the next RCPT.

R-C3: ``POST …/test`` logs in for real and keeps the result; enabling an incoming
polled connector whose last test failed needs ``"force": true`` in the PATCH body.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re

from aiohttp import web

from gateway import probe
from gateway.api.body import (BOOL, Check, actor, directory_errors, json_object, optional,
                              shape_error, text)
from gateway.api.errors import api_error
from gateway.directory import presets
from gateway.directory.addresses import is_connector_address
from gateway.directory.connector_checks import (MAX_SECRET, POLL_CHECKS, connector_problems,
                                                credential_problems, implied_protocol, with_preset)
from gateway.directory.ops import DirectoryOps
from gateway.model import SECRET_FIELDS, Connector, ConnectorEntry

POLL_WAIT = 120.0            # seconds a "poll now" request waits for its round

MAX_PASSWORD = 50           # R-C1
MAX_ALIASES = 100
SERVICES = presets.SERVICES
DIRECTIONS = ("incoming", "outgoing", "both")
CREDENTIALS = ("username", "password")
# Where each stored secret is sent. An update that points one of these elsewhere must
# give the secret again: otherwise anyone holding the admin token could re-point a
# connector at a server of theirs and have the gateway log in there with it.
SENT_TO = {"password": ("host", "port", "tls", "smtp_host", "smtp_port", "smtp_tls"),
           # the secret goes to the authority, the access token it buys to graph_base_url
           "client_secret": ("authority_host", "tenant_id", "application_id",
                             "graph_base_url"),
           "certificate_password": ("authority_host", "tenant_id", "application_id",
                                    "graph_base_url")}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


SPEC: dict[str, Check] = {
    "name": (lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v)),
             "letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)"),
    "service": (lambda v: v in SERVICES, f"one of {', '.join(SERVICES)}"),
    "protocol": (lambda v: v in presets.PROTOCOLS,
                 f"one of {', '.join(presets.PROTOCOLS)} (implied by every service but "
                 "'other')"),
    "direction": (lambda v: v in DIRECTIONS, f"one of {', '.join(DIRECTIONS)}"),
    "primary_address": (is_connector_address,
                        "an address like support@example.com (no plus tag)"),
    "aliases": (lambda v: isinstance(v, list) and len(v) <= MAX_ALIASES
                and all(is_connector_address(a) for a in v),
                f"a list of at most {MAX_ALIASES} addresses (no plus tags)"),
    "enabled": BOOL,
    "route_on_envelope": BOOL,
    "smtp_host": (lambda v: isinstance(v, str) and len(v) <= 253 and " " not in v,
                  "a host name for outgoing mail, or \"\" for the system default gateway"),
    "smtp_port": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535,
                  "a port from 1 to 65535"),
    "smtp_tls": (lambda v: v in presets.TLS_MODES, f"one of {', '.join(presets.TLS_MODES)}"),
    "username": (optional(text(254)), "a string or null"),
    "password": (optional(text(10_000)), "a string or null"),
    **POLL_CHECKS,
    **{name: (optional(text(MAX_SECRET)), f"a string of at most {MAX_SECRET} characters, or "
              "null (R-I6)") for name in SECRET_FIELDS},
}
# PATCH only: R-C3 "unless forced"
PATCH_SPEC: dict[str, Check] = {**SPEC, "force": (BOOL[0], "true or false (R-C3: enable even "
                                                  "though the last test failed)")}


def connector_json(entry: ConnectorEntry) -> dict:
    """R-C1 fields under their API names; ``*_set`` flags in place of the secrets. A pushed
    connector answers exactly the fields it always did; a polled one adds its poll
    settings and what an admin should know about them (``warnings``)."""
    c = entry.connector
    answer = {"name": c.name, "service": c.service, "direction": c.direction,
              "protocol": c.protocol, "primary_address": c.primary_address,
              "aliases": list(c.aliases), "enabled": c.enabled,
              "route_on_envelope": c.route_on_envelope, "smtp_host": c.smtp_host,
              "smtp_port": c.smtp_port, "smtp_tls": c.smtp_tls, "username": entry.username,
              "password_set": bool(entry.password)}
    if c.polled:
        answer.update(c.poll_settings())
        answer.update({f"{name}_set": bool(entry.secret(name)) for name in SECRET_FIELDS})
        answer["warnings"] = warnings(c)
    return answer


def warnings(c: Connector) -> list[str]:
    """Accepted but risky settings, said where the admin looks (the gateway also logs
    R-C4's at every start)."""
    found = []
    if not c.tls_verify:
        found.append("R-C4: tls_verify is false: the server's certificate is not checked, so "
                     "anyone on the path can pose as it and read the login")
    if c.tls == "none" and c.protocol in ("imap", "pop3"):
        found.append("tls is 'none': the login and the mail travel unencrypted")
    return found


def _invalid(body: dict, spec: dict[str, Check], required: tuple[str, ...] = ()
             ) -> web.Response | None:
    problem = shape_error(body, "R-C1", spec, required)
    if problem is not None:
        return problem
    password = body.get("password")
    if isinstance(password, str) and len(password) > MAX_PASSWORD:
        return api_error(422, "rule_violation", f"R-C1: password is at most {MAX_PASSWORD} "
                         f"characters (got {len(password)})", "password")
    return None


def _credentials(body: dict) -> dict:
    """An empty string clears a credential or a secret like null does."""
    return {k: body[k] or None for k in (*CREDENTIALS, *SECRET_FIELDS) if k in body}


def _settings(body: dict) -> dict:
    """The connector fields of a body (not its credentials, not the protocol, which
    ``implied_protocol`` decides), lists as tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()
            if k not in CREDENTIALS and k not in SECRET_FIELDS and k != "protocol"}


def _refill(old: Connector, new: Connector, given: set[str]) -> Connector:
    """Values the old preset filled follow a change: the hosts follow the service
    (gmail_imap → o365_imap moves them too), the port follows the protocol and tls.
    Values the admin gave stay."""
    preset = presets.apply(Connector(name=old.name, service=old.service, primary_address="",
                                     direction=old.direction, tls=old.tls))
    reset: dict = {}
    for name in ("host", "smtp_host"):
        if new.service != old.service and name not in given and getattr(old, name) \
                and getattr(old, name) == getattr(preset, name):
            reset[name] = ""
    if "port" not in given and old.port == presets.default_port(old.protocol, old.tls):
        reset["port"] = 0
    return dataclasses.replace(new, **reset)


def _rule_problem(entry: ConnectorEntry, given: set[str]) -> web.Response | None:
    """The first R-C1 / R-I6 / R-B5 problem of the connector as it would be stored."""
    c = entry.connector
    found = connector_problems(c, given)
    found += credential_problems(c, entry.username, entry.password, entry.secrets)
    if c.protocol != "graph":
        found += [(name, f"R-I6: {name} is for graph connectors only")
                  for name in SECRET_FIELDS if entry.secret(name) and name in given]
    if not found:
        return None
    field, message = found[0]
    return api_error(422, "rule_violation", message, field)


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    def directory(request: web.Request) -> DirectoryOps:
        return request.app[key].directory_ops

    async def found(request: web.Request) -> ConnectorEntry | web.Response:
        name = request.match_info["name"]
        entry = await directory(request).connector(name)
        return entry or api_error(404, "not_found", f"no connector {name!r}", "name")

    async def list_all(request: web.Request) -> web.Response:
        entries = await directory(request).connectors()
        return web.json_response({"connectors": [connector_json(e) for e in entries]})

    @directory_errors
    async def create(request: web.Request) -> web.Response:
        """R-C1: the service's preset fills what the body leaves out."""
        body, who = await json_object(request), actor(request)
        for answer in (body, who):
            if isinstance(answer, web.Response):
                return answer
        problem = _invalid(body, SPEC, ("name", "primary_address"))
        if problem is not None:
            return problem
        service = body.get("service", "lmtp")
        protocol, clash = implied_protocol(service, body.get("protocol"))
        if clash is not None:
            return api_error(422, "rule_violation", clash[1], clash[0])
        settings = {**_settings(body), "service": service, "protocol": protocol}
        given = _credentials(body)
        entry = ConnectorEntry(with_preset(Connector(**settings), body),
                               given.get("username"), given.get("password"),
                               {k: v for k, v in given.items() if k in SECRET_FIELDS and v})
        problem = _rule_problem(entry, set(body))
        if problem is not None:
            return problem
        entry = await directory(request).create_connector(entry, who)
        return web.json_response(connector_json(entry), status=201)

    async def one(request: web.Request) -> web.Response:
        entry = await found(request)
        return entry if isinstance(entry, web.Response) else web.json_response(
            connector_json(entry))

    @directory_errors
    async def update(request: web.Request) -> web.Response:
        """Only the fields given change (a new service's preset refills what the old one
        filled). The name is the connector's key: fixed. ``force`` is R-C3's."""
        name = request.match_info["name"]
        body, who = await json_object(request), actor(request)
        for answer in (body, who):
            if isinstance(answer, web.Response):
                return answer
        problem = _invalid(body, PATCH_SPEC)
        if problem is not None:
            return problem
        if body.pop("name", name) != name:
            return api_error(422, "rule_violation", "R-C1: a connector's name is fixed; "
                             "create a new connector instead", "name")
        force = body.pop("force", False)
        old = await found(request)
        if isinstance(old, web.Response):
            return old
        new, problem = _updated(old, body)
        if problem is not None:
            return problem
        changed = {f.name: getattr(new.connector, f.name)
                   for f in dataclasses.fields(Connector) if f.name != "name"
                   and getattr(new.connector, f.name) != getattr(old.connector, f.name)}
        entry = await directory(request).update_connector(
            name, {**changed, **_credentials(body)}, who, force=force)
        return web.json_response(connector_json(entry))

    @directory_errors
    async def delete(request: web.Request) -> web.Response:
        who = actor(request)
        if isinstance(who, web.Response):
            return who
        await directory(request).delete_connector(request.match_info["name"], who)
        return web.Response(status=204)

    async def test(request: web.Request) -> web.Response:
        """R-C3. The answer is 200 whenever the test RAN: ``ok`` false with the server's
        own words in ``detail`` is the mailbox failing, not the request."""
        entry = await found(request)
        if isinstance(entry, web.Response):
            return entry
        ok, detail, at = await probe.test_and_record(request.app[key].directory_ops, entry)
        return web.json_response({"ok": ok, "detail": detail, "tested_at": at})

    async def poll(request: web.Request) -> web.Response:
        """R-I4 "poll now": run one round of the connector's poller and answer its status
        (200 also when the round failed: ``state`` and ``last_error`` say how)."""
        entry = await found(request)
        if isinstance(entry, web.Response):
            return entry
        try:
            status = await request.app[key].pollers.poll(entry.connector.name, POLL_WAIT)
        except LookupError:
            return api_error(409, "conflict", f"R-I4: connector {entry.connector.name!r} is "
                             "not polled now (it must be enabled, incoming, and imap, pop3 "
                             "or graph)", "name")
        except asyncio.TimeoutError:
            return api_error(504, "timeout", f"the round did not end within {POLL_WAIT:.0f} "
                             "s; it goes on in the background (see /readyz)")
        return web.json_response(status.as_json())

    router.add_get("/api/v1/connectors", list_all)
    router.add_post("/api/v1/connectors", create)
    router.add_get("/api/v1/connectors/{name}", one)
    router.add_patch("/api/v1/connectors/{name}", update)
    router.add_delete("/api/v1/connectors/{name}", delete)
    router.add_post("/api/v1/connectors/{name}/test", test)
    router.add_post("/api/v1/connectors/{name}/poll", poll)


def _updated(old: ConnectorEntry, body: dict
             ) -> tuple[ConnectorEntry, web.Response | None]:
    """``old`` with ``body`` applied and the (new) service's preset, and its first problem.
    Checked here, before the write, on the connector as it would be stored."""
    c = old.connector
    service = body.get("service", c.service)
    protocol, clash = implied_protocol(service, body.get("protocol", c.protocol
                                                         if service == "other" else None))
    if clash is not None:
        return old, api_error(422, "rule_violation", clash[1], clash[0])
    merged = dataclasses.replace(c, **_settings(body), protocol=protocol)
    merged = with_preset(_refill(c, merged, set(body)), body)
    for secret, stored in (("password", old.password),
                           *((name, old.secrets.get(name)) for name in SECRET_FIELDS)):
        moved = [f for f in SENT_TO[secret]       # "" or 0: no server, nothing is sent
                 if getattr(merged, f) != getattr(c, f) and getattr(merged, f)]
        if stored and moved and secret not in body:
            return old, api_error(
                422, "rule_violation", f"R-C1: changing {', '.join(moved)} would send the "
                f"stored {secret} to another server; give {secret} again in the same "
                "request", secret)
    given = _credentials(body)
    new = ConnectorEntry(merged, given.get("username", old.username),
                         given.get("password", old.password),
                         {**old.secrets, **{k: v for k, v in given.items()
                                            if k in SECRET_FIELDS}})
    return new, _rule_problem(new, set(body))
