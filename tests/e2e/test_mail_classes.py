"""R-B4 end to end through LMTP: bounces land on the work item whose mail bounced, the
bounce of an acknowledgement is ignored (R-A3), and every class is in the trace and
the metrics."""
from __future__ import annotations

import pytest

from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, deliver_raw, mail, outgoing


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS)


def headers_only_dsn(original: bytes, *, message_id: str) -> bytes:
    """A delivery status notification as a relay sends it when it returns only the
    headers of the mail that failed (RFC 3464 in RFC 6522, text/rfc822-headers)."""
    head = original.split(b"\r\n\r\n", 1)[0]
    return (b"Return-Path: <>\r\n"
            b"From: Mail Delivery System <MAILER-DAEMON@relay.customer.test>\r\n"
            b"To: fr@corp.test\r\n"
            b"Subject: Undelivered Mail Returned to Sender\r\n"
            b"Message-ID: " + message_id.encode() + b"\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n"
            b"\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
            b"Your message could not be delivered to one or more recipients.\r\n"
            b"\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; relay.customer.test\r\n\r\n"
            b"Final-Recipient: rfc822; carol@customer.test\r\nAction: failed\r\n"
            b"Status: 5.1.1\r\n"
            b"\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\n" + head + b"\r\n"
            b"\r\n--b--\r\n")


async def deliver_dsn(gw, raw: bytes, message_id: str):
    """A bounce reaches the connector from the null sender, as MTAs send them."""
    await deliver_raw(gw, raw, ["fr@corp.test"], sender="")
    [copy] = await gw.store.emails_by_message_id(message_id)
    return copy


async def new_ticket(gw) -> str:
    [copy] = await deliver(gw, mail(subject="Printer on fire"))
    return copy.targets[0]["ref"]


def sample(gw, klass: str) -> float:
    return gw.metrics.registry.get_sample_value("mailgate_mail_classes_total",
                                                {"class": klass})


async def test_r_b4_the_bounce_of_an_agents_mail_lands_on_its_work_item(gw):
    ref = await new_ticket(gw)
    email_id, message_id = await gw.send_email(ref, to=["carol@customer.test"],
                                               subject="Which floor?", body="Which printer?")
    dsn = headers_only_dsn(await gw.store.raw(email_id), message_id="<dsn-1@relay.customer.test>")

    copy = await deliver_dsn(gw, dsn, "<dsn-1@relay.customer.test>")

    assert copy.targets == [{"ref": ref, "action": "appended"}]      # not a new ticket
    autogen, match = copy.trace[2]["reason"], copy.trace[4]["reason"]
    assert "class bounce (rule dsn-report, classes v2)" in autogen
    assert f"bounce of {message_id}" in autogen
    assert f"{ref} by gateway_message_id" in match
    assert await gw.workitem("2-T") is None and sample(gw, "bounce") == 1.0


async def test_r_b4_r_a3_the_bounce_of_an_acknowledgement_is_ignored(gw):
    ref = await new_ticket(gw)
    [ack] = await outgoing(gw, ref)
    email_id = (await gw.store.emails_by_message_id(ack["Message-ID"]))[0].id
    dsn = headers_only_dsn(await gw.store.raw(email_id), message_id="<dsn-2@relay.customer.test>")

    copy = await deliver_dsn(gw, dsn, "<dsn-2@relay.customer.test>")

    assert (copy.outcome, copy.reason) == ("ignored", "auto_reply_to_automated")
    assert copy.id not in await gw.workitems.workitem_emails(ref)       # not appended
    assert await gw.workitem("2-T") is None                       # nor a new ticket


async def test_r_b4_list_mail_is_classed_in_the_trace_and_counted(gw):
    [copy] = await deliver(gw, mail(subject="[users] Upgrade notes",
                                    headers={"List-Id": "Users <users.lists.example.org>"}))
    assert copy.outcome == "created"                         # list mail is still processed
    assert "class list (rule list-id, classes v2)" in copy.trace[2]["reason"]
    assert "no acknowledgement for 1-T: list mail" in copy.trace[-1]["reason"]
    assert sample(gw, "list") == 1.0 and sample(gw, "auto_reply") == 0.0


async def test_r_b4_an_admins_rules_come_before_the_shipped_ones(start_gateway, tmp_path):
    from gateway.config import AutogenSection
    rules = tmp_path / "classes.toml"
    rules.write_text('version = 7\n[[rule]]\nname = "vendor-ndr"\nclass = "bounce"\n'
                     'header = "x-vendor-ndr"\n')
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                             autogen=AutogenSection(classes_file=str(rules)))
    [ndr] = await deliver(gw, mail(subject="Not delivered", headers={"X-Vendor-NDR": "1"}))
    [listed] = await deliver(gw, mail(subject="News", headers={"List-Id": "<n.example.org>"}))
    assert "class bounce (rule vendor-ndr, classes.toml v7)" in ndr.trace[2]["reason"]
    assert "class list (rule list-id, classes v2)" in listed.trace[2]["reason"]   # kept


async def test_r_b4_list_mail_given_another_class_first_is_still_never_acknowledged(
        start_gateway, tmp_path):
    from gateway.config import AutogenSection
    rules = tmp_path / "classes.toml"
    rules.write_text('version = 1\n[[rule]]\nname = "campaign"\nclass = "notification"\n'
                     'header = "x-campaign"\n')
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                             autogen=AutogenSection(classes_file=str(rules)))
    [copy] = await deliver(gw, mail(subject="Spring offers", headers={
        "X-Campaign": "spring", "List-Unsubscribe": "<https://shop.example/u>"}))
    autogen = copy.trace[2]["reason"]
    assert "class notification (rule campaign" in autogen
    assert "list mail too (rule list-unsubscribe)" in autogen
    assert await outgoing(gw, copy.targets[0]["ref"]) == []            # no acknowledgement
