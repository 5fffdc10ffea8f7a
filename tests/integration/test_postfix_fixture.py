"""Tests of the throwaway-Postfix helper against a bare aiosmtpd LMTP server.

The LMTP server runs in the test's own event loop (as the gateway will), so the
blocking helper methods are called through asyncio.to_thread.
"""
from __future__ import annotations

import asyncio
import socket

import pytest
import pytest_asyncio
from aiosmtpd.lmtp import LMTP

from tests.integration.postfix import PostfixError, PostfixInstance, free_port, parse_postqueue_p

pytestmark = pytest.mark.timeout(30)

MESSAGE = (b"From: Sender <s@origin.test>\r\nTo: a@example.test, b@example.test\r\n"
           b"Subject: fixture test\r\n\r\nfirst line\r\n.\r\nlast line\r\n")


class Handler:
    """Answers every recipient with ``self.reply``; records envelopes."""

    def __init__(self) -> None:
        self.reply = "250 2.0.0 ok"
        self.envelopes = []
        self.port = 0

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "\r\n".join(self.reply for _ in envelope.rcpt_tos)


@pytest_asyncio.fixture
async def lmtp():
    """Bare aiosmtpd LMTP server on 127.0.0.1, on a port the kernel picks."""
    handler = Handler()
    server = await asyncio.get_running_loop().create_server(
        lambda: LMTP(handler, hostname="lmtp.test"), "127.0.0.1", 0)
    handler.port = server.sockets[0].getsockname()[1]
    yield handler
    server.close()
    await server.wait_closed()


@pytest_asyncio.fixture
async def postfix(lmtp):
    pf = PostfixInstance(lmtp.port)
    await asyncio.to_thread(pf.start)
    yield pf
    await asyncio.to_thread(pf.stop)


@pytest.mark.asyncio
async def test_two_recipients_reach_lmtp_with_postfix_headers(lmtp, postfix):
    await asyncio.to_thread(postfix.sendmail, MESSAGE, "s@origin.test",
                            ["a@example.test", "b@example.test"])
    sent = await asyncio.to_thread(postfix.wait_delivered, 2, 10)

    assert {d.recipient for d in sent} == {"a@example.test", "b@example.test"}
    assert all(d.reply == "250 2.0.0 ok" and d.dsn == "2.0.0" for d in sent)
    assert len({d.queue_id for d in sent}) == 1, "one message, one LMTP transaction"
    assert len(lmtp.envelopes) == 1
    env = lmtp.envelopes[0]
    assert env.mail_from == "s@origin.test"
    assert env.rcpt_tos == ["a@example.test", "b@example.test"]
    data = env.original_content
    assert data.startswith(b"Received: by mx.gateway.test (Postfix"), data[:200]
    assert b"Subject: fixture test\r\n" in data and b"Message-Id: <" in data
    assert data.endswith(b"\r\n\r\nfirst line\r\n.\r\nlast line\r\n"), data[-80:]
    await asyncio.to_thread(postfix.wait_queue_empty, 5)


@pytest.mark.asyncio
async def test_451_keeps_mail_queued_until_flush_delivers_it(lmtp, postfix):
    lmtp.reply = "451 4.3.0 try later"
    rcpts = ["a@example.test", "b@example.test"]
    await asyncio.to_thread(postfix.sendmail, MESSAGE, "s@origin.test", rcpts)
    await asyncio.to_thread(postfix.wait_for_log, r"to=<b@example\.test>.*status=deferred", 10)

    def deferred_entry():
        entries = postfix.queue()
        if len(entries) == 1 and entries[0]["queue_name"] == "deferred":
            return entries[0]
        return None  # may be "active" for a moment: it is retried every 1-4 s
    entry = await asyncio.to_thread(postfix.wait_until, deferred_entry, 10, "deferred entry")
    assert entry["sender"] == "s@origin.test"
    assert sorted(r["address"] for r in entry["recipients"]) == rcpts
    assert all("451 4.3.0 try later" in r["delay_reason"] for r in entry["recipients"])
    deferred = [d for d in postfix.deliveries() if d.status == "deferred"]
    assert {d.recipient for d in deferred} == set(rcpts)
    assert all(d.agent == "lmtp" and d.dsn == "4.3.0" for d in deferred)

    # The -p fallback parser must agree with -j on the same queue.
    [parsed] = parse_postqueue_p(await asyncio.to_thread(postfix.postqueue, "-p"))
    assert parsed["queue_id"] == entry["queue_id"] and parsed["sender"] == "s@origin.test"
    assert sorted(r["address"] for r in parsed["recipients"]) == rcpts

    lmtp.reply = "250 2.0.0 ok"
    await asyncio.to_thread(postfix.flush)
    sent = await asyncio.to_thread(postfix.wait_delivered, 2, 10)
    assert {d.recipient for d in sent} == set(rcpts)
    assert {d.queue_id for d in sent} == {entry["queue_id"]}
    await asyncio.to_thread(postfix.wait_queue_empty, 5)
    assert lmtp.envelopes[-1].rcpt_tos == rcpts


def test_start_failure_raises_with_maillog_and_cleans_up():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        pf = PostfixInstance(lmtp_port=free_port(), smtp_port=busy.getsockname()[1])
        with pytest.raises(PostfixError, match="Address already in use"):
            pf.start()
    assert pf.dir is None
