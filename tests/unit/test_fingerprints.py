"""R-D1: the three fingerprints."""
from __future__ import annotations

from email.message import EmailMessage

from gateway.mail import Mail
from gateway.pipeline.fingerprints import _digest, f1, f2, f3


def message(body: str = "The printer on floor 3 is broken.\n", *, received: str = "mx1",
            message_id: str | None = "<m1@example.org>",
            date: str = "Mon, 3 Jun 2024 10:00:00 +0200",
            subject: str = "Printer broken", to: str = "support@example.test",
            cc: str | None = "bob@example.org",
            attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    msg = EmailMessage()
    msg["Received"] = f"from {received}.example.net by relay.example.org; {date}"
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = date
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    for name, content in attachments:
        msg.add_attachment(content, maintype="application", subtype="pdf", filename=name)
    return bytes(msg)


def fp(raw: bytes) -> tuple[str, str, str]:
    mail = Mail(raw)
    return f1(raw), f2(mail), f3(mail)


def test_r_d1_f1_differs_on_any_byte():
    raw = message()
    assert f1(raw) == f1(bytes(raw))
    for i in (0, len(raw) // 2, len(raw) - 1):
        changed = bytearray(raw)
        changed[i] ^= 1
        assert f1(bytes(changed)) != f1(raw)


def test_r_d1_f2_ignores_transport_headers():
    a = message()
    b = message(received="mx2", message_id="<other@example.org>",
                date="Tue, 4 Jun 2024 11:00:00 +0200")
    assert f1(a) != f1(b)
    assert fp(a)[1] == fp(b)[1]
    assert fp(a)[2] != fp(b)[2]                      # F3 includes the Message-ID


def test_r_d1_f2_normalises_whitespace_and_subject_case():
    a = message("The printer  on floor 3\n\nis broken.\n", subject="Printer   BROKEN")
    b = message("The printer on floor 3 is broken.", subject="printer broken")
    assert fp(a)[1] == fp(b)[1]


def test_r_d1_f2_keeps_reply_prefixes():
    """A reply is new content, so ``Re:`` is part of the normalised Subject."""
    assert fp(message())[1] != fp(message(subject="Re: Printer broken"))[1]


def test_r_d1_f2_recipients_are_sorted():
    a = message(to="support@example.test, carol@example.org", cc="bob@example.org")
    b = message(to="Bob <BOB@example.org>", cc="carol@example.org, support@example.test")
    assert fp(a)[1] == fp(b)[1]
    assert fp(a)[1] != fp(message(to="support@example.test", cc=None))[1]


def test_r_d1_f2_differs_when_body_differs():
    assert fp(message())[1] != fp(message("The printer on floor 4 is broken.\n"))[1]


def test_r_d1_f2_differs_when_an_attachment_differs():
    base = fp(message(attachments=(("a.pdf", b"%PDF one"),)))
    assert base[1] != fp(message(attachments=(("a.pdf", b"%PDF two"),)))[1]
    assert base[1] != fp(message(attachments=(("b.pdf", b"%PDF one"),)))[1]
    assert base[1] != fp(message())[1]
    assert base[2] != fp(message(attachments=(("a.pdf", b"%PDF two"),)))[2]


def test_r_d1_attachment_order_does_not_matter():
    a = message(attachments=(("a.pdf", b"1"), ("b.pdf", b"2")))
    b = message(attachments=(("b.pdf", b"2"), ("a.pdf", b"1")))
    assert fp(a)[1:] == fp(b)[1:]


def test_r_d1_f3_equal_when_only_the_body_differs():
    a, b = fp(message("original\n")), fp(message("original\n-- \nfooter added by a relay\n"))
    assert a[1] != b[1]
    assert a[2] == b[2]


def test_r_d1_f3_without_message_id_is_not_shared():
    """No Message-ID, no identity: F3 then matches only identical bytes."""
    a = fp(message("one\n", message_id=None))
    b = fp(message("two\n", message_id=None))
    assert a[2] != b[2]
    assert a[2] == fp(message("one\n", message_id=None))[2]


def test_r_d1_unparseable_mail_never_collides():
    """Two different MIME bombs have the same (empty) views; their F2/F3 still differ."""
    def bomb(marker: bytes) -> bytes:
        head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                        for i in range(60))
        return b"From: a@example.org\r\nSubject: s\r\nMessage-ID: <x@y>\r\n" + head + marker
    a, b = Mail(bomb(b"one")), Mail(bomb(b"two"))
    assert a.parse_error == b.parse_error == "mime_too_deep"
    assert f2(a) != f2(b) and f3(a) != f3(b)
    assert f2(a) == f2(Mail(bomb(b"one")))


def test_r_d1_field_boundaries_cannot_collide():
    assert _digest("ab", "c") != _digest("a", "bc")
    assert _digest(["a", "b"], "c") != _digest(["a"], "b", "c")
    assert _digest(None) != _digest("") != _digest([])


def test_r_d1_fingerprints_are_distinct_kinds():
    raw = message()
    assert len({*fp(raw)}) == 3
