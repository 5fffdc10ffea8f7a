"""SPEC §5.4: a host runs Gateway inside its own event loop and hears every event (R-X1)."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway import Gateway
from gateway.model import Route, RouteRules, RuleViolation
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, mail

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_host_loop_gets_callbacks_in_the_same_order_as_the_events_feed(tmp_path):
    async def host() -> tuple[list[dict], list[dict]]:
        gateway = Gateway(make_settings(tmp_path, connectors=DEPARTMENTS,
                                        routes=ACKING_FALLBACKS))
        heard: list[dict] = []
        created = asyncio.Event()

        async def on_event(event: dict) -> None:   # an async callback, as a host would write
            heard.append(event)
            if event["type"] == "email.appended":
                created.set()

        gateway.on_event(on_event)
        await gateway.start()
        try:
            first = mail(subject="Printer")
            await deliver(gateway, first)
            await deliver(gateway, mail(subject="Re: [1-T] Printer", body="Any news?"))
            await asyncio.wait_for(created.wait(), 10)
            async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
                async with http.get("/api/v1/events", params={"after": 0},
                                    headers=AUTH) as r:
                    feed = (await r.json())["events"]
        finally:
            await gateway.stop()
        return heard, feed

    heard, feed = asyncio.run(host())        # the host's own loop, not the test framework's
    assert [e["type"] for e in heard] == ["workitem.created", "outbound.queued",
                                          "email.appended"]
    assert [(e["id"], e["type"], e["ref"]) for e in heard] == \
        [(e["id"], e["type"], e["ref"]) for e in feed]
    assert [e["id"] for e in feed] == sorted(e["id"] for e in feed)


async def test_events_feed_pages_with_after(gateway):
    await deliver(gateway, mail(to=["support@example.test"], subject="One"))
    await deliver(gateway, mail(to=["support@example.test"], subject="Two", body="b"))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        async with http.get("/api/v1/events", params={"limit": 1}, headers=AUTH) as r:
            page = await r.json()
        assert len(page["events"]) == 1
        async with http.get("/api/v1/events", params={"after": page["last"]},
                            headers=AUTH) as r:
            rest = (await r.json())["events"]
        assert rest and all(e["id"] > page["last"] for e in rest)


async def test_r_m1_matching_mode_changes_at_run_time_and_is_validated(gateway):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        async with http.get("/api/v1/settings", headers=AUTH) as r:
            assert await r.json() == {"mode": "off", "hide_plus_in_from": False}
        async with http.patch("/api/v1/settings", json={"mode": "sometimes"},
                              headers=AUTH) as r:
            error = (await r.json())["error"]
            assert r.status == 422 and error["field"] == "mode" and "R-M1" in error["message"]
        async with http.patch("/api/v1/settings", json={"mode": "mixed"}, headers=AUTH) as r:
            assert (await r.json())["mode"] == "mixed"
    assert gateway.pipeline_settings.matching_mode == "mixed"
    assert (await gateway.store.settings())["matching_mode"] == "mixed"   # survives restarts


async def test_r_c5_python_directory_changes_are_checked_and_recorded_like_http(gateway):
    directory = gateway.directory_ops
    route, order = await directory.create_route(
        Route(id=0, name="vip", connector="support", email_address="*", order=0,
              rules=RouteRules(sender_list_includes="*@vip.test")), "python")
    with pytest.raises(RuleViolation) as refused:
        await directory.create_route(Route(id=0, name="open", connector="support",
                                           email_address="*", order=0), "python")
    assert refused.value.rule == "R-R4"
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        async with http.get("/api/v1/activity", params={"entity": f"route:{route.id}"},
                            headers=AUTH) as r:
            [line] = (await r.json())["activity"]
    assert (line["action"], line["actor"]) == ("create", "python")
