"""``/api/v1/events`` (R-X1) and ``/api/v1/settings`` (SPEC §5.3)."""
from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from gateway.api.body import paging
from gateway.api.errors import api_error


def event_json(event: dict) -> dict:
    return {**event, "created_at": datetime.fromtimestamp(event["created_at"], timezone.utc)
            .isoformat(timespec="milliseconds")}


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    async def feed(request: web.Request) -> web.Response:
        """Events with ``id > after``, oldest first; poll with the last id seen."""
        page = paging(request)
        if isinstance(page, web.Response):
            return page
        after, limit = page
        events = await request.app[key].store.events(after, limit)
        return web.json_response({"events": [event_json(e) for e in events],
                                  "last": events[-1]["id"] if events else after})

    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response(_settings_json(request.app[key]))

    async def patch_settings(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return api_error(400, "invalid_json", "the body is not JSON")
        if not isinstance(body, dict):
            return api_error(400, "invalid_body", "send a JSON object")
        names = {"mode": "matching_mode", "hide_plus_in_from": "hide_plus_in_from"}
        values = {}
        for field, value in body.items():
            if field not in names:
                return api_error(422, "unknown_field", f"unknown field {field!r}", field)
            values[names[field]] = value
        gateway = request.app[key]
        try:
            await gateway.update_settings(**values)
        except ValueError as exc:
            field = "mode" if str(exc) == "matching_mode" else "hide_plus_in_from"
            hint = ("R-M1: mode is one of off, mixed, plus_only" if field == "mode"
                    else "hide_plus_in_from is true or false")
            return api_error(422, "invalid", hint, field)
        return web.json_response(_settings_json(gateway))

    router.add_get("/api/v1/events", feed)
    router.add_get("/api/v1/settings", get_settings)
    router.add_patch("/api/v1/settings", patch_settings)


def _settings_json(gateway) -> dict:
    current = gateway.runtime_settings()
    return {"mode": current["matching_mode"], "hide_plus_in_from": current["hide_plus_in_from"]}
