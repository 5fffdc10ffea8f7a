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

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

MAX_HEADER_BYTES = 64 * 1024     # of the header block
MAX_FIELDS = 100
MAX_VALUE = 2000                 # characters of one value, decoded and kept
_PARSER = BytesParser(policy=policy.default)


def header_summary(raw: bytes) -> dict:
    """``{"subject": str | None, "headers": [[name, value], ...]}`` of ``raw``'s header
    block; a value cut short ends with "…", and ``truncated`` says when fields were
    left out."""
    block, cut = _header_block(raw)
    parsed = _PARSER.parsebytes(block + b"\r\n\r\n", headersonly=True)
    items = list(parsed.raw_items())
    fields: list[list[str]] = []
    for name, value in items:
        if len(fields) == MAX_FIELDS:
            break
        fields.append([name, _decoded(name, value)])
    subject = next((v for n, v in fields if n.lower() == "subject"), None)
    summary: dict = {"subject": subject, "headers": fields}
    if cut or len(items) > MAX_FIELDS:
        summary["truncated"] = True
    return summary


def _decoded(name: str, value: str) -> str:
    cut = len(value) > MAX_VALUE
    value = value[:MAX_VALUE]
    try:
        text = str(policy.default.header_factory(name, value))
    except Exception:       # a malformed field is shown as it came
        text = str(value)
    return text[:MAX_VALUE] + ("…" if cut or len(text) > MAX_VALUE else "")


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
