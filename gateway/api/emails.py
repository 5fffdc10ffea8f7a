"""``/api/v1/emails``: find stored copies by Message-ID, read one, fetch its raw bytes."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from aiohttp import web

from gateway.api.body import paging
from gateway.api.errors import api_error
from gateway.mail_summary import header_summary
from gateway.model import EmailRecord
from storage.base import Store


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds")


async def summary_of(store: Store, record: EmailRecord) -> dict:
    """The headers shown: stored with the decision; for a copy still waiting (or decided
    by an earlier release) made now, bounded, on a thread: never on the event loop."""
    if record.summary is not None:
        return record.summary
    return await asyncio.to_thread(header_summary, await store.raw(record.id) or b"")


async def email_json(store: Store, record: EmailRecord, *, detail: bool = False) -> dict:
    summary = await summary_of(store, record)
    body = {
        "id": record.id,
        "message_id": record.message_id,
        "subject": summary.get("subject"),
        "connector": record.connector,
        "direction": record.direction,
        "source": record.source,
        "state": record.state,
        "outcome": record.outcome,
        "reason": record.reason,
        "targets": record.targets,
        "received_at": _iso(record.received_at),
        "size": record.size,
        "envelope": {"mail_from": record.mail_from, "rcpt_to": record.rcpt_to},
    }
    if record.folder_path is not None:
        body["folder_path"] = record.folder_path
    if detail:
        body["peer"] = record.peer
        body["helo"] = record.helo
        body["headers"] = [{"name": n, "value": v} for n, v in summary.get("headers", [])]
        body["trace"] = record.trace
    return body


def _email_id(request: web.Request) -> int | None:
    """The id in the path, or None when it cannot name a row (SQLite ids are 64-bit)."""
    text = request.match_info["id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    async def find(request: web.Request) -> web.Response:
        message_id = request.query.get("message_id")
        if not message_id:
            return api_error(400, "missing_parameter",
                             "give ?message_id=<id@host> (angle brackets optional)",
                             field="message_id")
        if not message_id.startswith("<"):
            message_id = f"<{message_id}>"
        store = request.app[key].store
        records = await store.emails_by_message_id(message_id)
        items = [await email_json(store, r) for r in records]
        return web.json_response({"emails": items})

    async def one(request: web.Request) -> web.Response:
        email_id = _email_id(request)
        store = request.app[key].store
        record = await store.email(email_id) if email_id is not None else None
        if record is None:
            return api_error(404, "not_found", f"no email {request.match_info['id']}", "id")
        return web.json_response(await email_json(store, record, detail=True))

    async def raw(request: web.Request) -> web.Response:
        email_id = _email_id(request)
        data = await request.app[key].store.raw(email_id) if email_id is not None else None
        if data is None:
            return api_error(404, "not_found", f"no email {request.match_info['id']}", "id")
        return web.Response(body=data, content_type="message/rfc822")

    async def unprocessed(request: web.Request) -> web.Response:
        page = paging(request)
        if isinstance(page, web.Response):
            return page
        after, limit = page
        store = request.app[key].store
        records = await store.unprocessed(limit, after)
        items = [await email_json(store, r) for r in records]
        return web.json_response({"emails": items})

    async def reprocess(request: web.Request) -> web.Response:
        email_id = _email_id(request)
        gateway = request.app[key]
        if email_id is None or not await gateway.pipeline.reprocess(email_id):
            return api_error(409, "not_unprocessed", "R-U1: only an unprocessed incoming email"
                             " can be re-run", "id")
        return web.json_response({"id": email_id, "state": "journaled"}, status=202)

    async def place(request: web.Request, **target) -> web.Response:
        email_id = _email_id(request)
        gateway = request.app[key]
        try:
            verdict = await gateway.pipeline.place(email_id if email_id is not None else -1,
                                                   **target)
        except LookupError as exc:
            what = str(exc).strip("'")
            field = what if what in ("ref", "route_id") else "id"
            return api_error(404 if field == "id" else 422, "not_found",
                             f"R-U1: no such {field}", field)
        except ValueError as exc:
            return api_error(409, "not_unprocessed", f"R-U1: {exc}", "id")
        return web.json_response({"id": email_id, "outcome": verdict.outcome,
                                  "reason": verdict.reason or None,
                                  "targets": verdict.targets})

    async def body_of(request: web.Request, field: str, kind: type) -> object:
        try:
            body = await request.json()
        except ValueError:
            return api_error(400, "invalid_json", "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get(field), kind) \
                or isinstance(body.get(field), bool) or set(body) != {field}:
            return api_error(422, "invalid", f"send {{\"{field}\": ...}} only", field)
        return body[field]

    async def attach(request: web.Request) -> web.Response:
        ref = await body_of(request, "ref", str)
        return ref if isinstance(ref, web.Response) else await place(request, ref=ref)

    async def create(request: web.Request) -> web.Response:
        route_id = await body_of(request, "route_id", int)
        return route_id if isinstance(route_id, web.Response) else \
            await place(request, route_id=route_id)

    router.add_post("/api/v1/unprocessed/{id}/attach", attach)
    router.add_post("/api/v1/unprocessed/{id}/create", create)
    router.add_get("/api/v1/unprocessed", unprocessed)
    router.add_post("/api/v1/unprocessed/{id}/reprocess", reprocess)
    router.add_get("/api/v1/emails", find)
    router.add_get("/api/v1/emails/{id}", one)
    router.add_get("/api/v1/emails/{id}/raw", raw)
