"""SPEC §3.3–3.7 end to end through LMTP: states, resolution, auto-replies, plus tags."""
from __future__ import annotations

import pytest

from gateway.config import MatchingSection
from tests.conftest import run_sql
from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, mail, outgoing


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS)


async def new_ticket(gw, **fields) -> str:
    """A new Ticket from a new mail (distinct content: same content would be a duplicate)."""
    import uuid
    fields.setdefault("body", f"Please help ({uuid.uuid4().hex[:6]}).")
    [copy] = await deliver(gw, mail(**fields))
    return copy.targets[0]["ref"]


async def reply_by_subject(gw, ref: str, **fields):
    [copy] = await deliver(gw, mail(subject=f"Re: [{ref}] Help", **fields))
    return copy


# -- R-E1..R-E3: every state ------------------------------------------------------------

@pytest.mark.parametrize("kind,state,wait_type,after", [
    ("Ticket", "DRAFT", None, "DRAFT"),
    ("Ticket", "TO_DO", None, "TO_DO"),
    ("Ticket", "IN_PROGRESS", None, "IN_PROGRESS"),
    ("Ticket", "WAITING", "other", "WAITING"),
    ("Ticket", "WAITING", "more_info", "TO_DO"),
    ("Ticket", "RESOLVED", None, "TO_DO"),
    ("Case", "IN_PROGRESS", None, "IN_PROGRESS"),
    ("Case", "WAITING", "more_info", "TO_DO"),
    ("Case", "RESOLVED", None, "TO_DO"),
])
async def test_r_e1_r_e2_r_e3_a_reply_in_each_state(gw, kind, state, wait_type, after):
    item = await gw.create_workitem(kind=kind, connector="fr", state="TO_DO")
    await gw.transition(item.ref, state, wait_type)
    copy = await reply_by_subject(gw, item.ref)
    assert copy.targets == [{"ref": item.ref, "action": "appended"}]
    updated = await gw.workitem(item.ref)
    assert updated.state == after and updated.new_info is True


async def test_r_e2_action_waiting_for_more_info_moves_its_waiting_parent_case(gw):
    case = await gw.create_workitem(kind="Case", connector="fr")
    action = await gw.create_workitem(kind="Action", connector="fr", parent=case.ref)
    await gw.transition(case.ref, "WAITING", "more_info")
    await gw.transition(action.ref, "WAITING", "more_info")
    await reply_by_subject(gw, action.ref)
    assert (await gw.workitem(action.ref)).state == "TO_DO"
    assert (await gw.workitem(case.ref)).state == "IN_PROGRESS"


async def test_r_e6_every_change_emits_an_event(gw):
    ref = await new_ticket(gw)
    await gw.transition(ref, "WAITING", "more_info")
    await reply_by_subject(gw, ref)
    events = [(e["type"], e["ref"]) for e in await gw.store.events(0, 100)]
    assert events == [("workitem.created", ref), ("outbound.queued", ref),
                      ("workitem.state_changed", ref), ("workitem.state_changed", ref),
                      ("email.appended", ref)]


# -- R-M5: resolution ---------------------------------------------------------------------

async def test_r_m5_split_ticket_mail_goes_to_every_child(gw):
    ref = await new_ticket(gw)
    children = await gw.split(ref, 2)
    copy = await reply_by_subject(gw, ref)
    assert sorted(t["ref"] for t in copy.targets) == sorted(c.ref for c in children)


async def test_r_m5_merged_ticket_mail_goes_to_the_target(gw):
    first, second = await new_ticket(gw), await new_ticket(gw)
    await gw.merge([first], second)
    copy = await reply_by_subject(gw, first)
    assert copy.targets == [{"ref": second, "action": "appended"}]


async def test_r_m5_converted_ticket_mail_goes_to_the_case(gw):
    ref = await new_ticket(gw)
    case = await gw.convert(ref)
    copy = await reply_by_subject(gw, ref)
    assert copy.targets == [{"ref": case.ref, "action": "appended"}]


