"""The headers the API shows (gateway/mail_summary.py): decoded for people, bounded."""
from __future__ import annotations

from gateway.mail_summary import MAX_FIELDS, MAX_VALUE, header_summary


def test_fields_are_unfolded_and_their_encoded_words_decoded():
    raw = (b"From: =?utf-8?q?J=C3=B6rg?= <j@x.test>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
           b" again\r\nX-Eight-Bit: caf\xc3\xa9\r\n\r\nbody\r\nSubject: not a header\r\n")
    summary = header_summary(raw)
    assert summary == {"subject": "Grüße again",
                       "headers": [["From", "Jörg <j@x.test>"], ["Subject", "Grüße again"],
                                   ["X-Eight-Bit", "café"]]}


def test_a_huge_header_is_shown_cut_and_says_so():
    crafted = b"Cc: " + b",\r\n ".join(b"a@b@c@d" for _ in range(40_000)) + b"\r\n\r\nx"
    summary = header_summary(b"Subject: s\r\n" + crafted)
    [(_, cc)] = [f for f in summary["headers"] if f[0] == "Cc"]
    assert cc.endswith("…") and len(cc) == MAX_VALUE + 1
    assert summary["truncated"] is True                 # the block was over 64 KiB


def test_at_most_max_fields_are_kept():
    raw = b"".join(b"X-F%d: v\r\n" % n for n in range(MAX_FIELDS + 5)) + b"\r\nbody"
    summary = header_summary(raw)
    assert len(summary["headers"]) == MAX_FIELDS and summary["truncated"] is True
    assert summary["subject"] is None


def test_lines_that_are_not_fields_are_skipped_not_fatal():
    summary = header_summary(b"no colon here\r\n: empty name\r\nSubject: ok\r\n\r\n")
    assert summary == {"subject": "ok", "headers": [["Subject", "ok"]]}
