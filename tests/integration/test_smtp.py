"""The optional SMTP listener (R-I2): same durability, one reply, STARTTLS and AUTH."""
from __future__ import annotations

import asyncio
import smtplib
import ssl

import pytest
import trustme

from tests.conftest import FAIL_EMAIL_INSERTS, run_sql
from tests.wire import WireClient, message


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    cert.private_key_and_cert_chain_pem.write_to_path(folder / "server.pem")
    cert.private_key_pem.write_to_path(folder / "server.key")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    return folder


async def test_r_i2_smtp_gets_one_reply_and_one_copy_per_connector(start_gateway):
    gw = await start_gateway(smtp={"enabled": True})
    raw = message(message_id="<smtp-1@customer.test>")

    def send():
        with smtplib.SMTP("127.0.0.1", gw.listeners["smtp"].port) as client:
            return client.sendmail("alice@customer.test",
                                   ["support@example.test", "sales@example.test"], raw)

    assert await asyncio.to_thread(send) == {}
    copies = await gw.store.emails_by_message_id("<smtp-1@customer.test>")
    assert sorted((c.connector, c.source) for c in copies) == [("sales", "smtp"),
                                                               ("support", "smtp")]
    assert await gw.store.raw(copies[0].id) == raw


async def test_r_i2_storage_failure_is_one_451_for_the_message(start_gateway, tmp_path):
    gw = await start_gateway(smtp={"enabled": True})
    await run_sql(tmp_path / "mailgate.db", FAIL_EMAIL_INSERTS)
    client = await WireClient.connect(gw.listeners["smtp"].port)
    await client.command("EHLO test")
    _, replies = await client.transaction("a@x.test", ["support@example.test",
                                                       "sales@example.test"], message(),
                                          smtp=True)
    assert len(replies) == 1 and replies[0].code == 451 and "4.3.0" in replies[0].text
    assert (await client.command("NOOP")).code == 250
    await client.close()


async def test_r_i2_never_an_open_relay(start_gateway):
    gw = await start_gateway(smtp={"enabled": True})
    client = await WireClient.connect(gw.listeners["smtp"].port)
    await client.command("EHLO test")
    await client.command("MAIL FROM:<a@x.test>")
    reply = await client.command("RCPT TO:<victim@elsewhere.test>")
    assert reply.code == 550 and "5.1.1" in reply.text
    await client.close()


async def test_r_i2_starttls_and_auth_are_required_when_configured(start_gateway, tls_files):
    gw = await start_gateway(smtp={"enabled": True, "tls_cert": str(tls_files / "server.pem"),
                                   "tls_key": str(tls_files / "server.key"),
                                   "require_starttls": True, "auth_username": "exchange",
                                   "auth_password": "hunter2"})
    port = gw.listeners["smtp"].port
    context = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))

    def send(password: str):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            code, _ = client.mail("a@x.test")
            assert code == 530  # RFC 3207: STARTTLS first
            client.rset()
            client.starttls(context=context)
            client.login("exchange", password)
            return client.sendmail("a@x.test", ["support@example.test"],
                                   message(message_id="<tls@x.test>"))

    with pytest.raises(smtplib.SMTPAuthenticationError):
        await asyncio.to_thread(send, "wrong")
    assert await asyncio.to_thread(send, "hunter2") == {}
    assert len(await gw.store.emails_by_message_id("<tls@x.test>")) == 1


async def test_starttls_plaintext_injection_is_discarded(start_gateway, tls_files):
    """CVE-2024-34083 (fixed in aiosmtpd 1.4.6): commands pipelined after STARTTLS
    in the same plaintext segment must not run inside the TLS session."""
    gw = await start_gateway(smtp={"enabled": True, "tls_cert": str(tls_files / "server.pem"),
                                   "tls_key": str(tls_files / "server.key")})
    client = await WireClient.connect(gw.listeners["smtp"].port)
    await client.command("EHLO test")
    await client.send(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")
    assert (await client.reply()).code == 220
    context = ssl.create_default_context(cafile=str(tls_files / "ca.pem"))
    await client.writer.start_tls(context, server_hostname="127.0.0.1")
    # Had the injected MAIL run inside TLS, its reply ("503 ... HELO first")
    # would be the first thing read here instead of NOOP's 250.
    reply = await client.command("NOOP")
    assert reply.code == 250, reply
    await client.command("EHLO test")
    assert (await client.command("MAIL FROM:<real@customer.test>")).code == 250
    await client.close()
