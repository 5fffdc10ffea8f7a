"""Reading a stored copy never parses it on the event loop (R-H4): the API serves the
headers summarised when the copy was prepared, bounded whatever the message."""
from __future__ import annotations

import aiohttp

from tests.conftest import ADMIN_TOKEN
from tests.e2e.helpers import deliver_raw

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# ~230 KB of a@b@c@d, nine to a folded line (under the 256 KiB header cap): the stdlib's
# address parser took seconds over it
_ITEMS = [b"a@b@c@d"] * 26_666
CRAFTED = (b"From: carol@customer.test\r\nTo: support@example.test\r\n"
           b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <crafted@customer.test>\r\n"
           b"Cc: " + b",\r\n ".join(b",".join(_ITEMS[n:n + 9]) for n in range(0, 26_666, 9))
           + b"\r\n\r\nHello.\r\n")


async def _get(gw, path: str) -> dict:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}") as http:
        async with http.get(path, headers=AUTH) as reply:
            assert reply.status == 200, await reply.text()
            return await reply.json()


async def test_r_h4_a_crafted_copy_is_read_through_its_stored_summary(gateway):
    await deliver_raw(gateway, CRAFTED, ["support@example.test"],
                      sender="carol@customer.test")
    [copy] = await gateway.store.emails_by_message_id("<crafted@customer.test>")
    assert copy.state == "done" and copy.summary is not None    # made when prepared
    [parse] = [line for line in copy.trace if line["stage"] == "parse"]
    assert "ignored" in parse["reason"]                         # the budget says what it cut
    body = await _get(gateway, f"/api/v1/emails/{copy.id}")
    assert body["subject"] == "Grüße"
    cc = next(h["value"] for h in body["headers"] if h["name"] == "Cc")
    assert cc.endswith("…") and len(cc) <= 2001                 # bounded, and says so
    assert await gateway.store.raw(copy.id) == CRAFTED          # the bytes are all kept
    listed = await _get(gateway, "/api/v1/emails?message_id=crafted@customer.test")
    assert [e["subject"] for e in listed["emails"]] == ["Grüße"]


async def test_a_copy_still_waiting_is_shown_with_its_subject(gateway):
    await gateway.pipeline.stop()
    raw = CRAFTED.replace(b"<crafted@", b"<waiting@")
    await deliver_raw_journal_only(gateway, raw)
    [copy] = await gateway.store.emails_by_message_id("<waiting@customer.test>")
    assert copy.state == "journaled" and copy.summary is None
    body = await _get(gateway, f"/api/v1/emails/{copy.id}")
    assert body["subject"] == "Grüße" and body["state"] == "journaled"


async def deliver_raw_journal_only(gw, raw: bytes) -> None:
    """Over LMTP, with the pipeline stopped: the copy stays in the journal."""
    from tests.wire import WireClient
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO e2e")
    _, replies = await client.transaction("carol@customer.test", ["support@example.test"], raw)
    await client.close()
    assert [r.code for r in replies] == [250]
