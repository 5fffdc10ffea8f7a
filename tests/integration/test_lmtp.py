"""LMTP intake end to end (R-I1, R-I3, RFC 2033) against an in-process gateway."""
from __future__ import annotations

import asyncio
import re
import smtplib
import subprocess

import aiosmtpd

from tests.conftest import FAIL_EMAIL_INSERTS, run_sql
from tests.wire import WireClient, message


def lmtp_port(gw) -> int:
    return gw.listeners["lmtp"].port


async def stored(gw, email_id: int) -> bytes:
    return await gw.store.raw(email_id)


def email_id_of(reply) -> int:
    return int(re.search(r"stored as email (\d+)", reply.text).group(1))


async def test_r_i1_smtplib_lmtp_delivery_is_stored_byte_for_byte(gateway):
    raw = message(subject="From smtplib", message_id="<smtplib-1@customer.test>",
                  body="Hello.\r\n.leading dot\r\n")

    def send():
        with smtplib.LMTP("127.0.0.1", lmtp_port(gateway)) as client:
            return client.sendmail("alice@customer.test", ["support@example.test"], raw)

    refused = await asyncio.to_thread(send)
    assert refused == {}
    [copy] = await gateway.store.emails_by_message_id("<smtplib-1@customer.test>")
    assert await stored(gateway, copy.id) == raw
    assert (copy.connector, copy.source, copy.mail_from) == ("support", "lmtp",
                                                             "alice@customer.test")


async def test_r_i1_unknown_recipient_is_refused_at_rcpt_with_550_5_1_1(gateway):
    client = await WireClient.connect(lmtp_port(gateway))
    await client.command("LHLO test")
    await client.command("MAIL FROM:<a@customer.test>")
    reply = await client.command("RCPT TO:<stranger@elsewhere.test>")
    assert reply.code == 550 and "5.1.1" in reply.text
    reply = await client.command("DATA")
    assert reply.code == 503
    await client.close()


async def test_r_i1_one_reply_per_accepted_recipient_in_rcpt_order(gateway):
    client = await WireClient.connect(lmtp_port(gateway))
    await client.command("LHLO test")
    rcpts = ["support@example.test", "nobody@example.test", "SALES@example.test",
             "help+77-T@example.test", "support@example.test"]
    rcpt_replies, data_replies = await client.transaction(
        "a@customer.test", rcpts, message(message_id="<multi@customer.test>"))
    assert [r.code for r in rcpt_replies] == [250, 550, 250, 250, 250]
    assert len(data_replies) == 4
    accepted = [r for r, reply in zip(rcpts, rcpt_replies) if reply.code == 250]
    for rcpt, reply in zip(accepted, data_replies):
        assert reply.code == 250 and f"<{rcpt}>" in reply.text
    # one copy per receiving connector: support (support, help alias, support again), sales
    copies = await gateway.store.emails_by_message_id("<multi@customer.test>")
    assert sorted(c.connector for c in copies) == ["sales", "support"]
    support = next(c for c in copies if c.connector == "support")
    assert support.rcpt_to == ["support@example.test", "help+77-T@example.test",
                               "support@example.test"]
    # the next transaction on the same connection still works
    _, again = await client.transaction("a@customer.test", ["sales@example.test"], message())
    assert [r.code for r in again] == [250]
    await client.close()


async def test_r_i1_storage_failure_answers_451_4_3_0_for_every_recipient(gateway, tmp_path):
    await run_sql(tmp_path / "mailgate.db", FAIL_EMAIL_INSERTS)
    client = await WireClient.connect(lmtp_port(gateway))
    await client.command("LHLO test")
    rcpts = ["support@example.test", "sales@example.test", "help@example.test"]
    _, replies = await client.transaction("a@customer.test", rcpts,
                                          message(message_id="<fail@customer.test>"))
    assert [r.code for r in replies] == [451, 451, 451]
    assert all(" 4.3.0 " in r.text for r in replies)
    assert await gateway.store.count_emails() == 0
    await run_sql(tmp_path / "mailgate.db", "DROP TRIGGER fail")
    _, replies = await client.transaction("a@customer.test", rcpts,
                                          message(message_id="<fail@customer.test>"))
    assert [r.code for r in replies] == [250, 250, 250]
    await client.close()


async def test_rfc2033_lhlo_advertises_pipelining_enhancedstatuscodes_and_size(gateway):
    client = await WireClient.connect(lmtp_port(gateway))
    reply = await client.command("LHLO test")
    lines = [line[4:] for line in reply]
    assert "PIPELINING" in lines and "ENHANCEDSTATUSCODES" in lines
    assert f"SIZE {gateway.settings.lmtp.max_message_size}" in lines
    await client.close()


async def test_rfc2034_every_reply_after_the_greeting_carries_an_enhanced_code(gateway):
    client = await WireClient.connect(lmtp_port(gateway))
    await client.command("LHLO test")
    for line in ["NOOP", "HELO x", "EHLO x", "FOO", "RCPT TO:<support@example.test>",
                 "MAIL FROM:<a@x.test>", "MAIL FROM:<a@x.test>", "RCPT TO:<bad@nowhere.test>",
                 "RCPT TO:<broken", "RSET", "DATA", "VRFY x"]:
        reply = await client.command(line)
        assert re.match(r"\d{3} [245]\.\d{1,3}\.\d{1,3} ", reply[-1]), (line, reply)
    _, data = await client.transaction("a@x.test", ["support@example.test"], message())
    assert re.match(r"250 2\.0\.0 ", data[0][0])
    await client.close()


