"""Mail: the lazily parsed view of one copy (DESIGN "A stage"); guards against
address confusion, MIME bombs, huge headers and 8-bit headers."""
from __future__ import annotations

import hashlib
import io
import random
import threading
import time
import zipfile
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import compat32

import pytest

from gateway import mail as mail_module
from gateway.mail import Attachment, Mail, ParseLimits


def message(body: str = "Hello.\n", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@example.org>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "Printer broken"
    msg["Message-ID"] = "<m1@example.org>"
    for name, value in headers.items():
        name = name.rstrip("_").replace("_", "-")
        del msg[name]
        msg[name] = value
    msg.set_content(body)
    return msg


def raw_message(*header_lines: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return b"\r\n".join(header_lines) + b"\r\n\r\n" + body


# -- headers -------------------------------------------------------------------------------

def test_metadata_is_kept():
    mail = Mail(b"Subject: x\r\n\r\n", email_id=7, connector="support", source="lmtp",
                mail_from="a@b.c", rcpt_to=("support@example.test",), folder_path="INBOX")
    assert (mail.email_id, mail.connector, mail.source, mail.mail_from, mail.rcpt_to,
            mail.folder_path) == (7, "support", "lmtp", "a@b.c", ("support@example.test",), "INBOX")


def test_encoded_word_subject_is_decoded():
    msg = message(subject="Grüße aus Köln – Drucker defekt")
    assert b"=?utf-8?" in bytes(msg)
    assert Mail(bytes(msg)).subject == "Grüße aus Köln – Drucker defekt"


def test_folded_subject_is_unfolded():
    subject = "A rather long subject line " * 6
    raw = bytes(message(subject=subject.strip()))
    assert b"\n " in raw.split(b"\n\n")[0]
    assert Mail(raw).subject == subject.strip()


@pytest.mark.parametrize("written, decoded", [
    (b"=?utf-8?q?K=C3?= =?utf-8?q?=B6ln?=", "Köln"),                 # split multi-byte char
    (b"=?UTF-8?B?R3LDvMOfZQ==?=", "Grüße"),
    (b"=?utf-8?b?R3LDvMOfZQ?=", "Grüße"),                              # missing padding
    (b"=?iso-8859-1?q?caf=E9?= au lait", "café au lait"),
    (b"=?utf-8?q?a?= b =?utf-8?q?c?=", "a b c"),
    (b"=?utf-8?q?a?=\r\n =?utf-8?q?_b?=", "a b"),                      # folded between words
    (b"=?utf-8*de?q?Hallo?=", "Hallo"),                                # RFC 2231 language
    (b"=?x-unknown?q?plain?=", "plain"),
    (b"=?utf-8?b?!!!?= stays", "=?utf-8?b?!!!?= stays"),              # malformed: as written
    (b"=?utf-8?q?a=0D=0ABcc:_x@evil.test?=", "a  Bcc: x@evil.test"),   # no CR/LF out (A6)
])
def test_rfc2047_decoding(written, decoded):
    assert Mail(raw_message(b"Subject: " + written)).subject == decoded


def test_8bit_headers_are_read_as_utf8_with_replacement():
    mail = Mail(raw_message("Subject: Grüße".encode(), b"X-Latin: caf\xe9"))
    assert mail.subject == "Grüße"
    assert mail.header("x-latin") == "caf\ufffd"


def test_header_access_is_case_insensitive_and_keeps_order():
    mail = Mail(raw_message(b"Received: one", b"received: two", b"X-Empty:", b"Subject: s"))
    assert mail.headers("RECEIVED") == ["one", "two"]
    assert mail.header("Received") == "one"
    assert mail.has_header("x-empty") and mail.header("X-EMPTY") == ""
    assert not mail.has_header("cc") and mail.header("cc") is None and mail.headers("cc") == []


def test_headers_split_like_the_email_package():
    """Bare CR and LF end lines as in the feed parser, so no view disagrees about which
    fields exist (no header smuggling between our view and the MIME parse)."""
    raw = (b"From: a@example.org\r\nSubject: hi\rBcc: hidden@example.org\r\n"
           b"X-Folded: one\r\n\ttwo\nTo: b@example.org\r\n\r\nbody\n")
    mail = Mail(raw)
    reference = message_from_bytes(raw, policy=compat32)
    assert mail.header("bcc") == reference["bcc"] == "hidden@example.org"
    assert mail.header("x-folded") == "one\ttwo"
    assert mail.to_addresses == ["b@example.org"]


def test_non_header_line_ends_the_header_block():
    mail = Mail(b"Subject: s\r\nthis is not a header\r\nTo: a@b.example\r\n\r\nbody")
    assert mail.subject == "s" and not mail.has_header("to")


def test_message_without_body():
    mail = Mail(b"Subject: only headers\r\nMessage-ID: <x@y>")
    assert (mail.subject, mail.message_id, mail.text_body, mail.parse_error) == \
        ("only headers", "<x@y>", "", None)


@pytest.mark.parametrize("written, expected", [
    (b"<abc@example.org>", "<abc@example.org>"),
    (b"  < abc@example.org >  (comment)", "<abc@example.org>"),
    (b"\r\n <folded@example.org>", "<folded@example.org>"),
    (b"bare@example.org", "<bare@example.org>"),
    (b"not an id", None),
    (b"", None),
])
def test_message_id_is_normalised(written, expected):
    assert Mail(raw_message(b"Message-ID: " + written)).message_id == expected


def test_message_id_missing():
    assert Mail(raw_message(b"Subject: x")).message_id is None


def test_in_reply_to_and_references_in_written_order():
    ids = [f"<{n}.{'x' * 30}@example.org>" for n in range(5)]
    raw = bytes(message(in_reply_to=ids[4], references=" ".join(ids + ids[:1])))
    assert b"\n " in raw.split(b"\n\n")[0]           # References got folded
    mail = Mail(raw)
    assert mail.in_reply_to == [ids[4]]
    assert mail.references == ids
    assert Mail(bytes(message())).in_reply_to == []


# -- addresses (A7) --------------------------------------------------------------------------

@pytest.mark.parametrize("written, expected", [
    (b"Alice Example <Alice@Example.ORG>", "alice@example.org"),
    (b"alice@example.org", "alice@example.org"),
    (b'"Smith, John" <john@example.org>', "john@example.org"),
    (b"J. R. Smith <jrs@example.org>", "jrs@example.org"),
    (b"john@example.org (John Smith)", "john@example.org"),
    (b"=?utf-8?q?J=C3=B6rg?= <joerg@example.org>", "joerg@example.org"),
    ("Jörg <jörg@example.de>".encode(), "jörg@example.de"),
    (b'"john doe"@example.org', '"john doe"@example.org'),
    # crafted or ambiguous: never the wrong address, so no address
    (b"alice@example.org <evil@attacker.test>", None),
    (b"alice <alice@example.org> bob", None),
    (b"a@b@c", None),
    (b"<=?utf-8?q?evil?=@attacker.test>", None),
    (b"Alice, Bob <bob@example.org>", None),
    (b"alice@example.org, bob@example.org", None),
    (b"undisclosed-recipients:;", None),
    (b"", None),
    (b"not an address", None),
])
def test_from_address(written, expected):
    assert Mail(raw_message(b"From: " + written, b"To: x@example.test")).from_address == expected


def test_from_address_quoted_display_name_is_just_a_name():
    """The addr-spec in angle brackets is the identity, whatever the display name says."""
    mail = Mail(raw_message(b'From: "alice@example.org" <evil@attacker.test>'))
    assert mail.from_address == "evil@attacker.test"


def test_two_different_from_fields_are_ambiguous():
    raw = raw_message(b"From: alice@example.org", b"From: evil@attacker.test")
    assert Mail(raw).from_address is None


def test_from_address_built_with_email_message():
    msg = message(from_="Jörg Müller <Joerg.Mueller@Example.org>")
    assert Mail(bytes(msg)).from_address == "joerg.mueller@example.org"


def test_to_and_cc_addresses():
    msg = message(to='Support <Support+12-T@Example.test>, "Smith, J" <j@example.org>, '
                     'j@example.org',
                  cc="team: a@example.org, b@example.org;, c@example.org")
    mail = Mail(bytes(msg))
    assert mail.to_addresses == ["support+12-t@example.test", "j@example.org"]
    assert mail.cc_addresses == ["a@example.org", "b@example.org", "c@example.org"]


def test_invalid_list_items_are_dropped_not_misread():
    raw = raw_message(b"To: ok@example.org, alice@example.org <evil@attacker.test>, "
                      b"Alice, other@example.org", b"To: second@example.org")
    assert Mail(raw).to_addresses == ["ok@example.org", "other@example.org",
                                      "second@example.org"]


def test_fast_address_path_agrees_with_the_strict_parser():
    """The regex fast path must never read an address the strict parser would not."""
    rng = random.Random(4)
    locals_ = ["a", "b.c", "x+1-T", ".a", "a.", "a..b", "o'r", "=", "_", '"q"', "Ü"]
    domains = ["x.org", "y", "-x-.com", "x..y", ".x", "[1.2.3.4]", "ü.de"]
    names = ["A", "b", " ", ".", '"x y"', '"a,b@c <d@e>"', '"\\""', '"', "\t", "(c)", "Ü",
             "..", '"\x01"']
    checked = 0
    for _ in range(20000):
        items = []
        for _ in range(rng.randint(1, 3)):
            addr = rng.choice(locals_) + rng.choice(["@", "@", "@@", ""]) + rng.choice(domains)
            if rng.random() < 0.4:
                items.append(rng.choice(["", " "]) + addr + rng.choice(["", " "]))
            else:
                items.append("".join(rng.choice(names) for _ in range(rng.randint(0, 3)))
                             + rng.choice(["<", ""]) + addr + rng.choice([">", ""]))
        value = rng.choice([",", ", "]).join(items)
        if mail_module._SIMPLE_ITEM.match(value) is None:
            continue
        checked += 1
        assert mail_module._addresses(value) == mail_module._strict_addresses(value), value
    assert checked > 1000


def test_huge_address_list_is_read_in_linear_time():
    many = ", ".join(f"User {i} <u{i}@example.org>" for i in range(5000))
    odd = many + ', "Odd, One" (comment) <odd@example.org>'
    start = time.perf_counter()
    assert len(Mail(raw_message(b"To: " + many.encode())).to_addresses) == 5000
    assert Mail(raw_message(b"To: " + odd.encode())).to_addresses[-1] == "odd@example.org"
    assert time.perf_counter() - start < 2


# -- flags and content type -----------------------------------------------------------------

@pytest.mark.parametrize("headers, expected", [
    ({"Importance": "High"}, True),
    ({"Importance": "normal"}, False),
    ({"X-Priority": "1 (Highest)"}, True),
    ({"X-Priority": "2"}, True),
    ({"X-Priority": "3 (Normal)"}, False),
    ({"X-Priority": "12"}, False),
    ({}, False),
])
def test_r_r2_important(headers, expected):
    assert Mail(bytes(message(**headers))).important is expected


@pytest.mark.parametrize("written, expected", [
    (b"Content-Type: Multipart/Mixed; boundary=x", "multipart/mixed"),
    (b"Content-Type: text/html; charset=utf-8", "text/html"),
    (b"Content-Type: garbage", "text/plain"),
    (b"Subject: no content type", "text/plain"),
])
def test_content_type(written, expected):
    assert Mail(raw_message(written)).content_type == expected


# -- body and attachments ------------------------------------------------------------------

def test_text_body_plain():
    assert Mail(bytes(message("Hallo Welt, schöne Grüße\n"))).text_body == \
        "Hallo Welt, schöne Grüße\n"


def test_text_body_prefers_plain_in_alternative():
    msg = message("plain text\n")
    msg.add_alternative("<p>html text</p>", subtype="html")
    assert Mail(bytes(msg)).text_body == "plain text\n"


def test_text_body_falls_back_to_stripped_html():
    msg = message()
    msg.set_content("<html><head><style>p {color: red}</style></head><body><p>Hello"
                    "&nbsp;&amp; welcome</p><script>alert(1)</script><br>bye</body></html>",
                    subtype="html")
    text = Mail(bytes(msg)).text_body
    assert "Hello\xa0& welcome" in text and "bye" in text
    assert "<" not in text and "color" not in text and "alert" not in text


def test_text_body_uses_the_declared_charset():
    msg = message()
    msg.set_content("Grüße aus Köln\n".encode("iso-8859-1"), maintype="text", subtype="plain",
                    cte="8bit", params={"charset": "iso-8859-1"})
    assert Mail(bytes(msg)).text_body == "Grüße aus Köln\n"


def test_invalid_utf8_body_is_decoded_with_replacement():
    raw = raw_message(b"Content-Type: text/plain; charset=utf-8",
                      b"Content-Transfer-Encoding: 8bit",
                      body=b"ok \xff\xfe bad \xc3\x28 end\r\n")
    mail = Mail(raw)
    assert mail.parse_error is None
    assert mail.text_body.startswith("ok \ufffd\ufffd bad \ufffd( end")


def test_undeclared_8bit_body_reads_as_utf8():
    raw = raw_message(b"Subject: x", body="Grüße\r\n".encode())
    assert Mail(raw).text_body == "Grüße\r\n"


def test_attachments():
    msg = message("see attached\n")
    pdf = b"%PDF-1.4 fake"
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="Report.PDF")
    msg.add_attachment("notes", filename="notes.txt")
    mail = Mail(bytes(msg))
    assert mail.attachments == [
        Attachment("Report.PDF", hashlib.sha256(pdf).hexdigest(), len(pdf), "application/pdf"),
        Attachment("notes.txt", hashlib.sha256(b"notes\n").hexdigest(), 6, "text/plain"),
    ]
    assert mail.text_body == "see attached\n"        # a text/plain attachment is no body


def test_rfc2231_and_encoded_word_filenames():
    msg = message()
    msg.add_attachment(b"x", maintype="application", subtype="octet-stream",
                       filename="Übersicht über alle Verträge im Jahr 2024 (final).xlsx")
    msg.add_attachment(b"y", maintype="application", subtype="octet-stream",
                       filename="plain.bin")
    msg.get_payload()[2].replace_header(
        "Content-Disposition", 'attachment; filename="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="')
    raw = bytes(msg)
    assert b"filename*" in raw
    names = [a.name for a in Mail(raw).attachments]
    assert names == ["Übersicht über alle Verträge im Jahr 2024 (final).xlsx", "Résumé.pdf"]


def test_inline_images_count_when_they_have_a_filename():
    msg = message()
    msg.add_alternative("<p>logo: <img src='cid:logo'></p>", subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(b"\x89PNG-1", maintype="image", subtype="png", cid="<logo>")
    html_part.add_related(b"\x89PNG-2", maintype="image", subtype="png", cid="<sig>",
                          filename="signature.png", disposition="inline")
    assert [a.name for a in Mail(bytes(msg)).attachments] == ["signature.png"]


def test_disposition_attachment_without_filename():
    msg = message()
    msg.add_attachment(b"data", maintype="application", subtype="octet-stream")
    assert [(a.name, a.size) for a in Mail(bytes(msg)).attachments] == [("", 4)]


def test_archives_are_never_decompressed():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * 5_000_000)
    zipped = buffer.getvalue()
    msg = message()
    msg.add_attachment(zipped, maintype="application", subtype="zip", filename="bomb.zip")
    [attachment] = Mail(bytes(msg)).attachments
    assert attachment.size == len(zipped) < 100_000


def test_attached_message_is_one_attachment():
    inner = message("inner body\n", subject="forwarded")
    msg = message("outer body\n")
    msg.add_attachment(inner, filename="forwarded.eml")
    mail = Mail(bytes(msg))
    assert [(a.name, a.content_type) for a in mail.attachments] == \
        [("forwarded.eml", "message/rfc822")]
    assert mail.text_body == "outer body\n"


def test_views_are_cached():
    mail = Mail(bytes(message()))
    assert mail.subject is mail.subject
    assert mail._body is mail._body


# -- guards (A11, A12) -----------------------------------------------------------------------

def nested_multipart(depth: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                    for i in range(depth))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return (b"From: a@example.org\r\nSubject: deep\r\n" + head
            + b"Content-Type: text/plain\r\n\r\ninnermost\r\n" + tail)


def test_a11_nesting_at_the_limit_is_parsed():
    mail = Mail(nested_multipart(50))
    assert mail.parse_error is None and mail.text_body.strip() == "innermost"


@pytest.mark.parametrize("depth", [51, 2000, 20000])
def test_a11_deep_nesting_is_refused_quickly(depth):
    mail = Mail(nested_multipart(depth))
    start = time.perf_counter()
    assert mail.parse_all() == "mime_too_deep"
    assert time.perf_counter() - start < 0.5
    assert (mail.text_body, mail.attachments) == ("", [])
    assert mail.subject == "deep"                 # the headers themselves were fine


def test_a11_bare_cr_line_ends_do_not_evade_the_prescan():
    """The feed parser ends lines at a bare CR too; so does the byte scan."""
    mail = Mail(nested_multipart(2000).replace(b"\r\n", b"\r"))
    start = time.perf_counter()
    assert mail.parse_error == "mime_too_deep"
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("limits, reason", [
    (ParseLimits(max_mime_depth=5), "mime_too_deep"),
    (ParseLimits(max_parts=5), "too_many_parts"),
])
def test_a11_the_tree_walk_rechecks_the_limits(monkeypatch, limits, reason):
    """Whatever shape the byte scan might miss is caught again on the parsed tree."""
    monkeypatch.setattr(mail_module, "_prescan", lambda raw, limits: None)
    assert Mail(nested_multipart(10), limits=limits).parse_error == reason


def test_a11_message_rfc822_chains_count_as_depth():
    inner = message("x")
    for _ in range(60):
        outer = message("wrapper")
        outer.add_attachment(inner)
        outer.get_payload()[1].replace_header("Content-Disposition", "inline")
        inner = outer
    assert Mail(bytes(inner)).parse_error == "mime_too_deep"


def test_a11_too_many_parts():
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\n.\r\n" for _ in range(1001))
    raw = raw_message(b'Content-Type: multipart/mixed; boundary="p"', body=parts + b"--p--\r\n")
    mail = Mail(raw)
    assert mail.parse_error == "too_many_parts" and mail.attachments == []
    assert Mail(raw, limits=ParseLimits(max_parts=2000)).parse_error is None


def test_a12_huge_header_block_is_refused():
    raw = raw_message(b"Subject: " + b"=?utf-8?q?x?= " * 22_000, b"From: a@example.org")
    assert len(raw) > 300_000
    mail = Mail(raw)
    start = time.perf_counter()
    assert mail.parse_all() == "header_too_large"
    assert time.perf_counter() - start < 0.5
    assert (mail.subject, mail.from_address, mail.to_addresses, mail.message_id,
            mail.content_type, mail.text_body, mail.important) == \
        ("", None, [], None, "", "", False)


def test_a12_header_without_end_is_refused():
    assert Mail(b"Subject: x\r\nX-Long: " + b"a" * 300_000).parse_error == "header_too_large"


def test_a12_too_many_header_fields():
    raw = raw_message(*[b"X-N: %d" % i for i in range(1001)])
    assert Mail(raw).parse_error == "too_many_header_fields"
    assert Mail(raw, limits=ParseLimits(max_header_fields=2000)).parse_error is None


def test_a12_long_encoded_subject_decodes_in_linear_time():
    raw = raw_message(b"Subject: " + b"=?utf-8?q?ab?= " * 8000)
    start = time.perf_counter()
    assert Mail(raw).subject == "ab" * 8000
    assert time.perf_counter() - start < 0.5


def test_parser_exceptions_become_parse_error(monkeypatch):
    class Broken:
        def parsebytes(self, raw):
            raise ValueError("boom")

    monkeypatch.setattr(mail_module, "_PARSER", Broken())
    # multipart: a single text/plain part never reaches the parser (the fast path)
    mail = Mail(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
    assert mail.parse_all() == "parser_error: ValueError"
    assert mail.text_body == "" and mail.attachments == []


def test_a12_a_slow_parse_in_a_thread_does_not_block_other_mails(monkeypatch):
    """The runner parses large mail in a worker thread; other copies' views must not wait
    for it (functools.cached_property's 3.11 class-wide lock would make them)."""
    real = mail_module._PARSER

    class Slow:
        def parsebytes(self, raw):
            if raw.startswith(b"Subject: slow"):
                time.sleep(1)
            return real.parsebytes(raw)

    monkeypatch.setattr(mail_module, "_PARSER", Slow())
    worker = threading.Thread(target=Mail(b"Subject: slow\r\n\r\nbody").parse_all)
    worker.start()
    time.sleep(0.05)
    start = time.perf_counter()
    assert Mail(bytes(message())).text_body == "Hello.\n"
    assert time.perf_counter() - start < 0.5
    worker.join()


def test_garbage_never_raises():
    rng = random.Random(7)
    alphabet = [b"\r", b"\n", b"\r\n", b":", b" ", b"--", b"=?", b"?=", b"<", b">", b"@",
                b'"', b"Content-Type: multipart/mixed; boundary=b", b"\xff", b"\x00",
                b"From: ", b"To: ", b"Subject: ", b"Content-Disposition: attachment;",
                b" filename*=utf-8''%ff", b"Content-Transfer-Encoding: base64", b"a"]
    for _ in range(500):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        mail = Mail(raw)
        mail.parse_all()
        assert isinstance(mail.subject, str) and isinstance(mail.text_body, str)


@pytest.mark.parametrize("raw", [
    b"From: a@x.test\r\nSubject: s\r\n\r\nHello.\r\nSecond line.\r\n",
    b"From: a@x.test\nContent-Type: text/plain; charset=iso-8859-1\n\nGr\xfc\xdfe\n",
    b"From: a@x.test\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe \xff\r\n",
    b"From: a@x.test\r\nMIME-Version: 1.0\r\n\r\n",
])
def test_plain_fast_path_reads_the_body_as_the_mime_parser_does(raw):
    from gateway.mail import _PARSER, _extract
    fast = Mail(raw)
    assert fast._plain_body() is not None
    slow = _extract(_PARSER.parsebytes(raw), fast.limits)
    assert fast.text_body == slow.text and fast.attachments == list(slow.attachments)


@pytest.mark.parametrize("raw", [
    b"Content-Type: text/plain; name=a.txt\r\n\r\nx\r\n",
    b"Content-Disposition: attachment; filename=a.txt\r\n\r\nx\r\n",
    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
])
def test_plain_fast_path_leaves_everything_else_to_the_parser(raw):
    assert Mail(raw)._plain_body() is None
