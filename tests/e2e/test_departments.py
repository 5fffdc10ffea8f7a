"""SPEC §3 end to end through LMTP: two departments, fr@ and ma@, on separate connectors."""
from __future__ import annotations

import pytest

from gateway.config import BootstrapConnector, BootstrapRoute
from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, mail, only, outgoing


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS)


async def ack_of(gw, ref):
    [ack] = [m for m in await outgoing(gw, ref) if m["Auto-Submitted"] == "auto-generated"]
    return ack


async def test_r_e4_new_mail_creates_a_ticket_and_queues_an_acknowledgement(gw):
    [copy] = await deliver(gw, mail(subject="Printer on fire"))
    assert (copy.outcome, copy.targets) == ("created", [{"ref": "1-T", "action": "created"}])
    item = await gw.workitem("1-T")
    assert (item.state, item.connector, item.kind, item.mode) == ("TO_DO", "fr", "Ticket", "live")
    assert item.contacts == ["carol@customer.test"] and item.new_info
    ack = await ack_of(gw, "1-T")
    assert ack["Subject"] == "[1-T] Printer on fire"          # R-O5: the ref in the subject
    assert ack["To"] == "carol@customer.test"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["Message-ID"].endswith(f".{item.uuid}@mailgate.invalid>")   # R-O3
    assert f"[WI-{item.uuid}]" in ack.get_content()
    assert [line["stage"] for line in copy.trace] == [
        "sent-id", "dedup", "auto-generated", "plus-address", "match", "route", "sender-budget",
        "apply"]


async def test_r_m2_simple_reply_to_the_acknowledgement_appends(gw):
    await deliver(gw, mail())
    ack = await ack_of(gw, "1-T")
    [copy] = await deliver(gw, mail(subject="Re: [1-T] Help", in_reply_to=ack["Message-ID"]))
    assert (copy.outcome, copy.targets) == ("appended", [{"ref": "1-T", "action": "appended"}])
    assert "1-T by gateway_message_id" in copy.trace[4]["reason"]


async def test_r_m6_reply_all_adding_ma_appends_and_creates_a_linked_item_in_ma(gw):
    await deliver(gw, mail())
    ack = await ack_of(gw, "1-T")
    reply_all = mail(to=["fr@corp.test"], cc=["ma@corp.test"], subject="Re: [1-T] Help",
                     in_reply_to=ack["Message-ID"])
    copies = await deliver(gw, reply_all)
    assert only(copies, "fr").targets == [{"ref": "1-T", "action": "appended"}]
    created = only(copies, "ma")
    assert created.outcome == "created"
    new_ref = created.targets[0]["ref"]
    new_item = await gw.workitem(new_ref)
    assert new_item.connector == "ma" and new_item.linked == ["1-T"]
    assert (await gw.workitem("1-T")).linked == [new_ref]

    # the next reply-all to both reaches both items
    again = mail(to=["fr@corp.test", "ma@corp.test"], subject="Re: Help",
                 in_reply_to=reply_all["Message-ID"])
    copies = await deliver(gw, again)
    assert only(copies, "fr").targets == [{"ref": "1-T", "action": "appended"}]
    assert only(copies, "ma").targets == [{"ref": new_ref, "action": "appended"}]


async def test_r_m2_swapping_fr_for_ma_creates_only_in_ma(gw):
    await deliver(gw, mail())
    ack = await ack_of(gw, "1-T")
    [copy] = await deliver(gw, mail(to=["ma@corp.test"], subject="Re: [1-T] Help",
                                    in_reply_to=ack["Message-ID"]))
    assert copy.connector == "ma" and copy.outcome == "created"
    assert (await gw.workitem(copy.targets[0]["ref"])).connector == "ma"
    assert len(await gw.workitems.workitem_emails("1-T")) == 2   # the first mail and its ack only


async def test_r_m2_cc_d_person_replying_to_the_original_lands_on_the_original_item(gw):
    original = mail(to=["fr@corp.test"], cc=["dave@customer.test"])
    await deliver(gw, original)
    reply = mail(sender="dave@customer.test", to=["fr@corp.test"], subject="Re: Help",
                 in_reply_to=original["Message-ID"])
    [copy] = await deliver(gw, reply, sender="dave@customer.test")
    assert copy.targets == [{"ref": "1-T", "action": "appended"}]
    assert "1-T by in_reply_to" in copy.trace[4]["reason"]


async def test_r_m4_to_one_connector_and_bcc_to_another_only_the_visible_one_works(gw):
    message = mail(to=["fr@corp.test"])
    copies = await deliver(gw, message, rcpts=["fr@corp.test", "ma@corp.test"])
    assert only(copies, "fr").outcome == "created"
    assert (only(copies, "ma").outcome, only(copies, "ma").reason) == (
        "duplicate", "visible_on_connector_fr")


async def test_r_m4_only_bcc_d_is_unprocessed_without_a_wildcard_route(gw):
    [copy] = await deliver(gw, mail(to=["someone@else.test"]), rcpts=["fr@corp.test"])
    assert (copy.outcome, copy.reason) == ("unprocessed", "no_visible_address")


WILDCARDS = [BootstrapRoute(connector=c.name, name=f"{c.name} bcc", email_address="*",
                            sender_list_includes="*@customer.test") for c in DEPARTMENTS]


async def test_r_m4_bcc_d_connectors_with_wildcard_routes_make_one_item(start_gateway):
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS + WILDCARDS)
    copies = await deliver(gw, mail(to=["someone@else.test"]),
                           rcpts=["fr@corp.test", "ma@corp.test"])
    outcomes = sorted((c.connector, c.outcome) for c in copies)
    assert outcomes == [("fr", "created"), ("ma", "duplicate")]
    assert only(copies, "ma").reason == "every_target_already_received"
    # a sender the wildcard routes do not name stays unprocessed
    [copy] = await deliver(gw, mail(sender="eve@stranger.test", to=["x@else.test"]),
                           rcpts=["fr@corp.test"], sender="eve@stranger.test")
    assert (copy.outcome, copy.reason) == ("unprocessed", "no_visible_address")


async def test_r_r1_mailbox_and_alias_with_a_route_each_make_two_items(start_gateway):
    connectors = [BootstrapConnector(name="support", primary_address="support@corp.test",
                                     aliases=("help@corp.test",))]
    routes = [BootstrapRoute(connector="support", name="help", email_address="help@corp.test")]
    gw = await start_gateway(connectors=connectors, routes=routes)
    message = mail(to=["support@corp.test", "help@corp.test"])
    [copy] = await deliver(gw, message, rcpts=["support@corp.test"])
    assert sorted(t["action"] for t in copy.targets) == ["created", "created"]
    # the alias's own delivery of the same bytes is a duplicate (R-D3)
    await deliver(gw, message, rcpts=["help@corp.test"])
    copies = await gw.store.emails_by_message_id(message["Message-ID"])
    assert sorted(c.outcome for c in copies) == ["created", "duplicate"]


async def test_r_r1_alias_without_route_is_unprocessed(start_gateway):
    connectors = [BootstrapConnector(name="support", primary_address="support@corp.test",
                                     aliases=("help@corp.test",))]
    gw = await start_gateway(connectors=connectors)
    [copy] = await deliver(gw, mail(to=["help@corp.test"]))
    assert (copy.outcome, copy.reason) == ("unprocessed", "alias_without_route")
