"""R-D1: the three fingerprints dedup compares (R-D2, R-D3).

F1 is the raw bytes; F2 is what a reader sees (Subject, From, To+Cc, text, attachments)
so a re-send with new Received/Date/Message-ID headers still matches; F3 is the
envelope-like identity (Subject, From, To+Cc, attachments, Message-ID) so a copy whose
body was altered in transit (a footer, a disclaimer, re-encoding) still matches.

Fields are hashed in a length-prefixed, typed encoding, so no two different field
tuples hash the same input (``("ab", "c")`` vs ``("a", "bc")``). Each fingerprint starts
with a version tag, so changing a normalisation later cannot match old values by accident.
The values are stored (R-D2 compares new mail with them), so the bytes hashed never change:
tests/unit/test_fingerprints_pinned.py holds them for a set of messages.

The body goes through the hash in chunks (R-H4): ``" ".join(text.split())`` built a list
of every word and a copy of the text, ~15 times a 33 MB body's size in memory.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

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
                   _Words(mail.text_body), _attachments(mail))


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


_CHUNK = 1 << 16       # characters of a body normalised at a time
_HOLD = 1 << 20        # normalised bytes kept between the two passes; beyond, a second pass


class _Words:
    """A text hashed as ``" ".join(text.split())`` (a string field), without building it."""
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _word_pieces(text: str) -> Iterator[bytes]:
    """``" ".join(text.split())`` in UTF-8, one chunk of ``text`` at a time. A word cut by
    a chunk boundary is joined again; a whitespace run cut by one is one space."""
    started = gap = False         # a word was given; whitespace came after the last one
    for start in range(0, len(text), _CHUNK):
        chunk = text[start:start + _CHUNK]
        words = chunk.split()
        if not words:
            gap = True
            continue
        piece = " ".join(words)
        if started and (gap or chunk[0].isspace()):
            piece = " " + piece
        yield piece.encode("utf-8", "surrogatepass")
        started, gap = True, chunk[-1].isspace()


def _feed_words(sha, text: str) -> None:
    """What ``_feed`` gives the joined words: their length first, so a body of more than
    ``_HOLD`` normalised bytes is read twice (counted, then hashed) rather than kept."""
    held: list[bytes] | None = []
    size = 0
    for piece in _word_pieces(text):
        size += len(piece)
        if held is not None:
            held.append(piece)
            if size > _HOLD:
                held = None
    sha.update(b"S%d:" % size)
    for piece in _word_pieces(text) if held is None else held:
        sha.update(piece)


def _digest(*fields) -> str:
    sha = hashlib.sha256()
    _feed(sha, fields)
    return sha.hexdigest()


def _feed(sha, value) -> None:
    if value is None:
        sha.update(b"N")
    elif isinstance(value, _Words):
        _feed_words(sha, value.text)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        sha.update(b"S%d:" % len(data))
        sha.update(data)
    else:
        sha.update(b"L%d:" % len(value))
        for item in value:
            _feed(sha, item)
