"""``/api/v1/activity``: the R-C5 history of connectors and routes, oldest first.

``?entity=connector:<name>`` or ``route:<id>`` narrows it to one; ``after``
(an activity id) pages forward like the events feed. A deleted entity's
history stays readable.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from aiohttp import web

from gateway.api.errors import api_error

MAX_LIMIT = 1000
_ENTITY = re.compile(r"connector:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}|route:[0-9]{1,18}")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    async def history(request: web.Request) -> web.Response:
        query = request.query
        unknown = sorted(set(query) - {"entity", "after", "limit"})
        if unknown:
            return api_error(422, "unknown_field", f"unknown parameter {unknown[0]!r}",
                             unknown[0])
        entity = query.get("entity")
        if entity is not None and not _ENTITY.fullmatch(entity):
            return api_error(422, "invalid", "R-C5: entity is connector:<name> or route:<id>",
                             "entity")
        numbers = {}
        for name, default, low, high in (("after", "0", 0, 1 << 62),
                                         ("limit", "100", 1, MAX_LIMIT)):
            raw = query.get(name, default)
            if not re.fullmatch(r"[0-9]{1,19}", raw) or not low <= int(raw) <= high:
                return api_error(422, "invalid", f"{name} must be a number from {low} to "
                                 f"{high}", name)
            numbers[name] = int(raw)
        found = await request.app[key].directory_ops.activity(entity=entity, **numbers)
        return web.json_response({"activity": [
            {"id": line.id, "entity": line.entity, "action": line.action, "actor": line.actor,
             "at": _iso(line.at), "changes": line.changes} for line in found]})

    router.add_get("/api/v1/activity", history)