async def test_r_m5_closed_item_mail_goes_to_its_open_parent(gw):
    case = await gw.create_workitem(kind="Case", connector="fr")
    action = await gw.create_workitem(kind="Action", connector="fr", parent=case.ref)
    await gw.transition(action.ref, "CLOSED")
    copy = await reply_by_subject(gw, action.ref)
    assert copy.targets == [{"ref": case.ref, "action": "appended"}]


async def test_r_m5_closed_item_without_open_parent_makes_a_copied_item(gw):
    ref = await new_ticket(gw, cc=["dave@customer.test"])
    await gw.store.transaction(lambda txn: _set_custom(txn, ref))
    await gw.transition(ref, "CLOSED")
    copy = await reply_by_subject(gw, ref, sender="erin@customer.test")
    assert copy.outcome == "created"
    new = await gw.workitem(copy.targets[0]["ref"])
    assert new.copied_from == ref and new.custom_data["contract"] == "C-1"
    assert set(new.contacts) == {"carol@customer.test", "dave@customer.test", "erin@customer.test"}
    old_emails = set(await gw.workitems.workitem_emails(ref))
    assert old_emails <= set(await gw.workitems.workitem_emails(new.ref))  # communications copied


async def _set_custom(txn, ref):
    item = await txn.workitem(ref)
    item.custom_data = {"contract": "C-1"}
    await txn.save_workitem(item)


# -- R-A1..R-A4: auto-generated mail --------------------------------------------------------

AUTOGEN_CASES = {
    "x-autoreply": {"X-Autoreply": "yes"},
    "x-autorespond": {"X-Autorespond": "Out of office"},
    "auto-submitted": {"Auto-Submitted": "auto-replied"},
    "return-path-null": {"Return-Path": "<>"},
}


@pytest.mark.parametrize("rule,headers", AUTOGEN_CASES.items())
async def test_r_a4_new_item_from_auto_generated_mail_gets_no_acknowledgement(gw, rule, headers):
    [copy] = await deliver(gw, mail(headers=headers))
    assert copy.outcome == "created"
    assert f"rule {rule}" in copy.trace[2]["reason"]
    item = await gw.workitem(copy.targets[0]["ref"])
    assert item.send_automated_emails is False
    assert await outgoing(gw, item.ref) == []


async def test_r_a1_delivery_report_is_auto_generated(gw):
    report = mail()
    report.make_mixed()
    report.replace_header("Content-Type", 'multipart/report; report-type=delivery-status;'
                          f' boundary="{report.get_boundary()}"')
    [copy] = await deliver(gw, report)
    assert "rule content-type-report" in copy.trace[2]["reason"]
    assert await outgoing(gw, copy.targets[0]["ref"]) == []


async def test_r_a3_out_of_office_reply_to_an_acknowledgement_is_ignored(gw):
    ref = await new_ticket(gw)
    [ack] = await outgoing(gw, ref)
    ooo = mail(subject="Out of office: [1-T] Help", in_reply_to=ack["Message-ID"],
               headers={"Auto-Submitted": "auto-replied"})
    [copy] = await deliver(gw, ooo)
    assert (copy.outcome, copy.reason) == ("ignored", "auto_reply_to_automated")
    assert (await gw.workitem(ref)).state == "TO_DO"


async def test_r_a3_r_e5_out_of_office_reply_to_an_agent_mail_is_appended(gw):
    ref = await new_ticket(gw)
    await gw.transition(ref, "WAITING", "more_info")
    _, message_id = await gw.send_email(ref, to=["carol@customer.test"], subject="Question",
                                        body="Which printer?")
    ooo = mail(subject="Out of office: Question", in_reply_to=message_id,
               headers={"Auto-Submitted": "auto-replied"})
    [copy] = await deliver(gw, ooo)
    assert copy.targets == [{"ref": ref, "action": "appended"}]   # R-E5
    assert (await gw.workitem(ref)).state == "TO_DO"


async def test_r_s1_the_gateway_s_own_mail_coming_back_is_own_mail(gw):
    ref = await new_ticket(gw)
    [ack] = await outgoing(gw, ref)
    from tests.e2e.helpers import WIRE, deliver_raw
    await deliver_raw(gw, ack.as_bytes(policy=WIRE), ["fr@corp.test"], sender="fr@corp.test")
    copies = [c for c in await gw.store.emails_by_message_id(ack["Message-ID"])
              if c.direction == "incoming"]
    assert [(c.outcome, c.reason) for c in copies] == [("own_mail", "sent_by_gateway")]


