"""A real Postfix delivering to mailgate over LMTP (R-I1, RFC 2033).

Postfix is the MTA admins put in front of mailgate, so its reading of our
replies is the one that counts: 2xx sent, 4xx deferred and kept, 5xx bounced.
"""
from __future__ import annotations

import asyncio
import email
import re
from email import policy

import pytest

from tests.conftest import FAIL_EMAIL_INSERTS, run_sql
from tests.integration.postfix import PostfixInstance

pytestmark = pytest.mark.postfix


@pytest.fixture
async def postfix(gateway):
    instance = PostfixInstance(gateway.listeners["lmtp"].port, domains="example.test")
    await asyncio.to_thread(instance.start)
    yield instance
    await asyncio.to_thread(instance.stop)


def original(message_id: str, body: str = "The printer is on fire.\n") -> bytes:
    """What a local program hands to sendmail: LF line endings, as Unix programs write."""
    return (f"From: Alice <alice@customer.test>\nTo: support@example.test\n"
            f"Subject: Printer\nDate: Sun, 29 Nov 2026 10:00:00 +0000\n"
            f"Message-ID: {message_id}\n\n{body}").encode()


async def test_r_i1_postfix_relays_over_lmtp_and_bytes_are_kept(gateway, postfix):
    sent = original("<pf-1@customer.test>", body="Line one.\n.leading dot\n\nLast.\n")
    await asyncio.to_thread(postfix.sendmail, sent, "alice@customer.test",
                            ["support@example.test"])
    [delivery] = await asyncio.to_thread(postfix.wait_delivered, 1, 30)
    assert delivery.recipient == "support@example.test"
    assert re.search(r"250 2\.0\.0 <support@example.test> Ok: stored as email \d+",
                     delivery.reply)
    [copy] = await gateway.store.emails_by_message_id("<pf-1@customer.test>")
    stored = await gateway.store.raw(copy.id)
    # Postfix speaks CRLF on the wire; it adds its trace headers on top and
    # changes nothing else.
    expected_tail = sent.replace(b"\n", b"\r\n")
    assert stored.endswith(expected_tail)
    added = email.message_from_bytes(stored[:-len(expected_tail)] + b"\r\n",
                                     policy=policy.compat32)
    assert set(added.keys()) == {"Received"}, added.keys()
    assert "by mx.gateway.test (Postfix" in added["Received"]
    assert copy.mail_from == "alice@customer.test" and copy.source == "lmtp"


async def test_r_i1_postfix_gets_one_reply_per_recipient(gateway, postfix):
    rcpts = ["support@example.test", "sales@example.test", "help@example.test"]
    await asyncio.to_thread(postfix.sendmail, original("<pf-2@customer.test>"),
                            "alice@customer.test", rcpts)
    deliveries = await asyncio.to_thread(postfix.wait_delivered, 3, 30)
    assert sorted(d.recipient for d in deliveries) == sorted(rcpts)
    assert len({d.queue_id for d in deliveries}) == 1, "one LMTP transaction"
    for d in deliveries:
        assert f"<{d.recipient}> Ok: stored as email" in d.reply
    copies = await gateway.store.emails_by_message_id("<pf-2@customer.test>")
    assert sorted(c.connector for c in copies) == ["sales", "support"]


async def test_r_i1_storage_failure_keeps_the_mail_queued_in_postfix(gateway, postfix, tmp_path):
    await run_sql(tmp_path / "mailgate.db", FAIL_EMAIL_INSERTS)
    rcpts = ["support@example.test", "sales@example.test"]
    await asyncio.to_thread(postfix.sendmail, original("<pf-3@customer.test>"),
                            "alice@customer.test", rcpts)
    await asyncio.to_thread(postfix.wait_for_log, r"to=<sales@example.test>.*status=deferred", 30)
    queue = await asyncio.to_thread(postfix.queue)
    assert len(queue) == 1
    queued = queue[0]
    assert sorted(r["address"] for r in queued["recipients"]) == sorted(rcpts)
    for recipient in queued["recipients"]:
        assert "451 4.3.0" in recipient.get("delay_reason", ""), recipient
    listing = await asyncio.to_thread(postfix.postqueue, "-p")  # what an admin would run
    assert queued["queue_id"] in listing and "451 4.3.0" in listing
    deferred = [d for d in postfix.deliveries() if d.status == "deferred"]
    assert {d.recipient for d in deferred} == set(rcpts)
    assert not [d for d in postfix.deliveries() if d.status == "bounced"]
    assert await gateway.store.count_emails() == 0

    await run_sql(tmp_path / "mailgate.db", "DROP TRIGGER fail")
    await asyncio.to_thread(postfix.flush)
    await asyncio.to_thread(postfix.wait_delivered, 2, 30)
    await asyncio.to_thread(postfix.wait_queue_empty, 30)
    copies = await gateway.store.emails_by_message_id("<pf-3@customer.test>")
    assert sorted(c.connector for c in copies) == ["sales", "support"]


async def test_r_i1_unknown_recipient_is_bounced_by_postfix_not_stored(gateway, postfix):
    await asyncio.to_thread(postfix.sendmail, original("<pf-4@customer.test>"),
                            "alice@customer.test", ["nobody@example.test"])
    match = await asyncio.to_thread(postfix.wait_for_log,
                                    r"to=<nobody@example.test>.*status=bounced \((.*)\)", 30)
    assert "550 5.1.1" in match.group(1)
    assert await gateway.store.count_emails() == 0
