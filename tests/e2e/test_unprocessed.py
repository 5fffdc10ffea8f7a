"""R-U1: nothing is dropped; unprocessed mail is listed with its reason and can be re-run."""
from __future__ import annotations

import aiohttp

from gateway.config import BootstrapConnector
from gateway.model import Route
from tests.conftest import ADMIN_TOKEN
from tests.e2e.helpers import deliver, mail
from tests.wire import WireClient

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SUPPORT = [BootstrapConnector(name="support", primary_address="support@corp.test",
                              aliases=("help@corp.test",))]


async def test_r_u1_unprocessed_mail_is_listed_and_re_run_after_a_route_fix(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    [copy] = await deliver(gw, mail(to=["help@corp.test"]))
    assert (copy.outcome, copy.reason) == ("unprocessed", "alias_without_route")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}") as http:
        async with http.get("/api/v1/unprocessed", headers=AUTH) as r:
            listed = (await r.json())["emails"]
        assert [(e["id"], e["reason"]) for e in listed] == [(copy.id, "alias_without_route")]
        await gw.add_route(Route(id=0, name="help", connector="support",
                                 email_address="help@corp.test", order=0))
        async with http.post(f"/api/v1/unprocessed/{copy.id}/reprocess", headers=AUTH) as r:
            assert r.status == 202
        await gw.pipeline.drain()
        again = await gw.store.email(copy.id)
        assert again.outcome == "created"
        async with http.post(f"/api/v1/unprocessed/{copy.id}/reprocess", headers=AUTH) as r:
            body = await r.json()
        assert r.status == 409 and "R-U1" in body["error"]["message"]


async def test_r_u1_mime_bomb_is_stored_and_unprocessed_unparseable(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    depth = 2000
    head = (b"From: x@customer.test\r\nTo: support@corp.test\r\nSubject: bomb\r\n"
            b"Message-ID: <bomb@customer.test>\r\n")
    parts = b"".join(b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n"
                     % (i, i) for i in range(depth))
    raw = head + b"MIME-Version: 1.0\r\n" + parts + b"\r\nend\r\n"
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO x")
    _, replies = await client.transaction("x@customer.test", ["support@corp.test"], raw)
    await client.close()
    assert [r.code for r in replies] == [250]
    await gw.pipeline.drain()
    [copy] = await gw.store.emails_by_message_id("<bomb@customer.test>")
    assert (copy.outcome, copy.reason) == ("unprocessed", "unparseable")
    assert await gw.store.raw(copy.id) == raw


async def test_restart_resumes_the_pipeline_from_the_journal(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    await gw.pipeline.stop()                      # as if the process died before deciding
    message = mail(to=["support@corp.test"])
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO x")
    from tests.e2e.helpers import WIRE
    _, replies = await client.transaction("c@customer.test", ["support@corp.test"],
                                          message.as_bytes(policy=WIRE))
    await client.close()
    assert [r.code for r in replies] == [250]
    [journaled] = await gw.store.emails_by_message_id(message["Message-ID"])
    assert journaled.state == "journaled" and journaled.outcome is None
    await gw.stop()
    again = await start_gateway(connectors=SUPPORT)
    await again.pipeline.drain()
    [copy] = await again.store.emails_by_message_id(message["Message-ID"])
    assert (copy.state, copy.outcome) == ("done", "created")


async def test_a_copy_that_breaks_a_stage_is_isolated_and_the_rest_go_on(start_gateway,
                                                                         monkeypatch):
    from gateway.pipeline import match as match_module
    original = match_module.Match.run

    async def fragile(self, mail_view, ctx):
        if mail_view.subject == "poison":
            raise RuntimeError("a bug in a stage")
        return await original(self, mail_view, ctx)

    monkeypatch.setattr(match_module.Match, "run", fragile)
    gw = await start_gateway(connectors=SUPPORT)
    await gw.pipeline.stop()        # journal three copies, then process them as one batch
    messages = [mail(to=["support@corp.test"], subject=s, body=s) for s in
                ("before", "poison", "after")]
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO x")
    from tests.e2e.helpers import WIRE
    for m in messages:
        await client.transaction("c@customer.test", ["support@corp.test"], m.as_bytes(policy=WIRE))
    await client.close()
    await gw.pipeline.start()
    await gw.pipeline.drain()
    outcomes = [(await gw.store.emails_by_message_id(m["Message-ID"]))[0] for m in messages]
    assert [(c.outcome, c.reason) for c in outcomes] == [
        ("created", None), ("unprocessed", "internal_error"), ("created", None)]
    assert "a bug in a stage" in outcomes[1].trace[0]["reason"]


async def test_r_u1_unprocessed_mail_can_be_attached_or_used_to_create(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    item = await gw.create_workitem(kind="Ticket", connector="support")
    await gw.transition(item.ref, "WAITING", "more_info")
    [first] = await deliver(gw, mail(to=["help@corp.test"], subject="one"))
    [second] = await deliver(gw, mail(to=["help@corp.test"], subject="two", body="x"))
    assert first.outcome == second.outcome == "unprocessed"
    fallback = next(r for r in gw.directory.routes["support"].candidates("support@corp.test")
                    if r.fallback)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}") as http:
        async with http.post(f"/api/v1/unprocessed/{first.id}/attach",
                             json={"ref": item.ref}, headers=AUTH) as r:
            body = await r.json()
        assert body["targets"] == [{"ref": item.ref, "action": "appended"}]
        assert (await gw.workitem(item.ref)).state == "TO_DO"          # R-E2 applies
        async with http.post(f"/api/v1/unprocessed/{second.id}/create",
                             json={"route_id": fallback.id}, headers=AUTH) as r:
            created = await r.json()
        assert created["outcome"] == "created"
        async with http.post(f"/api/v1/unprocessed/{second.id}/create",
                             json={"route_id": fallback.id}, headers=AUTH) as r:
            assert r.status == 409                                       # no longer unprocessed
        async with http.post(f"/api/v1/unprocessed/{first.id}/attach",
                             json={"ref": 5}, headers=AUTH) as r:
            assert r.status == 422
    record = await gw.store.email(first.id)
    assert record.outcome == "appended" and record.trace[-1]["stage"] == "host"
