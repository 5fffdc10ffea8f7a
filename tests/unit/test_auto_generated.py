"""R-A1/R-A2: auto-generated detection, one case per rule, and what must not fire."""
from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import pytest

from gateway.mail import Mail
from gateway.pipeline.autogen_rules import RULES_A1, RULES_A2, detect


def mail(body: str = "Hello.\n", **headers: str) -> Mail:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "Printer broken"
    for name, value in headers.items():
        name = name.rstrip("_").replace("_", "-")
        del msg[name]
        msg[name] = value
    msg.set_content(body)
    return Mail(bytes(msg))


def report(subtype: str = "report") -> Mail:
    """A bounce as RFC 3464 writes it: multipart/report with a message/delivery-status part."""
    msg = EmailMessage()
    msg["From"] = "Mail Delivery System <bounces@mx.example.net>"
    msg["To"] = "support@example.test"
    msg["Subject"] = "Your message"
    msg.set_content("The message could not be delivered.\n")
    msg.make_mixed()
    msg.set_type(f"multipart/{subtype}")
    status = EmailMessage()
    status["Content-Type"] = "message/delivery-status"
    per_message, per_recipient = EmailMessage(), EmailMessage()
    per_message["Reporting-MTA"] = "dns; mx.example.net"
    per_recipient["Final-Recipient"] = "rfc822; nobody@example.org"
    per_recipient["Action"] = "failed"
    status.set_payload([per_message, per_recipient])
    msg.attach(status)
    return Mail(bytes(msg))


def raw(*lines: bytes) -> Mail:
    return Mail(b"\r\n".join((b"From: alice@example.org", b"Subject: hi", *lines))
                + b"\r\n\r\nbody\r\n")


def test_rule_names():
    assert RULES_A1 == ("x-autoreply", "x-autorespond", "auto-submitted", "return-path-null",
                        "content-type-report")
    assert RULES_A2 == ("x-auto-response-suppress", "precedence-auto-reply", "mailer-daemon-dsn")


@pytest.mark.parametrize("message, rule", [
    (lambda: mail(x_autoreply="yes"), "x-autoreply"),
    (lambda: raw(b"x-AUTOREPLY:"), "x-autoreply"),                      # exists, even empty
    (lambda: mail(x_autorespond="true"), "x-autorespond"),
    (lambda: mail(auto_submitted="auto-generated"), "auto-submitted"),
    (lambda: mail(auto_submitted="Auto-Replied; owner-email=\"x@example.org\""), "auto-submitted"),
    (lambda: mail(auto_submitted="auto-replied (vacation)"), "auto-submitted"),
    (lambda: raw(b"Return-Path: <>"), "return-path-null"),
    (lambda: raw(b"Return-Path: <<>>"), "return-path-null"),
    (lambda: raw(b"Return-Path:  < < > >  "), "return-path-null"),
    (report, "content-type-report"),
    (lambda: report("mixed"), "content-type-report"),                   # DSN part at top level
    (lambda: raw(b"Content-Type: message/delivery-status"), "content-type-report"),
], ids=["x-autoreply", "x-autoreply-empty", "x-autorespond", "auto-generated",
        "auto-replied-params", "auto-replied-comment", "return-path-null", "return-path-double",
        "return-path-spaces", "multipart-report", "delivery-status-part", "delivery-status-top"])
def test_r_a1_rules(message, rule):
    assert detect(message()) == rule
    assert detect(message(), extended=False) == rule       # R-A1 is not optional


@pytest.mark.parametrize("message", [
    lambda: mail(),
    lambda: mail(auto_submitted="no"),
    lambda: mail(auto_submitted="No (comment)"),
    lambda: raw(b"Return-Path: <bounce@example.org>"),
    lambda: raw(b"Return-Path: "),
    lambda: raw(b"X-Autoreply-Not: yes"),
    lambda: raw(b"Content-Type: multipart/mixed; boundary=x"),
], ids=["plain", "auto-submitted-no", "auto-submitted-no-comment", "return-path-address",
        "return-path-empty", "similar-header-name", "multipart-mixed"])
