"""R-B2 sender binding end to end through LMTP (reliability A9, ticket hijacking by a
forged reference): with ``ref_requires_participant`` a guessed ref in the Subject or
body no longer lets a stranger post into a work item."""
from __future__ import annotations

import uuid

import pytest

from gateway.config import MatchingSection
from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, mail, outgoing


async def bound_gateway(start_gateway, **matching):
    matching.setdefault("ref_requires_participant", True)
    matching.setdefault("trusted_authserv_ids", ("mx.corp.test",))
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                               matching=MatchingSection(**matching))


async def write(gw, sender: str, subject: str = "Re: [1-T] Help", **fields):
    fields.setdefault("body", f"About that ({uuid.uuid4().hex[:8]}).")
    [copy] = await deliver(gw, mail(sender=sender, subject=subject, **fields), sender=sender)
    return copy


@pytest.fixture
async def gw(start_gateway):
    gw = await bound_gateway(start_gateway)
    first = await write(gw, "carol@customer.test", subject="Printer on fire")
    assert first.targets == [{"ref": "1-T", "action": "created"}]
    return gw


async def test_r_b2_a_stranger_naming_a_ref_gets_a_new_item_and_the_trace_says_why(gw):
    copy = await write(gw, "mallory@evil.test")
    assert copy.targets == [{"ref": "2-T", "action": "created"}]
    assert ("ref 1-T not used: mallory@evil.test is not a contact of 1-T and shares no "
            "contact's domain (R-B2)") in copy.trace[4]["reason"]
    body_ref = await write(gw, "mallory@evil.test", subject="Hello", body="See 1-T please.")
    assert body_ref.targets[0]["action"] == "created"


async def test_r_b2_the_contact_and_a_colleague_still_reach_the_item(gw):
    assert (await write(gw, "carol@customer.test")).targets == [
        {"ref": "1-T", "action": "appended"}]
    assert (await write(gw, "dave@customer.test")).targets == [
        {"ref": "1-T", "action": "appended"}]


async def test_r_b2_a_trusted_mtas_dmarc_pass_for_the_contacts_domain_counts(gw):
    vouched = await write(gw, "billing@customer-invoices.test", headers={
        "Authentication-Results": "mx.corp.test; dmarc=pass header.from=customer.test"})
    assert vouched.targets == [{"ref": "1-T", "action": "appended"}]
    forged = await write(gw, "billing@customer-invoices.test", headers={
        "Authentication-Results": "relay.evil.test; dmarc=pass header.from=customer.test"})
    assert forged.targets[0]["action"] == "created"


async def test_r_b2_replies_to_the_gateways_mail_are_not_bound(gw):
    [ack] = await outgoing(gw, "1-T")
    reply = await write(gw, "assistant@elsewhere.test", subject="Re: Printer on fire",
                        in_reply_to=ack["Message-ID"])
    assert reply.targets == [{"ref": "1-T", "action": "appended"}]       # R-M2 rule 1


async def test_r_b2_off_by_default_a_ref_in_the_subject_is_enough(start_gateway):
    gw = await bound_gateway(start_gateway, ref_requires_participant=False)
    await write(gw, "carol@customer.test", subject="Printer on fire")
    assert (await write(gw, "mallory@evil.test")).targets == [
        {"ref": "1-T", "action": "appended"}]
