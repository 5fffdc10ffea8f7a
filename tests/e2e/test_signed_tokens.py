"""R-B1 signed tokens end to end through LMTP (reliability A10, tag forgery): the gateway
signs the plus tags, body tags and Message-IDs it hands out, and only signed ones (or,
in the transition window, unsigned ones of older items) place mail on a work item."""
from __future__ import annotations

import re
import uuid

from gateway.config import MatchingSection
from tests.e2e.helpers import ACKING_FALLBACKS, DEPARTMENTS, deliver, mail, outgoing

SECRET = "a-secret-of-more-than-sixteen-bytes"


async def signing_gateway(start_gateway, **matching):
    matching.setdefault("mode", "mixed")
    matching.setdefault("sign_tokens", True)
    matching.setdefault("token_secret", SECRET)
    return await start_gateway(connectors=DEPARTMENTS, routes=ACKING_FALLBACKS,
                               matching=MatchingSection(**matching))


async def write(gw, *, to=("fr@corp.test",), subject="Still broken", **fields):
    fields.setdefault("body", f"More ({uuid.uuid4().hex[:8]}).")
    [copy] = await deliver(gw, mail(to=to, subject=subject, **fields), rcpts=["fr@corp.test"])
    return copy


async def first_ticket(gw):
    """A ticket and its acknowledgement (which carries the signed tokens)."""
    copy = await write(gw, subject="Printer on fire")
    ref = copy.targets[0]["ref"]
    [ack] = await outgoing(gw, ref)
    return ref, ack


async def test_r_b1_what_the_gateway_hands_out_is_signed_and_a_reply_to_it_lands(start_gateway):
    gw = await signing_gateway(start_gateway)
    ref, ack = await first_ticket(gw)
    item = await gw.workitem(ref)
    sig = gw.pipeline_settings.tokens.signature
    assert ack["From"] == f"fr+{ref}.{sig(ref)}@corp.test"
    assert ack["Message-ID"].endswith(f".{item.uuid}.{sig(item.uuid)}@mailgate.invalid>")
    assert f"[WI-{item.uuid}.{sig(item.uuid)}]" in ack.get_content()

    by_tag = await write(gw, to=(ack["From"],))
    by_message_id = await write(gw, in_reply_to=ack["Message-ID"])
    by_body_tag = await write(gw, body=f"As you wrote: [WI-{item.uuid}.{sig(item.uuid)}]")

    for copy, method in ((by_tag, "plus_tag"), (by_message_id, "gateway_message_id"),
                         (by_body_tag, "body_tag")):
        assert copy.targets == [{"ref": ref, "action": "appended"}], method
        assert f"{ref} by {method}" in copy.trace[4]["reason"]


async def test_r_b1_guessed_or_forged_tokens_are_ignored_and_traced(start_gateway):
    gw = await signing_gateway(start_gateway)
    ref, ack = await first_ticket(gw)
    item = await gw.workitem(ref)
    forged_id = f"<{uuid.uuid4()}.{item.uuid}.aaaaaa@mailgate.invalid>"

    guessed = await write(gw, to=(f"fr+{ref}@corp.test",))
    badly_signed = await write(gw, to=(f"fr+{ref}.aaaaaa@corp.test",))
    forged = await write(gw, in_reply_to=forged_id)
    unsigned_tag = await write(gw, body=f"[WI-{item.uuid}]")

    assert f"tag {ref} ignored: unsigned (R-B1)" in guessed.trace[3]["reason"]
    assert f"tag {ref} ignored: badly signed (R-B1)" in badly_signed.trace[3]["reason"]
    assert f"Message-ID of {ref} ignored: badly signed (R-B1)" in forged.trace[4]["reason"]
    assert f"body tag of {ref} ignored: unsigned (R-B1)" in unsigned_tag.trace[4]["reason"]
    for copy in (guessed, badly_signed, forged, unsigned_tag):
        assert copy.targets[0]["action"] == "created"        # a new item, not 1-T


async def test_r_b1_the_gateways_signed_mail_coming_back_is_its_own(start_gateway):
    from tests.e2e.helpers import WIRE, deliver_raw
    gw = await signing_gateway(start_gateway)
    ref, ack = await first_ticket(gw)
    await deliver_raw(gw, ack.as_bytes(policy=WIRE), ["fr@corp.test"], sender="fr@corp.test")
    echo = [c for c in await gw.store.emails_by_message_id(ack["Message-ID"])
            if c.direction == "incoming"]
    assert [c.outcome for c in echo] == ["own_mail"]                  # R-S1


async def test_r_b1_unsigned_tokens_of_older_items_work_during_the_transition(start_gateway):
    plain = await signing_gateway(start_gateway, sign_tokens=False)
    ref, ack = await first_ticket(plain)
    assert re.fullmatch(rf"fr\+{ref}@corp\.test", ack["From"])        # handed out unsigned
    await plain.stop()

    signing = await signing_gateway(start_gateway)                    # same database
    reply = await write(signing, to=(ack["From"],), in_reply_to=ack["Message-ID"])
    assert reply.targets == [{"ref": ref, "action": "appended"}]
    await signing.stop()

    closed = await signing_gateway(start_gateway, unsigned_token_days=0)   # window over
    late = await write(closed, to=(ack["From"],))
    assert late.targets[0]["action"] == "created"
    assert f"tag {ref} ignored: unsigned (R-B1)" in late.trace[3]["reason"]


async def test_r_b1_a_signed_tag_replayed_onto_another_ref_is_refused(start_gateway):
    gw = await signing_gateway(start_gateway)
    first, ack = await first_ticket(gw)
    second = (await write(gw, subject="Scanner jammed")).targets[0]["ref"]
    signature = ack["From"].split("@")[0].rpartition(".")[2]        # the tag of the first

    replayed = await write(gw, to=(f"fr+{second}.{signature}@corp.test",))

    assert f"tag {second} ignored: badly signed (R-B1)" in replayed.trace[3]["reason"]
    assert replayed.targets[0]["ref"] not in (first, second)

