"""R-B2: who counts as a participant, and which Authentication-Results are believed."""
from __future__ import annotations

import pytest

from gateway.mail import Mail
from gateway.model import WorkItem
from gateway.pipeline.sender_binding import authenticated_domains, why_not_participant

ITEM = WorkItem(ref="1-T", kind="Ticket", uuid="u", connector="fr",
                contacts=["Carol@Customer.test", "dan@mail.partner.test", "eve@gmail.com"])
TRUSTED = {"mx.corp.test"}


def message(sender: str, *results: str) -> Mail:
    head = "".join(f"Authentication-Results: {r}\r\n" for r in results)
    return Mail(f"From: {sender}\r\n{head}To: fr@corp.test\r\nSubject: [1-T]\r\n\r\nx\r\n"
                .encode())


@pytest.mark.parametrize("sender", ["carol@customer.test", "CAROL+x@customer.test",
                                    "erin@customer.test", "fay@mail.partner.test"])
def test_r_b2_contacts_and_their_colleagues_take_part(sender):
    assert why_not_participant(message(sender), ITEM, TRUSTED) is None


def test_r_b2_a_stranger_does_not_and_the_reason_says_so():
    why = why_not_participant(message("mallory@evil.test"), ITEM, TRUSTED)
    assert why == "mallory@evil.test is not a contact of 1-T and shares no contact's domain"


@pytest.mark.parametrize("result", [
    "mx.corp.test; dmarc=pass (p=reject) header.from=customer.test",
    "mx.corp.test 1; dkim=pass header.d=customer.test header.s=s1; spf=fail",
    'mx.corp.test; dkim=pass header.i="@partner.test"',          # a parent of a contact's domain
])
def test_r_b2_a_trusted_mta_can_vouch_for_a_contacts_domain(result):
    mail = message("billing@invoices.example", result)
    assert why_not_participant(mail, ITEM, TRUSTED) is None


@pytest.mark.parametrize("result", [
    "evil.test; dmarc=pass header.from=customer.test",            # not a trusted authserv-id
    "mx.corp.test; dkim=fail header.d=customer.test",             # not a pass
    "mx.corp.test; dkim=pass header.d=invoices.example",          # a pass, for another domain
    "mx.corp.test; spf=pass smtp.mailfrom=customer.test",         # SPF says nothing of From
    "mx.corp.test; dkim=pass (header.d=customer.test) header.d=x.example",  # a comment
])
def test_r_b2_other_authentication_results_vouch_for_nobody(result):
    mail = message("billing@invoices.example", result)
    assert why_not_participant(mail, ITEM, TRUSTED) is not None


def test_r_b2_no_trusted_authserv_ids_means_no_header_is_believed():
    mail = message("billing@invoices.example", "mx.corp.test; dmarc=pass header.from=customer.test")
    assert authenticated_domains(mail, ()) == set()
    assert authenticated_domains(mail, {"MX.corp.test"}) == {"customer.test"}


def test_r_b2_only_the_topmost_authentication_results_header_is_read():
    forged_below = message("billing@invoices.example",
                           "mx.corp.test; dkim=fail header.d=invoices.example",
                           "mx.corp.test; dmarc=pass header.from=customer.test")
    assert authenticated_domains(forged_below, TRUSTED) == set()
    assert why_not_participant(forged_below, ITEM, TRUSTED) is not None


def test_r_b2_a_public_mail_domain_makes_nobody_a_colleague():
    assert why_not_participant(message("mallory@gmail.com"), ITEM, TRUSTED) is not None
    assert why_not_participant(message("eve@gmail.com"), ITEM, TRUSTED) is None

