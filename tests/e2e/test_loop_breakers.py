"""R-B3 loop breakers end to end through LMTP (reliability A8, auto-reply loops): the
per-sender intake budget and the per-work-item reopen budget (the per-recipient acknowledgement budget has its own
tests with outbound mail)."""
from __future__ import annotations

import uuid

from gateway.config import LoopsSection
from tests.conftest import run_sql
from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, mail, outgoing, \
    work_item_count


async def loop_gateway(start_gateway, **loops):
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                               loops=LoopsSection(**loops))


async def new_mail(gw, *, sender="carol@customer.test", to=("fr@corp.test",), **fields):
    """A distinct mail from ``sender`` (distinct content: the same bytes are a duplicate)."""
    [copy] = await deliver(gw, mail(sender=sender, to=to,
                                    body=f"Please help ({uuid.uuid4().hex[:8]}).", **fields))
    return copy


async def age(tmp_path, sql: str, seconds: float) -> None:
    """Move stored times ``seconds`` into the past, as if that much time had gone by."""
    await run_sql(tmp_path / "mailgate.db", sql.format(seconds=seconds))


# -- the per-sender intake budget -------------------------------------------------------

async def test_r_b3_mail_over_a_senders_budget_ends_unprocessed_sender_flood(start_gateway):
    gw = await loop_gateway(start_gateway, sender_budget=3)
    for _ in range(3):
        assert (await new_mail(gw)).outcome == "created"

    flood = await new_mail(gw)

    assert (flood.outcome, flood.reason, flood.targets) == ("unprocessed", "sender_flood", [])
    last = flood.trace[-1]
    assert last["stage"] == "sender-budget" and "R-B3" in last["reason"]
    assert "carol@customer.test already brought fr 3 mails in the last 10 minutes" \
        in last["reason"]
    assert await work_item_count(gw) == 3                      # nothing made, nothing acked
    assert [len(await outgoing(gw, f"{n}-T")) for n in (1, 2, 3)] == [1, 1, 1]
    # The budget is per sender and per connector: others are not held back.
    assert (await new_mail(gw, sender="dave@customer.test")).outcome == "created"
    assert (await new_mail(gw, to=("ma@corp.test",))).outcome == "created"
    # A plus tag does not make a new sender.
    tagged = await new_mail(gw, sender="carol+loop@customer.test")
    assert tagged.reason == "sender_flood"


async def test_r_b3_the_default_budget_holds_back_the_21st_mail_in_ten_minutes(start_gateway):
    gw = await loop_gateway(start_gateway)
    outcomes = [(await new_mail(gw, subject=f"Alert {n}")).outcome for n in range(21)]
    assert outcomes == ["created"] * 20 + ["unprocessed"]


async def test_r_b3_a_budget_of_zero_is_no_limit(start_gateway):
    gw = await loop_gateway(start_gateway, sender_budget=0)
    outcomes = {(await new_mail(gw)).outcome for _ in range(25)}
    assert outcomes == {"created"}


async def test_r_b3_duplicates_and_replies_to_threads_count_only_when_they_reach_apply(
        start_gateway):
    gw = await loop_gateway(start_gateway, sender_budget=2)
    first = mail(body="The same bytes, delivered three times.")
    for _ in range(3):
        await deliver(gw, first)                               # created, then duplicates
    second = await new_mail(gw)

    assert second.outcome == "created"                         # 2 of 2: the duplicates are free
    assert (await new_mail(gw)).reason == "sender_flood"


async def test_r_b3_a_flood_that_goes_on_stays_held_and_a_quiet_sender_gets_its_budget_back(
        start_gateway, tmp_path):
    gw = await loop_gateway(start_gateway, sender_budget=1, sender_window_minutes=10)
    assert (await new_mail(gw)).outcome == "created"
    held = await new_mail(gw)
    assert held.reason == "sender_flood"
    # Ten minutes later for the created one only: the held one still counts, so the
    # loop, still going, stays broken.
    await age(tmp_path, "UPDATE emails SET processed_at = processed_at - {seconds}"
                        " WHERE outcome = 'created'", 601)
    assert (await new_mail(gw)).reason == "sender_flood"
    # Ten quiet minutes for everything: the sender's mail flows again.
    await age(tmp_path, "UPDATE emails SET processed_at = processed_at - {seconds}", 601)
    assert (await new_mail(gw)).outcome == "created"


