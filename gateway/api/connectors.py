"""``/api/v1/connectors``: the small directory API intake needs (R-C1).

Only push (``lmtp``) connectors exist so far; polled services and routes come
with their own issues. Every change rebuilds the RCPT snapshot at once.
"""
from __future__ import annotations

import re

from aiohttp import web

from gateway.api.errors import api_error
from gateway.model import Connector

_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+|[^@\s<>]+@[A-Za-z0-9-]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def connector_json(c: Connector) -> dict:
    return {"name": c.name, "service": c.service, "direction": c.direction,
            "protocol": c.protocol, "primary_address": c.primary_address,
            "aliases": list(c.aliases), "enabled": c.enabled}


def parse_connector(body: object) -> Connector | web.Response:
    """Validate a POSTed connector; an error response names the field and the rule."""
    if not isinstance(body, dict):
        return api_error(400, "invalid_body", "send a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return api_error(422, "invalid", "R-C1: name is required: letters, digits, '_', '.',"
                         " '-' (at most 64)", "name")
    service = body.get("service", "lmtp")
    if service != "lmtp":
        return api_error(422, "invalid", "R-C1: only service 'lmtp' is available in this "
                         "release", "service")
    primary = body.get("primary_address")
    if not isinstance(primary, str) or not _ADDRESS.fullmatch(primary):
        return api_error(422, "invalid", "R-C1: primary_address must be an address like "
                         "support@example.com", "primary_address")
    aliases = body.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and _ADDRESS.fullmatch(a)
                                                for a in aliases):
        return api_error(422, "invalid", "R-C1: aliases must be a list of addresses",
                         "aliases")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        return api_error(422, "invalid", "enabled must be true or false", "enabled")
    unknown = set(body) - {"name", "service", "primary_address", "aliases", "enabled"}
    if unknown:
        field = sorted(unknown)[0]
        return api_error(422, "unknown_field", f"unknown field {field!r}", field)
    return Connector(name=name, service=service, primary_address=primary,
                     aliases=tuple(aliases), enabled=enabled)


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    async def list_all(request: web.Request) -> web.Response:
        items = await request.app[key].store.connectors()
        return web.json_response({"connectors": [connector_json(c) for c in items]})

    async def create(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return api_error(400, "invalid_json", "the body is not JSON")
        connector = parse_connector(body)
        if isinstance(connector, web.Response):
            return connector
        gateway = request.app[key]
        for address in connector.addresses():
            owner = gateway.addresses.owner(address)
            if owner is not None and owner != connector.name:
                return api_error(409, "conflict", f"R-C1: {address} already belongs to "
                                 f"connector {owner!r}", "primary_address")
        if connector.name in gateway.directory.connectors:
            return api_error(409, "conflict", f"connector {connector.name!r} exists", "name")
        await gateway.ops.add_connector(connector)
        return web.json_response(connector_json(connector), status=201)

    async def one(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = [c for c in await request.app[key].store.connectors() if c.name == name]
        if not found:
            return api_error(404, "not_found", f"no connector {name!r}", "name")
        return web.json_response(connector_json(found[0]))

    async def delete(request: web.Request) -> web.Response:
        gateway = request.app[key]
        if not await gateway.ops.delete_connector(request.match_info["name"]):
            return api_error(404, "not_found", f"no connector {request.match_info['name']!r}",
                             "name")
        return web.Response(status=204)

    router.add_get("/api/v1/connectors", list_all)
    router.add_post("/api/v1/connectors", create)
    router.add_get("/api/v1/connectors/{name}", one)
    router.add_delete("/api/v1/connectors/{name}", delete)