def test_r_a1_not_auto_generated(message):
    assert detect(message()) is None


def test_r_a1_forwarded_bounce_is_not_a_report():
    """A person forwarding a bounce as an attachment wrote the mail: not auto-generated."""
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["Subject"] = "Fwd: this bounced?"
    msg.set_content("see attached\n")
    msg.add_attachment(message_from_bytes(report().raw, policy=default), filename="bounce.eml")
    forwarded = Mail(bytes(msg))
    assert forwarded.child_content_types == ["text/plain", "message/rfc822"]
    assert detect(forwarded) is None


DAEMON_SUBJECTS = ["Undelivered Mail Returned to Sender", "Delivery Status Notification (Failure)",
                   "Mail delivery failed: returning message to sender",
                   "Undeliverable: Printer broken", "Returned mail: see transcript for details",
                   "failure notice", "Delivery Failure"]


@pytest.mark.parametrize("message, rule", [
    (lambda: mail(x_auto_response_suppress="All"), "x-auto-response-suppress"),
    (lambda: mail(x_auto_response_suppress="DR, OOF, AutoReply"), "x-auto-response-suppress"),
    (lambda: mail(x_auto_response_suppress="dr autoreply"), "x-auto-response-suppress"),
    (lambda: mail(precedence="auto_reply"), "precedence-auto-reply"),
    (lambda: mail(precedence=" Auto_Reply "), "precedence-auto-reply"),
    *[(lambda s=s: mail(from_="MAILER-DAEMON@mx.example.net", subject=s), "mailer-daemon-dsn")
      for s in DAEMON_SUBJECTS],
    (lambda: mail(from_="Postmaster <postmaster@example.net>",
                  subject="Undeliverable: hi"), "mailer-daemon-dsn"),
    (lambda: Mail(b"From: Mail Delivery System <MAILER-DAEMON>\r\n"
                  b"Subject: Undelivered Mail Returned to Sender\r\n\r\nbody\r\n"),
     "mailer-daemon-dsn"),
], ids=["suppress-all", "suppress-list", "suppress-spaces", "precedence",
        "precedence-case", *[f"daemon-{n}" for n in range(len(DAEMON_SUBJECTS))],
        "postmaster", "daemon-without-domain"])
def test_r_a2_rules(message, rule):
    assert detect(message()) == rule
    assert detect(message(), extended=False) is None
    assert detect(message(), disabled=frozenset({rule})) is None
    others = frozenset(RULES_A2) - {rule}
    assert detect(message(), disabled=others) == rule


@pytest.mark.parametrize("message", [
    lambda: mail(x_auto_response_suppress="DR, RN, NRN"),
    lambda: mail(x_auto_response_suppress="allow"),
    lambda: mail(precedence="bulk"),
    lambda: mail(from_="MAILER-DAEMON@mx.example.net", subject="Your weekly report"),
    lambda: mail(from_="alice@example.org", subject="Undelivered Mail Returned to Sender"),
    lambda: mail(from_="postmaster-fan@example.org", subject="failure notice"),
], ids=["suppress-other-flags", "suppress-substring", "precedence-bulk", "daemon-normal-subject",
        "person-dsn-subject", "daemon-lookalike"])
def test_r_a2_not_auto_generated(message):
    assert detect(message()) is None


def test_r_a2_disabling_an_a1_rule_has_no_effect():
    assert detect(mail(x_autoreply="yes"), disabled=frozenset(RULES_A1)) == "x-autoreply"


def test_r_a1_first_rule_in_order_wins():
    assert detect(mail(x_autorespond="1", auto_submitted="auto-replied",
                       precedence="auto_reply")) == "x-autorespond"


def test_header_rules_do_not_need_the_body():
    """Header-only verdicts never pay for the MIME parse (DESIGN "A stage")."""
    m = mail(auto_submitted="auto-generated")
    assert detect(m) == "auto-submitted"
    assert "_body" not in m.__dict__
