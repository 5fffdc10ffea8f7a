"""R-P1: plus tags on visible addresses name work items."""
from __future__ import annotations

import pytest

from gateway.pipeline.plus_address import ref_tags, split_tag


@pytest.mark.parametrize("address, expected", [
    ("info+123-T@Example.com", ("info@example.com", "123-T")),
    ("Info+123-t@example.com", ("info@example.com", "123-T")),      # ref letter upper-cased
    ("info+45-C@example.com", ("info@example.com", "45-C")),
    ("info+7-a@example.com", ("info@example.com", "7-A")),
    ("info+a+b@example.com", ("info@example.com", "a+b")),          # only the first + splits
    ("info+Newsletter@Example.com", ("info@example.com", "Newsletter")),  # case as written
    ("INFO@Example.COM", ("info@example.com", None)),
    ("info+@example.com", ("info@example.com", None)),              # empty tag: no tag
    ("+123-T@example.com", ("+123-t@example.com", None)),           # leading +: not split
    (" info+1-T@example.com ", ("info@example.com", "1-T")),
    ('"a+b"@example.com', ('"a@example.com', 'b"')),                # quoted: no special case
])
def test_r_p1_split_tag(address, expected):
    assert split_tag(address) == expected


OWN = ["support@example.test", "Help@Example.test"]


@pytest.mark.parametrize("addresses, expected", [
    (["support+123-T@example.test"], ["123-T"]),
    (["Support+123-t@EXAMPLE.test", "support+123-T@example.test"], ["123-T"]),   # distinct
    (["help+9-A@example.test", "support+45-C@example.test", "support+1-T@example.test"],
     ["9-A", "45-C", "1-T"]),                                                  # in order
    (["sales+123-T@example.test"], []),                  # not the connector's mailbox
    (["support+newsletter@example.test"], []),            # not a ref
    (["support+123-X@example.test", "support+-T@example.test", "support+12T@example.test"], []),
    (["support+١٢٣-T@example.test"], []),                 # ASCII digits only
    (["support+" + "9" * 19 + "-T@example.test"], []),    # would not fit a 64-bit integer
    (["support+123-T\n@example.test"], []),               # no $-before-newline slip
    (["support@example.test"], []),
    ([], []),
])
def test_r_p1_ref_tags(addresses, expected):
    assert ref_tags(addresses, OWN) == expected


def test_r_p1_filter_may_carry_tags_and_case():
    assert ref_tags(["support+5-T@example.test"], ["SUPPORT+x@EXAMPLE.TEST"]) == ["5-T"]
