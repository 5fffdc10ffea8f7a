"""R-O4 through a real Postfix relay: what leaves is DKIM-signed and shaped for the reply."""
from __future__ import annotations

import asyncio
import email
from email import policy

import pytest
from aiosmtpd.lmtp import LMTP

from gateway.config import DefaultGatewaySection, DkimKey, OutboundSection
from tests.conftest import free_port
from tests.e2e.helpers import DEPARTMENTS, deliver, mail
from tests.integration.postfix import PostfixInstance
from tests.integration.test_outbound_delivery import ACKS
from tests import opendkim
from tests.integration.test_outbound_dkim import dkimpy_results
from tests.unit.test_dkim_signing import make_ed25519_key, make_key

pytestmark = pytest.mark.postfix


class Inbox:
    """The customer's mailbox: an LMTP server Postfix delivers customer.test to."""

    def __init__(self):
        self.messages: list[bytes] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content)
        self.arrived.set()
        return "\r\n".join("250 2.0.0 ok" for _ in envelope.rcpt_tos)


async def test_r_o4_ack_relayed_by_postfix_carries_verifiable_rsa_and_ed25519_signatures(
        start_gateway, tmp_path):
    key_path, txt = make_key(tmp_path, "corp.test")
    ed_path, ed_txt = make_ed25519_key(tmp_path, "corp.test")
    inbox = Inbox()
    inbox_port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: LMTP(inbox, hostname="inbox.customer.test"), "127.0.0.1", inbox_port)
    relay = PostfixInstance(inbox_port, domains="customer.test")
    await asyncio.to_thread(relay.start)
    try:
        gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=OutboundSection(
            enabled=True, retry_initial=0.2, default_gateway=DefaultGatewaySection(
                host="127.0.0.1", port=relay.smtp_port),
            dkim=(DkimKey(domain="corp.test", selector="mg1", key_file=str(key_path)),
                  DkimKey(domain="corp.test", selector="ed1", key_file=str(ed_path),
                          algorithm="ed25519-sha256"))))
        original = mail(subject="Printer on fire")
        await deliver(gw, original)
        await gw.delivery.drain()
        await asyncio.wait_for(inbox.arrived.wait(), 30)
    finally:
        await asyncio.to_thread(relay.stop)
        server.close()
    [raw] = inbox.messages
    ack = email.message_from_bytes(raw, policy=policy.default)
    item = await gw.workitem("1-T")
    assert ack["From"] == "fr@corp.test" and ack["To"] == "carol@customer.test"
    assert ack["In-Reply-To"] == original["Message-ID"]
    assert ack["Message-ID"].endswith(f".{item.uuid}@mailgate.invalid>")
    assert f"[WI-{item.uuid}]" in ack.get_content()
    assert "by mx.gateway.test (Postfix" in ack["Received"]
    records = {"mg1._domainkey.corp.test": txt.decode(),
               "ed1._domainkey.corp.test": ed_txt.decode()}
    assert dkimpy_results(raw, records) == [True, True]     # as Postfix passed them on
    results = await asyncio.to_thread(opendkim.verify, raw, records, tmp_path / "opendkim")
    assert sorted((r.algorithm, r.result) for r in results) == [
        ("ed25519-sha256", "pass"), ("rsa-sha256", "pass")]