async def test_r_b3_held_mail_can_be_placed_by_a_person(start_gateway):
    """R-U1: sender_flood mail is kept; the host can still put it where it belongs."""
    gw = await loop_gateway(start_gateway, sender_budget=1)
    ticket = (await new_mail(gw)).targets[0]["ref"]
    held = await new_mail(gw, subject="Something else entirely")
    assert held.reason == "sender_flood"

    verdict = await gw.pipeline.place(held.id, ref=ticket)

    assert verdict.outcome == "appended"
    assert held.id in await gw.workitems.workitem_emails(ticket)


# -- the per-work-item reopen budget ------------------------------------------------------

async def reply(gw, ref: str):
    [copy] = await deliver(gw, mail(subject=f"Re: [{ref}] Help",
                                    body=f"Thanks ({uuid.uuid4().hex[:8]})."))
    return copy


async def test_r_b3_past_its_reopen_budget_a_resolved_item_gets_the_mail_but_stays_resolved(
        start_gateway, tmp_path):
    gw = await loop_gateway(start_gateway, reopen_budget=2, sender_budget=0)
    ref = (await new_mail(gw)).targets[0]["ref"]
    for _ in range(2):
        await gw.transition(ref, "RESOLVED")
        assert (await reply(gw, ref)).outcome == "appended"
        assert (await gw.workitem(ref)).state == "TO_DO"         # R-E3 reopened
    await gw.transition(ref, "RESOLVED")
    await run_sql(tmp_path / "mailgate.db",              # an agent has read everything
                  f"UPDATE work_items SET new_info = 0 WHERE ref = '{ref}'")

    third = await reply(gw, ref)

    assert third.targets == [{"ref": ref, "action": "appended"}]  # never lost
    item = await gw.workitem(ref)
    assert item.state == "RESOLVED" and item.new_info is True
    note = third.trace[-1]["reason"]
    assert f"{ref} stays RESOLVED: mail reopened it 2 times in the last 24 hours" in note
    assert "R-B3" in note
    changes = [e for e in await gw.store.events(0, 1000)
               if e["type"] == "workitem.state_changed" and e["email_id"] == third.id]
    assert changes == []
    # A day later the budget is back.
    await age(tmp_path, "UPDATE reopens SET at = at - {seconds}", 86401)
    await reply(gw, ref)
    assert (await gw.workitem(ref)).state == "TO_DO"


# -- acknowledgements to CC'd people ------------------------------------------------------

async def test_r_b3_an_acknowledgement_goes_to_at_most_ten_ccd_people(start_gateway):
    """Anyone can write thousands of addresses into Cc: with ``ack_cc`` the gateway would
    mail its acknowledgement (carrying their Subject) to all of them."""
    from gateway.config import BootstrapRoute
    route = BootstrapRoute(connector="fr", email_address="fr@corp.test", fallback=True,
                           send_automated_emails=True, ack_cc=True)
    gw = await start_gateway(connectors=DEPARTMENTS, routes=[route])
    ccs = [f"person{n}@elsewhere.test" for n in range(15)]
    copy = await new_mail(gw, cc=tuple(ccs))

    [ack] = await outgoing(gw, copy.targets[0]["ref"])
    acked = [a.strip() for a in ack["Cc"].split(",")]
    assert acked == ccs[:10] and ack["To"] == "carol@customer.test"
    assert "5 more CC'd addresses get no acknowledgement: at most 10 (R-B3)" in \
        copy.trace[-1]["reason"]
