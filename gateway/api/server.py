"""The HTTP side: health, readiness, metrics (open) and ``/api/v1`` (bearer token).

aiohttp runs in the gateway's own event loop, so an embedding host needs no
second server framework; see docs/decisions.md.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Awaitable, Callable

from aiohttp import web

from gateway.api import activity, connectors, contacts, emails, events, routes, workitems
from gateway.api.errors import api_error
from gateway.api.host import ApiHost
from gateway.api.openapi import document
from gateway.version import VERSION
from metrics import CONTENT_TYPE_LATEST

log = logging.getLogger("mailgate.http")
QUEUE_REFRESH = 1.0             # seconds between two counts of the queues for /metrics
GATEWAY = web.AppKey("gateway", ApiHost)
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"}


@web.middleware
async def bearer_auth(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    if request.path in OPEN_PATHS:
        return await handler(request)
    expected = request.app[GATEWAY].admin_token
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if not expected or scheme.lower() != "bearer" or \
            not secrets.compare_digest(token.strip().encode(), expected.encode()):
        return api_error(401, "unauthorized",
                         "send the admin token as 'Authorization: Bearer <token>'",
                         headers={"WWW-Authenticate": 'Bearer realm="mailgate"'})
    return await handler(request)


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return api_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        raise


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    checks = {
        "store": await gateway.store.ping(),
        "listeners": {name: l.server.is_serving() for name, l in gateway.listeners.items()},
        "draining": gateway.draining,
        # detail only: a failing mailbox must not take the LMTP front door out of service
        "pollers": gateway.pollers.statuses(),
    }
    ready = checks["store"] and not gateway.draining and all(checks["listeners"].values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(VERSION))


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    metrics = gateway.metrics
    now = time.monotonic()
    # At most one count a second, however often /metrics (open to anyone) is asked.
    if now - metrics.queues_counted_at >= QUEUE_REFRESH:
        metrics.queues_counted_at = now
        try:        # a store that does not answer must not take the metrics with it
            metrics.observe_queues(await asyncio.wait_for(gateway.store.queue_depths(), 2))
        except Exception as exc:
            log.warning("metrics: cannot count the queues: %s", exc)
    body = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(gateway: ApiHost) -> web.Application:
    app = web.Application(middlewares=[json_errors, bearer_auth])
    app[GATEWAY] = gateway
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    emails.register(app.router, GATEWAY)
    connectors.register(app.router, GATEWAY)
    workitems.register(app.router, GATEWAY)
    events.register(app.router, GATEWAY)
    routes.register(app.router, GATEWAY)
    contacts.register(app.router, GATEWAY)
    activity.register(app.router, GATEWAY)
    return app
