"""R-D1: the three fingerprints dedup compares (R-D2, R-D3).

F1 is the raw bytes; F2 is what a reader sees (Subject, From, To+Cc, text, attachments)
so a re-send with new Received/Date/Message-ID headers still matches; F3 is the
envelope-like identity (Subject, From, To+Cc, attachments, Message-ID) so a copy whose
body was altered in transit (a footer, a disclaimer, re-encoding) still matches.

Fields are hashed in a length-prefixed, typed encoding, so no two different field
tuples hash the same input (``("ab", "c")`` vs ``("a", "bc")``). Each fingerprint starts
with a version tag, so changing a normalisation later cannot match old values by accident.
"""
from __future__ import annotations

import hashlib

from gateway.mail import Mail


def f1(raw: bytes) -> str:
    """SHA-256 of the raw bytes as received (R-I7)."""
    return hashlib.sha256(raw).hexdigest()


def f2(mail: Mail) -> str:
    """Visible content. The Subject is unfolded, whitespace-collapsed and case-folded but
    keeps reply prefixes (``Re:`` …): a reply is new content. The body has all whitespace
    collapsed. A copy that cannot be parsed (``parse_error``) gets a fingerprint of its raw
    bytes instead: its empty views must not make two different bombs look equal."""
    if mail.parse_error:
        return _digest("F2/1-raw", f1(mail.raw))
    return _digest("F2/1", _subject(mail), mail.from_address, _recipients(mail),
                   " ".join(mail.text_body.split()), _attachments(mail))


def f3(mail: Mail) -> str:
    """Identity without the body. Without a Message-ID there is no identity to compare,
    so, as for ``parse_error``, the raw bytes stand in (equal only when F1 is)."""
    if mail.parse_error or mail.message_id is None:
        return _digest("F3/1-raw", f1(mail.raw))
    return _digest("F3/1", _subject(mail), mail.from_address, _recipients(mail),
                   _attachments(mail), mail.message_id)


def _subject(mail: Mail) -> str:
    return " ".join(mail.subject.split()).casefold()


def _recipients(mail: Mail) -> list[str]:
    return sorted({*mail.to_addresses, *mail.cc_addresses})


def _attachments(mail: Mail) -> list[list[str]]:
    """Names and content hashes, sorted: the order of attachments is not content."""
    return sorted([a.name, a.sha256] for a in mail.attachments)


def _digest(*fields) -> str:
    sha = hashlib.sha256()
    _feed(sha, fields)
    return sha.hexdigest()


def _feed(sha, value) -> None:
    if value is None:
        sha.update(b"N")
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        sha.update(b"S%d:" % len(data))
        sha.update(data)
    else:
        sha.update(b"L%d:" % len(value))
        for item in value:
            _feed(sha, item)
