"""The headers the API shows of a stored copy, worked out once and kept with it.

``GET /api/v1/emails/{id}`` and the lists show a copy's Subject and, in detail, its
header fields decoded for people. Decoding a header field with the stdlib's
policy can take seconds on a crafted one (thousands of addresses in a Cc), and an
API that did it per request, on the event loop, made every other request wait. So
the summary is made when the copy is prepared (in a worker process, under its
deadline) and stored with its decision; the API serves what is stored.

Every part is bounded, whatever the message: the header block read, the number of
fields, the length of each value decoded and kept.
"""
from __future__ import annotations

import re
from email.message import EmailMessage

from gateway.mail import decode_words

MAX_HEADER_BYTES = 64 * 1024     # of the header block
MAX_FIELDS = 100
MAX_VALUE = 2000                 # characters of one value, decoded and kept
_FIELD_BREAK = re.compile(r"\r?\n(?![ \t])")       # a line that does not continue the field
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def header_summary(raw: bytes) -> dict:
    """``{"subject": str | None, "headers": [[name, value], ...]}`` of ``raw``'s header
    block: each field unfolded, its RFC 2047 words decoded, 8-bit text read as UTF-8; a
    value cut short ends with "…", and ``truncated`` says when fields were left out. No
    header is parsed for its structure: what people read is what the sender wrote."""
    block, cut = _header_block(raw)
    text = block.decode("utf-8", "replace")
    fields: list[list[str]] = []
    lines = _FIELD_BREAK.split(text)
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _NAME.fullmatch(name):
            continue                # not a field (the feed parser would call it a defect)
        if len(fields) == MAX_FIELDS:
            cut = True
            break
        fields.append([name, _shown(decode_words(_FOLD.sub("", value[:MAX_VALUE * 2]).strip()))])
    subject = next((v for n, v in fields if n.lower() == "subject"), None)
    summary: dict = {"subject": subject, "headers": fields}
    if cut:
        summary["truncated"] = True
    return summary


def _header_block(raw: bytes) -> tuple[bytes, bool]:
    """The header section (without the blank line), at most MAX_HEADER_BYTES (the last
    field may be cut short: its value is shown cut anyway); and whether it was cut."""
    head = raw[:MAX_HEADER_BYTES + 4]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    if end >= 0:
        return head[:end], False
    if len(raw) <= MAX_HEADER_BYTES:
        return raw, False               # headers only, no body
    return head[:MAX_HEADER_BYTES], True


def message_summary(message: EmailMessage) -> dict:
    """The summary of mail the gateway composed (an acknowledgement, an agent's mail):
    its own few headers, read from the message object, without a parse."""
    fields = [[name, _shown(str(value))] for name, value in list(message.items())[:MAX_FIELDS]]
    subject = message.get("Subject")
    return {"subject": None if subject is None else _shown(str(subject)), "headers": fields}


def _shown(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "…"