# -- R-P1..R-P3, R-M1, R-M3: plus tags -----------------------------------------------------

@pytest.fixture
async def mixed(start_gateway):
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                               matching=MatchingSection(mode="mixed"))


async def test_r_m1_mixed_mode_plus_tags_name_several_items(mixed):
    first, second = await new_ticket(mixed), await new_ticket(mixed)
    [copy] = await deliver(mixed, mail(to=[f"fr+{first}@corp.test", f"fr+{second}@corp.test"],
                                       subject="About both"), rcpts=["fr@corp.test"])
    assert sorted(t["ref"] for t in copy.targets) == sorted([first, second])


async def test_r_o2_acknowledgement_from_is_plus_addressed_in_mixed_mode(mixed):
    ref = await new_ticket(mixed)
    [ack] = await outgoing(mixed, ref)
    assert ack["From"] == f"fr+{ref}@corp.test"
    [copy] = await deliver(mixed, mail(to=[f"fr+{ref}@corp.test"], subject="thanks"),
                           rcpts=[f"fr+{ref}@corp.test"])
    assert copy.targets == [{"ref": ref, "action": "appended"}]


async def test_r_p2_tags_naming_live_and_test_items_are_unprocessed(mixed):
    live = await mixed.create_workitem(kind="Ticket", connector="fr")
    test = await mixed.create_workitem(kind="Ticket", connector="fr", mode="test")
    [copy] = await deliver(mixed, mail(to=[f"fr+{live.ref}@corp.test",
                                           f"fr+{test.ref}@corp.test"]),
                           rcpts=["fr@corp.test"])
    assert (copy.outcome, copy.reason) == ("unprocessed", "mixed_live_test")


async def test_r_p3_tags_are_not_used_in_mode_off(gw):
    ref = await new_ticket(gw)
    [copy] = await deliver(gw, mail(to=[f"fr+{ref}@corp.test"], subject="no ref here"),
                           rcpts=["fr@corp.test"])
    assert copy.outcome == "created"
    assert "not used in mode off" in copy.trace[3]["reason"]


async def test_r_m3_plus_only_ignores_subject_refs_but_follows_incoming_threads(start_gateway):
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                             matching=MatchingSection(mode="plus_only"))
    original = mail()
    [first] = await deliver(gw, original)
    ref = first.targets[0]["ref"]
    [by_subject] = await deliver(gw, mail(subject=f"Re: [{ref}] Help"))
    assert by_subject.outcome == "created"                 # rule 3 is off in plus_only
    [ack] = await outgoing(gw, ref)
    [to_ack] = await deliver(gw, mail(subject="Re", in_reply_to=ack["Message-ID"]))
    assert to_ack.outcome == "created"                     # outgoing Message-IDs do not count
    [thread] = await deliver(gw, mail(subject="Re", in_reply_to=original["Message-ID"]))
    assert thread.targets == [{"ref": ref, "action": "appended"}]


# -- R-D1..R-D4: dedup --------------------------------------------------------------------

async def test_r_d2_same_visible_content_again_is_a_duplicate_for_that_target(gw):
    first = mail(subject="Same", body="Same body.")
    second = mail(subject="Same", body="Same   body.")   # new Message-ID, same F2
    [a] = await deliver(gw, first)
    [b] = await deliver(gw, second)
    assert a.outcome == "created"
    assert (b.outcome, b.reason) == ("duplicate", "every_target_already_received")


async def test_r_d4_fingerprints_older_than_the_window_are_pruned(gw, tmp_path):
    [a] = await deliver(gw, mail(subject="Old", body="Old body."))
    await run_sql(tmp_path / "mailgate.db",
                  "UPDATE fingerprints SET created_at = created_at - 31 * 86400",
                  "UPDATE emails SET processed_at = processed_at - 31 * 86400")
    assert await gw.pipeline.prune() > 0
    [b] = await deliver(gw, mail(subject="Old", body="Old body."))
    assert b.outcome == "created"


