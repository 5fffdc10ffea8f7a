"""Backpressure over the real wire (R-I1: a 4xx, so the MTA keeps the mail).

When more copies wait in the journal than ``[storage] backlog_high_water``, a new
LMTP/SMTP transaction is answered ``451 4.3.2`` at MAIL FROM, before the MTA sends
any DATA; a transaction that got past MAIL FROM is never refused for it; the
pollers leave mail in the mailbox; and the gate opens again once the pipeline has
drained the journal to the low-water mark. The gate's own rules are unit-tested in
tests/unit/test_backpressure.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect

import pytest

from gateway.app import Gateway
from tests.conftest import make_settings
from tests.wire import WireClient, message

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def gate_gateway(tmp_path):
    """Factory: a gateway whose journal high-water mark is ``high`` (SMTP on too)."""
    started: list[Gateway] = []

    async def start(high: int, **kwargs) -> Gateway:
        settings = make_settings(tmp_path, smtp={"enabled": True}, **kwargs)
        settings = dataclasses.replace(settings, storage=dataclasses.replace(
            settings.storage, backlog_high_water=high))
        gw = Gateway(settings)
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


async def start_pipeline(gw) -> None:
    started = gw.pipeline.start()
    if inspect.isawaitable(started):
        await started


def sample(gw, name: str, **labels) -> float:
    return gw.metrics.registry.get_sample_value(name, labels or None) or 0.0


async def wait_until(check, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def lmtp(gw) -> WireClient:
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO test")
    return client


async def deliver(client: WireClient, n: int) -> None:
    _, replies = await client.transaction(
        "alice@customer.test", ["support@example.test"],
        message(subject=f"Parcel {n}", message_id=f"<bp-{n}@customer.test>"))
    assert [r.code for r in replies] == [250], replies


async def test_r_i1_over_the_high_water_mark_mail_from_gets_451_4_3_2_until_the_journal_drains(
        gate_gateway):
    gw = await gate_gateway(5)
    await gw.pipeline.stop()                    # nothing leaves the journal
    client = await lmtp(gw)
    for n in range(5):
        await deliver(client, n)                # 5 copies waiting: the high-water mark
    # Closed by the 5th commit itself (or, on a slow machine, by the count it asked for)
    await wait_until(lambda: sample(gw, "mailgate_intake_throttled") == 1, "the gate to close")

    refused = await client.command("MAIL FROM:<alice@customer.test>")
    assert refused.code == 451 and refused.text.startswith("451 4.3.2 "), refused
    assert (await client.command("RCPT TO:<support@example.test>")).code == 503
    assert (await client.command("DATA")).code == 503       # no DATA without a MAIL
    assert await gw.store.backlog() == 5

    smtp = await WireClient.connect(gw.listeners["smtp"].port)  # the same gate for SMTP
    await smtp.command("EHLO test")
    reply = await smtp.command("MAIL FROM:<alice@customer.test>")
    assert reply.code == 451 and "4.3.2" in reply.text, reply
    await smtp.close()
    assert sample(gw, "mailgate_intake_throttled_transactions_total", protocol="lmtp") == 1
    assert sample(gw, "mailgate_intake_throttled_transactions_total", protocol="smtp") == 1

    await start_pipeline(gw)
    await gw.pipeline.drain()
    # The gate counts by itself while closed: it opens without anyone asking.
    await wait_until(lambda: sample(gw, "mailgate_intake_throttled") == 0, "the gate to open")
    await deliver(client, 6)                    # the same session, a new transaction
    await client.close()


async def test_r_i1_a_transaction_past_mail_from_when_the_gate_closes_still_gets_250(
        gate_gateway):
    """Only a new transaction is refused: one already sending its DATA, or between
    MAIL FROM and DATA, is taken as always (its 250 means the copy is committed)."""
    gw = await gate_gateway(2)
    await gw.pipeline.stop()
    in_data = await lmtp(gw)
    assert (await in_data.command("MAIL FROM:<bob@customer.test>")).code == 250
    assert (await in_data.command("RCPT TO:<support@example.test>")).code == 250
    assert (await in_data.command("DATA")).code == 354
    raw = message(subject="Long one", message_id="<bp-long@customer.test>")
    head, tail = raw[:20], raw[20:]
    await in_data.send(head)                    # half of the message is on its way
    before_data = await lmtp(gw)
    assert (await before_data.command("MAIL FROM:<carol@customer.test>")).code == 250
    assert (await before_data.command("RCPT TO:<sales@example.test>")).code == 250

    filler = await lmtp(gw)
    for n in range(2):
        await deliver(filler, n)
    await wait_until(gw.intake.throttled, "the gate to close")
    refused = await filler.command("MAIL FROM:<alice@customer.test>")
    assert refused.code == 451 and "4.3.2" in refused.text

    await in_data.send(tail + b".\r\n")
    [reply] = await in_data.replies(1)
    assert reply.code == 250, reply
    assert (await before_data.command("DATA")).code == 354
    await before_data.send(message(to="sales@example.test") + b".\r\n")
    [reply] = await before_data.replies(1)
    assert reply.code == 250, reply
    assert await gw.store.backlog() == 4        # over the mark: the gate never loses mail
    for client in (in_data, before_data, filler):
        await client.close()


async def test_r_i1_polled_mail_stays_in_the_mailbox_while_the_gate_is_closed(
        gate_gateway, dovecot):
    """Pollers take nothing while the gate is closed: no session, the mail stays on the
    server, and it is not the mailbox's failure (no ``failing``, no event, no backoff).
    Once the journal drains, the next round takes it."""
    from tests.e2e.helpers import WIRE, mail

    gw = await gate_gateway(1)
    user = dovecot.new_user("gate")
    await gw.add_connector(dovecot.connector(user, protocol="imap", name="mbox",
                                             poll_interval=3600, idle=False),
                           username=user, password=dovecot.password(user))
    poller = gw.pollers.get("mbox")
    await wait_until(lambda: poller.status.next_poll_at is not None, "the first round")
    await gw.pipeline.stop()
    client = await lmtp(gw)
    await deliver(client, 1)                    # 1 copy waiting: the gate closes
    await client.close()
    await wait_until(gw.intake.throttled, "the gate to close")
    waiting = mail(to=(user,), subject="Stuck in the mailbox for now")
    await asyncio.to_thread(dovecot.append, user, "INBOX", waiting.as_bytes(policy=WIRE))
    rounds = poller.status.rounds

    status = await gw.pollers.poll("mbox")
    assert status.rounds == rounds              # no session was opened
    assert (status.state, status.failures) == ("ok", 0)
    assert await asyncio.to_thread(dovecot.count, user) == 1
    assert await gw.store.emails_by_message_id(waiting["Message-ID"]) == []
    assert [e for e in await gw.store.events(0, 1000)
            if e["type"].startswith("connector.poll")] == []
    assert sample(gw, "mailgate_poller_up", connector="mbox", protocol="imap") == 1

    await start_pipeline(gw)
    await gw.pipeline.drain()
    await wait_until(lambda: not gw.intake.throttled(), "the gate to open")
    status = await gw.pollers.poll("mbox")
    assert status.state == "ok" and status.last_round_fetched == 1
    assert await asyncio.to_thread(dovecot.count, user) == 0
    assert len(await gw.store.emails_by_message_id(waiting["Message-ID"])) == 1
