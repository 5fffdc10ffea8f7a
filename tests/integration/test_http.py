"""HTTP: health, readiness, metrics, and the emails and connectors API (SPEC §5.3)."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.wire import WireClient, message

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def http(gateway):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session:
        yield session


async def deliver(gateway, rcpts, raw) -> list:
    client = await WireClient.connect(gateway.listeners["lmtp"].port)
    await client.command("LHLO test")
    _, replies = await client.transaction("alice@customer.test", rcpts, raw)
    await client.close()
    return replies


async def test_health_and_readiness_are_open(http):
    async with http.get("/healthz") as r:
        assert r.status == 200
    async with http.get("/readyz") as r:
        body = await r.json()
        assert r.status == 200 and body["ready"] is True
        assert body["checks"]["listeners"] == {"lmtp": True}


async def test_api_needs_the_bearer_admin_token(http):
    async with http.get("/api/v1/emails?message_id=x") as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    async with http.get("/api/v1/emails?message_id=x",
                        headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401


async def test_r_i7_emails_by_message_id_lists_every_copy_with_its_connector(gateway, http):
    raw = message(subject="Printer on fire", message_id="<api-1@customer.test>")
    await deliver(gateway, ["support@example.test", "sales@example.test"], raw)
    async with http.get("/api/v1/emails", params={"message_id": "<api-1@customer.test>"},
                        headers=AUTH) as r:
        body = await r.json()
    assert r.status == 200
    copies = body["emails"]
    assert sorted(c["connector"] for c in copies) == ["sales", "support"]
    for c in copies:
        assert c["subject"] == "Printer on fire"
        assert c["source"] == "lmtp" and c["direction"] == "incoming"
        assert c["message_id"] == "<api-1@customer.test>"
        assert c["envelope"]["mail_from"] == "alice@customer.test"
        assert set(c) >= {"id", "outcome", "reason", "targets", "received_at"}
    # angle brackets are optional in the query
    async with http.get("/api/v1/emails", params={"message_id": "api-1@customer.test"},
                        headers=AUTH) as r:
        assert len((await r.json())["emails"]) == 2


async def test_r_i7_email_detail_and_raw_bytes(gateway, http):
    raw = message(subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=", message_id="<api-2@customer.test>",
                  body="bytes \xe9 stay\r\n").replace(b"\xc3\xa9", b"\xe9")
    [reply] = await deliver(gateway, ["support@example.test"], raw)
    email_id = int(reply.text.rsplit(" ", 1)[1])
    async with http.get(f"/api/v1/emails/{email_id}", headers=AUTH) as r:
        detail = await r.json()
    assert detail["subject"] == "Grüße"
    assert {"name": "Message-ID", "value": "<api-2@customer.test>"} in detail["headers"]
    assert detail["envelope"]["rcpt_to"] == ["support@example.test"]
    assert detail["state"] in ("journaled", "done")
    async with http.get(f"/api/v1/emails/{email_id}/raw", headers=AUTH) as r:
        assert r.status == 200 and await r.read() == raw
    async with http.get("/api/v1/emails/999999", headers=AUTH) as r:
        assert r.status == 404 and (await r.json())["error"]["field"] == "id"
    async with http.get("/api/v1/emails/abc/raw", headers=AUTH) as r:
        assert r.status == 404


async def test_message_id_query_parameter_is_required(http):
    async with http.get("/api/v1/emails", headers=AUTH) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["field"] == "message_id"


async def test_metrics_count_received_copies_and_commits(gateway, http):
    await deliver(gateway, ["support@example.test", "sales@example.test"],
                  message(message_id="<m@customer.test>"))
    async with http.get("/metrics") as r:
        text = await r.text()
    assert 'mailgate_messages_received_total{connector="support",source="lmtp"} 1.0' in text
    assert 'mailgate_messages_received_total{connector="sales",source="lmtp"} 1.0' in text
    assert 'mailgate_store_commit_duration_seconds_count{backend="sqlite"}' in text
    assert 'mailgate_replies_total{class="2",protocol="lmtp"}' in text
    assert "mailgate_ready 1.0" in text


async def test_metrics_show_the_journal_backlog_and_its_age(gateway, http):
    import re
    import time

    def sample(text: str, name: str, queue: str) -> float:
        return float(re.search(rf'^{name}{{queue="{queue}"}} (\S+)$', text, re.M)[1])

    await gateway.pipeline.stop()                   # mail waits in the journal
    before = time.time()
    await deliver(gateway, ["support@example.test"], message(message_id="<q1@customer.test>"))
    async with http.get("/metrics") as r:
        waiting = await r.text()
    assert sample(waiting, "mailgate_queue_messages", "journal") == 1
    assert before - 1 <= sample(waiting, "mailgate_queue_oldest_timestamp_seconds",
                                "journal") <= time.time()
    assert sample(waiting, "mailgate_queue_messages", "outbound") == 0
    await gateway.pipeline.start()
    await gateway.pipeline.drain()
    await asyncio.sleep(1.1)                        # the queues are counted once a second
    async with http.get("/metrics") as r:
        drained = await r.text()
    assert sample(drained, "mailgate_queue_messages", "journal") == 0
    assert sample(drained, "mailgate_queue_oldest_timestamp_seconds", "journal") == 0


async def test_r_c1_connector_created_over_the_api_receives_mail_at_once(gateway, http):
    new = {"name": "billing", "primary_address": "billing@example.test",
           "aliases": ["invoices@example.test"]}
    async with http.post("/api/v1/connectors", json=new, headers=AUTH) as r:
        assert r.status == 201, await r.text()
    [reply] = await deliver(gateway, ["invoices+9-T@example.test"], message())
    assert reply.code == 250
    async with http.post("/api/v1/connectors", json=new, headers=AUTH) as r:
        assert r.status == 409
    async with http.delete("/api/v1/connectors/billing", headers=AUTH) as r:
        assert r.status == 204
    client = await WireClient.connect(gateway.listeners["lmtp"].port)
    await client.command("LHLO t")
    await client.command("MAIL FROM:<a@b.test>")
    assert (await client.command("RCPT TO:<billing@example.test>")).code == 550
    await client.close()


@pytest.mark.parametrize("body,field", [
    ({"primary_address": "x@example.test"}, "name"),
    ({"name": "x", "primary_address": "nope"}, "primary_address"),
    ({"name": "x", "primary_address": "x@example.test", "service": "hotmail"}, "service"),
    ({"name": "x", "primary_address": "x@example.test", "aliases": "a@b.test"}, "aliases"),
    ({"name": "x", "primary_address": "support@example.test"}, "primary_address"),
])
async def test_r_c1_invalid_connector_is_refused_naming_the_field(http, body, field):
    async with http.post("/api/v1/connectors", json=body, headers=AUTH) as r:
        error = (await r.json())["error"]
    assert r.status in (409, 422) and error["field"] == field
    assert "R-C1" in error["message"] or r.status == 422


async def test_an_empty_admin_token_file_stops_the_start_instead_of_opening_the_api(tmp_path):
    from gateway.app import Gateway
    from tests.conftest import make_settings
    (tmp_path / "mailgate.admin-token").write_text("\n")
    gw = Gateway(make_settings(tmp_path, http={"admin_token": ""}))
    with pytest.raises(RuntimeError, match="mailgate.admin-token is empty: delete it"):
        await gw.start()
    await gw.stop()


async def test_a_generated_admin_token_file_is_private_and_whole(tmp_path):
    import stat

    from gateway.app import Gateway
    from tests.conftest import make_settings
    gw = Gateway(make_settings(tmp_path, http={"admin_token": ""}))
    await gw.start()
    try:
        path = tmp_path / "mailgate.admin-token"
        assert path.read_text().strip() == gw.admin_token and len(gw.admin_token) >= 40
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir() if "admin-token" in p.name] == [path.name]
    finally:
        await gw.stop()
