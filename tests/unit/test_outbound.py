"""Composing acknowledgements (R-O2, R-O3, R-O5): shape, and nothing injected."""
from __future__ import annotations

import email
from email import policy

import pytest

from gateway.model import Connector, WorkItem
from gateway.outbound.compose import clean_header, compose_ack

ITEM = WorkItem(ref="12-T", kind="Ticket", uuid="0b2e4c0a-1111-4222-8333-944455556666",
                connector="fr")
FR = Connector(name="fr", service="lmtp", primary_address="fr@corp.test")
LONG_ID = "<" + "x" * 90 + "@customer.example.test>"


def ack(**overrides):
    fields = dict(item=ITEM, connector=FR, to=["carol@customer.test"], cc=[], subject="Help",
                  in_reply_to=LONG_ID, domain="gw1.mailgate", mode="off",
                  hide_plus_in_from=False)
    fields.update(overrides)
    message, message_id = compose_ack(**fields)
    raw = message.as_bytes()
    return raw, message_id, email.message_from_bytes(raw, policy=policy.default)


def test_r_o3_long_in_reply_to_is_written_verbatim_not_as_encoded_words():
    raw, _, parsed = ack()
    assert f"In-Reply-To: {LONG_ID}\r\n".encode() in raw
    assert f"References: {LONG_ID}\r\n".encode() in raw
    assert b"=?utf-8?" not in raw


def test_r_o3_message_id_names_the_work_item():
    _, message_id, parsed = ack()
    local, _, domain = message_id.strip("<>").partition("@")
    assert domain == "gw1.mailgate" and local.endswith("." + ITEM.uuid)
    assert parsed["Message-ID"] == message_id


def test_r_o5_ack_is_marked_automated_and_carries_the_ref():
    _, _, parsed = ack()
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Subject"] == "[12-T] Help"
    assert f"[WI-{ITEM.uuid}]" in parsed.get_content()


@pytest.mark.parametrize("mode,hide,from_,reply_to", [
    ("off", False, "fr@corp.test", None),
    ("mixed", False, "fr+12-T@corp.test", None),
    ("plus_only", True, "fr@corp.test", "fr+12-T@corp.test"),
])
def test_r_o2_from_is_plus_addressed_in_mixed_and_plus_only(mode, hide, from_, reply_to):
    _, _, parsed = ack(mode=mode, hide_plus_in_from=hide)
    assert parsed["From"] == from_ and parsed["Reply-To"] == reply_to


@pytest.mark.parametrize("evil", ["Help\r\nBcc: victim@x.test", "Help\nX-Evil: 1",
                                  "Help\u2028X-Evil: 1", "Help\x00\rX-Evil: 1"])
def test_header_injection_through_the_subject_is_impossible(evil):
    raw, _, parsed = ack(subject=evil, in_reply_to="<a@b>\r\nX-Injected: yes")
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None and parsed["X-Injected"] is None
    assert b"\r\nX-Evil" not in raw and b"\r\nBcc" not in raw


def test_clean_header_keeps_ordinary_text():
    assert clean_header("  Grüße, bitte\tantworten ") == "Grüße, bitte\tantworten"


# -- the acknowledgement written directly (ack_bytes) ---------------------------------------

_ALPHABET = "abcXYZ 019 .,:;!?'\"()[]<>@=_-\t\r\n" + "éü—日本\u00a0\u2028\x00"


def _ack_cases():
    import random
    rnd = random.Random(7)
    for n in range(400):
        subject = "".join(rnd.choice(_ALPHABET) for _ in range(rnd.randint(0, 140)))
        if n % 10 == 0:
            subject = "=?utf-8?q?x?= " + subject
        if n % 37 == 0:
            subject = "x" * 990
        yield dict(subject=subject,
                   cc=rnd.choice([[], ["dave@customer.test"], ["d@x.test", "e+1@y.test"]]),
                   to=[rnd.choice(["carol@customer.test", "Carol <carol@customer.test>",
                                   "jörg@müller.test", "a b@c.test"])],
                   in_reply_to=rnd.choice([LONG_ID, None, "<a@b>", "junk", "<" + "y" * 990 + "@z>"]),
                   mode=rnd.choice(["off", "mixed", "plus_only"]),
                   hide_plus_in_from=rnd.random() < 0.5)


def test_r_o5_an_ack_written_directly_is_byte_for_byte_what_the_email_package_writes(
        monkeypatch):
    """The pipeline writes acknowledgements without building an EmailMessage (that parses
    every header, milliseconds an ack); the bytes must not change for that: the same
    encoded words, folding, injection protection. Date and Message-ID are pinned."""
    from gateway.outbound import compose
    monkeypatch.setattr(compose, "formatdate", lambda localtime=False: "Mon, 07 Dec 2026 "
                                                                        "22:01:00 -0000")
    monkeypatch.setattr(compose, "new_message_id", lambda item, domain, tokens=None: "<m@x>")
    for case in _ack_cases():
        fields = dict(item=ITEM, connector=FR, domain="gw1.mailgate", **case)
        raw, message_id, summary = compose.ack_bytes(**fields)
        message, _ = compose.compose_ack(**fields)
        assert raw == message.as_bytes(), case
        assert message_id == "<m@x>" and summary["subject"].startswith("[12-T]"), case