async def test_rfc2920_pipelined_transaction_gets_every_reply_in_order(gateway):
    client = await WireClient.connect(lmtp_port(gateway))
    await client.command("LHLO test")
    await client.send(b"MAIL FROM:<a@customer.test>\r\nRCPT TO:<support@example.test>\r\n"
                      b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<sales@example.test>\r\nDATA\r\n")
    replies = await client.replies(5)
    assert [r.code for r in replies] == [250, 250, 550, 250, 354]
    await client.send(message(message_id="<piped@customer.test>") + b".\r\nRSET\r\nNOOP\r\n")
    replies = await client.replies(4)
    assert [r.code for r in replies] == [250, 250, 250, 250]
    assert "<support@example.test>" in replies[0].text
    assert "<sales@example.test>" in replies[1].text
    await client.close()


async def test_smuggling_payload_stores_exactly_one_message(gateway):
    """R-I3 / CVE-2023-51764: `\\n.\\r\\n` inside DATA must not end it."""
    client = await WireClient.connect(lmtp_port(gateway))
    await client.command("LHLO test")
    payload = (message(subject="innocent", message_id="<outer@customer.test>", body="hi\r\n")
               + b"\n.\r\nMAIL FROM:<ceo@example.test>\r\nRCPT TO:<sales@example.test>\r\n"
               b"DATA\r\nFrom: ceo@example.test\r\nSubject: smuggled\r\n"
               b"Message-ID: <smuggled@attacker.test>\r\n\r\npay now\r\n")
    _, replies = await client.transaction("a@customer.test", ["support@example.test"], payload)
    assert [r.code for r in replies] == [250]
    assert (await client.command("NOOP")).code == 250
    await client.close()
    assert await gateway.store.count_emails() == 1
    [copy] = await gateway.store.emails_by_message_id("<outer@customer.test>")
    assert b"Subject: smuggled" in await stored(gateway, copy.id)
    assert await gateway.store.emails_by_message_id("<smuggled@attacker.test>") == []


async def test_r_i3_size_is_enforced_at_mail_from_and_after_data(start_gateway):
    gw = await start_gateway(lmtp={"max_message_size": 2000})
    client = await WireClient.connect(lmtp_port(gw))
    await client.command("LHLO test")
    reply = await client.command("MAIL FROM:<a@customer.test> SIZE=5000")
    assert reply.code == 552 and "5.3.4" in reply.text
    _, replies = await client.transaction(
        "a@customer.test", ["support@example.test", "sales@example.test"],
        message(body="x" * 70 + "\r\n") * 40)
    assert [r.code for r in replies] == [552, 552]
    assert all("5.3.4" in r.text for r in replies)
    _, replies = await client.transaction("a@customer.test", ["support@example.test"], message())
    assert [r.code for r in replies] == [250]
    await client.close()
    assert await gw.store.count_emails() == 1


async def test_r_i3_too_many_recipients_is_452(start_gateway):
    gw = await start_gateway(lmtp={"max_recipients": 2})
    client = await WireClient.connect(lmtp_port(gw))
    await client.command("LHLO test")
    await client.command("MAIL FROM:<a@customer.test>")
    codes = [(await client.command("RCPT TO:<support@example.test>")).code for _ in range(3)]
    assert codes == [250, 250, 452]
    await client.close()


async def test_r_i3_long_line_and_header_flood_get_one_5xx_per_recipient(start_gateway):
    gw = await start_gateway(lmtp={"max_header_count": 20})
    client = await WireClient.connect(lmtp_port(gw))
    await client.command("LHLO test")
    rcpts = ["support@example.test", "sales@example.test"]
    _, replies = await client.transaction("a@x.test", rcpts,
                                          message(body="y" * 1500 + "\r\n"))
    assert [r.code for r in replies] == [500, 500]
    flood = b"".join(b"X-Flood-%d: 1\r\n" % i for i in range(30)) + message()
    _, replies = await client.transaction("a@x.test", rcpts, flood)
    assert [r.code for r in replies] == [552, 552]
    await client.close()
    assert await gw.store.count_emails() == 0


def test_aiosmtpd_is_at_least_1_4_6():
    """1.4.5 fixed SMTP smuggling (CVE-2024-27305), 1.4.6 STARTTLS injection (CVE-2024-34083)."""
    version = tuple(int(p) for p in aiosmtpd.__version__.split(".")[:3])
    assert version >= (1, 4, 6)


async def test_r_i1_swaks_multi_recipient_delivery(gateway):
    run = await asyncio.to_thread(
        subprocess.run,
        ["swaks", "--protocol", "LMTP", "--server", f"127.0.0.1:{lmtp_port(gateway)}",
         "--from", "alice@customer.test",
         "--to", "support@example.test,nobody@example.test,sales@example.test",
         "--header", "Message-Id: <swaks-1@customer.test>", "--body", "From swaks"],
        capture_output=True, text=True, timeout=30)
    lines = run.stdout.splitlines()
    after_data = lines[next(i for i, l in enumerate(lines) if l.strip() == "-> .") + 1:]
    data_replies = [l for l in after_data if re.match(r"<[-*]{1,2}\s+\d{3}", l)][:2]
    assert [l.split()[1] for l in data_replies] == ["250", "250"], run.stdout
    assert "<support@example.test>" in data_replies[0]
    assert "<sales@example.test>" in data_replies[1]
    copies = await gateway.store.emails_by_message_id("<swaks-1@customer.test>")
    assert sorted(c.connector for c in copies) == ["sales", "support"]
    raw = await stored(gateway, copies[0].id)
    assert b"From swaks" in raw and raw.endswith(b"\r\n")
