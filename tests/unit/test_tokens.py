"""R-B1: signatures on the tokens the gateway hands out, and which tokens are accepted."""
from __future__ import annotations

import re

from gateway.pipeline.plus_address import ref_and_signature, split_tag
from gateway.tokens import Tokens

SIGNING = Tokens(secret=b"s" * 32, since=1000.0, unsigned_until=2000.0)


def test_r_b1_a_signature_is_six_base32_letters_bound_to_the_value_and_the_secret():
    sig = SIGNING.signature("123-T")
    assert re.fullmatch(r"[a-z2-7]{6}", sig)
    assert SIGNING.signature("123-t") == sig                       # refs are case-blind
    assert SIGNING.signature("124-T") != sig
    assert Tokens(secret=b"t" * 32).signature("123-T") != sig
    assert SIGNING.suffix("123-T") == f".{sig}" and Tokens().suffix("123-T") == ""


def test_r_b1_signed_tokens_pass_and_wrong_ones_are_refused():
    sig = SIGNING.signature("123-T")
    assert SIGNING.refusal("123-T", sig, created_at=5000, now=5000) is None
    assert SIGNING.refusal("123-T", sig.upper(), created_at=5000, now=5000) is None
    assert SIGNING.refusal("124-T", sig, created_at=5000, now=5000) == "badly signed (R-B1)"
    other_key = Tokens(secret=b"t" * 32, since=1000.0).signature("123-T")
    assert SIGNING.refusal("123-T", other_key, created_at=5000, now=5000) == \
        "badly signed (R-B1)"


def test_r_b1_unsigned_tokens_pass_only_for_older_items_within_the_window():
    assert SIGNING.refusal("1-T", None, created_at=999, now=1500) is None
    assert SIGNING.refusal("1-T", None, created_at=1001, now=1500) == "unsigned (R-B1)"
    assert SIGNING.refusal("1-T", None, created_at=999, now=2000) == "unsigned (R-B1)"


def test_r_b1_with_signing_off_every_token_passes():
    assert Tokens().refusal("1-T", None, created_at=0, now=0) is None
    assert Tokens().refusal("1-T", "aaaaaa", created_at=0, now=0) is None


def test_r_b1_a_signed_plus_tag_splits_into_ref_and_signature():
    mailbox, tag = split_tag("Info+123-t.K3F7Q2@Example.com")
    assert (mailbox, tag) == ("info@example.com", "123-T.k3f7q2")
    assert ref_and_signature(tag) == ("123-T", "k3f7q2")
    assert ref_and_signature("123-T") == ("123-T", None)
    assert split_tag("info+123-T.no@example.com")[1] == "123-T.no"   # not a ref tag
