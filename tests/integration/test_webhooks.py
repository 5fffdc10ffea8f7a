"""R-X1 webhooks: signed, in order, retried until the receiver takes them."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from aiohttp import web

from gateway.config import Webhook
from tests.conftest import free_port
from tests.e2e.helpers import deliver, mail

SECRET = "s3cret-for-tests"


async def test_webhook_receiver_verifies_signatures_and_gets_events_in_order(start_gateway):
    received: list[dict] = []
    attempts = {"n": 0}
    done = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        signed = request.headers["X-Mailgate-Timestamp"].encode() + b"." + body
        expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(request.headers["X-Mailgate-Signature"], expected)
        attempts["n"] += 1
        if attempts["n"] == 1:
            return web.Response(status=503)     # the first try fails: must be retried
        event = json.loads(body)
        assert request.headers["X-Mailgate-Event-Id"] == str(event["id"])
        received.append(event)
        if event["type"] == "email.appended":
            done.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        gw = await start_gateway(webhooks=(Webhook(url=f"http://127.0.0.1:{port}/hook",
                                                   secret=SECRET),))
        for sender in gw.webhooks:
            sender.backoff_start = 0.05
        await deliver(gw, mail(to=["support@example.test"], subject="Hook me"))
        await deliver(gw, mail(to=["support@example.test"], subject="Re: [1-T] Hook me",
                               body="more"))
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await runner.cleanup()
    assert [(e["type"], e["ref"]) for e in received] == [("workitem.created", "1-T"),
                                                         ("email.appended", "1-T")]
    assert received[0]["id"] < received[1]["id"]
    assert attempts["n"] == 3          # one refused try, retried, then each event once