async def test_r_d3_exact_repeat_on_the_same_connector_stops_at_dedup(gw):
    message = mail(to=["fr@corp.test", "ma@corp.test"], subject="Twice")
    await deliver(gw, message)                    # one copy for fr, one for ma
    await deliver(gw, message, rcpts=["fr@corp.test"])   # the MTA delivers fr's again
    copies = await gw.store.emails_by_message_id(message["Message-ID"])
    fr = sorted((c.id, c.outcome, c.reason) for c in copies if c.connector == "fr")
    assert [o for _, o, _ in fr] == ["created", "duplicate"]
    assert fr[1][2] == f"same_bytes_as_email_{fr[0][0]}"
    repeat = next(c for c in copies if c.id == fr[1][0])
    assert [line["stage"] for line in repeat.trace][-1] == "dedup"


# -- R-B3: loop breakers for automated mail -------------------------------------------------

@pytest.mark.parametrize("sender,headers", [
    ("noreply@shop.test", {}),
    ("MAILER-DAEMON@mx.customer.test", {}),
    ("newsletter-bounces@lists.test", {}),
    ("carol@customer.test", {"List-Id": "<support.lists.customer.test>"}),
    ("carol@customer.test", {"Precedence": "bulk"}),
])
async def test_r_b3_no_acknowledgement_to_mailers_no_reply_or_lists(gw, sender, headers):
    [copy] = await deliver(gw, mail(sender=sender, headers=headers, subject="Hi"),
                           sender=sender)
    assert copy.outcome == "created"
    assert await outgoing(gw, copy.targets[0]["ref"]) == []
    assert "(R-B3)" in copy.trace[-1]["reason"]


async def test_r_b3_automated_mail_budget_per_recipient_per_day(start_gateway):
    from gateway.config import OutboundSection
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                             outbound=OutboundSection(ack_budget_per_day=2))
    acked = []
    for n in range(3):
        [copy] = await deliver(gw, mail(subject=f"Problem {n}", body=f"Details {n}."))
        acked.append(len(await outgoing(gw, copy.targets[0]["ref"])))
    assert acked == [1, 1, 0]


async def test_r_s1_agent_mail_fed_back_is_own_mail_and_the_reply_appends_by_rule_1(gw):
    from email import message_from_bytes
    from email import policy as email_policy

    from tests.e2e.helpers import WIRE, deliver_raw
    ref = await new_ticket(gw)
    email_id, message_id = await gw.send_email(ref, to=["carol@customer.test"],
                                               subject="Question", body="Which printer?")
    sent = message_from_bytes(await gw.store.raw(email_id), policy=email_policy.default)
    await deliver_raw(gw, sent.as_bytes(policy=WIRE), ["fr@corp.test"], sender="fr@corp.test")
    [echo] = [c for c in await gw.store.emails_by_message_id(message_id)
              if c.direction == "incoming"]
    assert echo.outcome == "own_mail"
    [reply] = await deliver(gw, mail(subject="Re: Question", body="The blue one.",
                                     in_reply_to=message_id))
    assert reply.targets == [{"ref": ref, "action": "appended"}]
    assert "by gateway_message_id" in reply.trace[4]["reason"]


async def test_r_o2_agent_mail_tags_gateway_addresses_with_the_linked_items(mixed):
    from email import message_from_bytes
    from email import policy as email_policy
    first = await new_ticket(mixed)
    other = await mixed.create_workitem(kind="Ticket", connector="ma")
    await mixed.link(first, other.ref)
    email_id, _ = await mixed.send_email(first, to=["carol@customer.test"],
                                         cc=["ma@corp.test"], subject="Both of you",
                                         body="Shared.", share_with_linked=True)
    sent = message_from_bytes(await mixed.store.raw(email_id), policy=email_policy.default)
    assert sent["From"] == f"fr+{first}@corp.test"
    assert sent["Cc"] == f"ma+{other.ref}@corp.test"
    assert email_id in await mixed.workitems.workitem_emails(other.ref)     # R-O6: shared
