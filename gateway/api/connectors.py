"""``/api/v1/connectors``: the mailboxes the gateway serves (R-C1..R-C3, R-C5).

Only push (``lmtp``) connectors exist so far; polled services come with their
own issue. The password is stored (a mailbox login needs it back) but never
leaves through the API: a connector answers ``password_set`` instead, and the
history records a changed password as ``***`` (R-C5). Every change rebuilds the
RCPT snapshot at once, so a new address receives mail from the next RCPT.
"""
from __future__ import annotations

import re

from aiohttp import web

from gateway.api.body import (ADDRESS, BOOL, Check, actor, directory_errors, json_object,
                              optional, shape_error, text)
from gateway.api.errors import api_error
from gateway.directory_ops import ConnectorEntry, DirectoryOps
from gateway.model import Connector

MAX_PASSWORD = 50           # R-C1
MAX_ALIASES = 100
SERVICES = ("lmtp",)        # the polled services of R-C1 come with R-C3's issue
DIRECTIONS = ("incoming", "outgoing", "both")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _address(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 254 and bool(ADDRESS.fullmatch(value))


SPEC: dict[str, Check] = {
    "name": (lambda v: isinstance(v, str) and bool(_NAME.fullmatch(v)),
             "letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)"),
    "service": (lambda v: v in SERVICES, f"one of {', '.join(SERVICES)} in this release"),
    "protocol": (lambda v: v == "lmtp", "'lmtp' (implied by the service)"),
    "direction": (lambda v: v in DIRECTIONS, f"one of {', '.join(DIRECTIONS)}"),
    "primary_address": (_address, "an address like support@example.com (no plus tag)"),
    "aliases": (lambda v: isinstance(v, list) and len(v) <= MAX_ALIASES
                and all(_address(a) for a in v),
                f"a list of at most {MAX_ALIASES} addresses (no plus tags)"),
    "enabled": BOOL,
    "route_on_envelope": BOOL,
    "smtp_host": (lambda v: isinstance(v, str) and len(v) <= 253 and " " not in v,
                  "a host name for outgoing mail, or \"\" for the system default gateway"),
    "smtp_port": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535,
                  "a port from 1 to 65535"),
    "smtp_tls": (lambda v: v in ("none", "starttls", "implicit"),
                 "one of none, starttls, implicit"),
    "username": (optional(text(254)), "a string or null"),
    "password": (optional(text(10_000)), "a string or null"),
}


def connector_json(entry: ConnectorEntry) -> dict:
    """R-C1 fields under their API names; ``password_set`` in place of the password."""
    c = entry.connector
    return {"name": c.name, "service": c.service, "direction": c.direction,
            "protocol": c.protocol, "primary_address": c.primary_address,
            "aliases": list(c.aliases), "enabled": c.enabled,
            "route_on_envelope": c.route_on_envelope, "smtp_host": c.smtp_host,
            "smtp_port": c.smtp_port, "smtp_tls": c.smtp_tls, "username": entry.username,
            "password_set": bool(entry.password)}


def _invalid(body: dict, required: tuple[str, ...] = ()) -> web.Response | None:
    problem = shape_error(body, "R-C1", SPEC, required)
    if problem is not None:
        return problem
    password = body.get("password")
    if isinstance(password, str) and len(password) > MAX_PASSWORD:
        return api_error(422, "rule_violation", f"R-C1: password is at most {MAX_PASSWORD} "
                         f"characters (got {len(password)})", "password")
    return None


def _credentials(body: dict) -> dict:
    """An empty string clears a credential like null does."""
    return {k: body[k] or None for k in ("username", "password") if k in body}


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    def directory(request: web.Request) -> DirectoryOps:
        return DirectoryOps(request.app[key].ops)

    async def found(request: web.Request) -> ConnectorEntry | web.Response:
        name = request.match_info["name"]
        entry = await directory(request).connector(name)
        return entry or api_error(404, "not_found", f"no connector {name!r}", "name")

    async def list_all(request: web.Request) -> web.Response:
        entries = await directory(request).connectors()
        return web.json_response({"connectors": [connector_json(e) for e in entries]})

    @directory_errors
    async def create(request: web.Request) -> web.Response:
        body, who = await json_object(request), actor(request)
        for answer in (body, who):
            if isinstance(answer, web.Response):
                return answer
        problem = _invalid(body, ("name", "primary_address"))
        if problem is not None:
            return problem
        connector = Connector(
            name=body["name"], service=body.get("service", "lmtp"),
            primary_address=body["primary_address"], aliases=tuple(body.get("aliases", [])),
            enabled=body.get("enabled", True), direction=body.get("direction", "incoming"),
            route_on_envelope=body.get("route_on_envelope", False),
            smtp_host=body.get("smtp_host", ""), smtp_port=body.get("smtp_port", 587),
            smtp_tls=body.get("smtp_tls", "starttls"))
        entry = await directory(request).create_connector(
            ConnectorEntry(connector, **_credentials(body)), who)
        return web.json_response(connector_json(entry), status=201)

    async def one(request: web.Request) -> web.Response:
        entry = await found(request)
        return entry if isinstance(entry, web.Response) else web.json_response(
            connector_json(entry))

    @directory_errors
    async def update(request: web.Request) -> web.Response:
        """Only the fields given change. The name is the connector's key: fixed."""
        name = request.match_info["name"]
        body, who = await json_object(request), actor(request)
        for answer in (body, who):
            if isinstance(answer, web.Response):
                return answer
        problem = _invalid(body)
        if problem is not None:
            return problem
        if body.pop("name", name) != name:
            return api_error(422, "rule_violation", "R-C1: a connector's name is fixed; "
                             "create a new connector instead", "name")
        body.pop("protocol", None)
        fields = {k: v for k, v in body.items() if k not in ("username", "password")}
        entry = await directory(request).update_connector(
            name, {**fields, **_credentials(body)}, who)
        return web.json_response(connector_json(entry))

    @directory_errors
    async def delete(request: web.Request) -> web.Response:
        who = actor(request)
        if isinstance(who, web.Response):
            return who
        await directory(request).delete_connector(request.match_info["name"], who)
        return web.Response(status=204)

    async def test(request: web.Request) -> web.Response:
        """R-C3. A push connector has no server to log in to: its test always passes."""
        entry = await found(request)
        if isinstance(entry, web.Response):
            return entry
        if entry.connector.protocol == "lmtp":
            return web.json_response({"ok": True,
                                      "detail": "lmtp: mail is pushed; nothing to connect to"})
        return api_error(422, "rule_violation", f"R-C3: testing {entry.connector.service!r} "
                         "connectors is not available in this release", "service")

    router.add_get("/api/v1/connectors", list_all)
    router.add_post("/api/v1/connectors", create)
    router.add_get("/api/v1/connectors/{name}", one)
    router.add_patch("/api/v1/connectors/{name}", update)
    router.add_delete("/api/v1/connectors/{name}", delete)
    router.add_post("/api/v1/connectors/{name}/test", test)
