"""API errors as values: ``{"error": {"code", "message", "field"}}`` (SPEC §5.3)."""
from __future__ import annotations

from aiohttp import web


def api_error(status: int, code: str, message: str, field: str | None = None,
              headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "field": field}},
                             status=status, headers=headers)
