"""Composing outgoing mail: Message-IDs (R-O3), plus-addressed From (R-O2), acknowledgements (R-O5).

Delivery (SMTP, DKIM, retries) is a later piece; here mail is composed and
queued. Header values built from user input are stripped of CR, LF and other
line breaks before the email package sees them: this Python's email module
predates the header-injection fixes (CVE-2024-6923), so nothing else would.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formatdate

from gateway.model import Connector, WorkItem
from gateway.tokens import Tokens

# CRLF for SMTP; lines up to RFC 5322's 998 so that long Message-IDs in In-Reply-To
# and References are never folded into encoded-words (which this Python's email
# package does to an unstructured header with a token longer than 78 characters,
# breaking R-M2 rule 1 for whoever replies).
WIRE_POLICY = policy.SMTP.clone(max_line_length=998)

_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,995}>")

_LINE_BREAKS = re.compile(r"[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


@dataclass(frozen=True)
class Composing:
    """What the gateway's own mail takes from the settings: R-O3's Message-ID domain,
    R-M1's matching mode and R-P2's plus tag in From, R-B1's signed tokens."""
    domain: str = "mailgate.invalid"
    mode: str = "off"
    hide_plus_in_from: bool = False
    tokens: Tokens = Tokens()


def clean_header(value: str) -> str:
    """One line, no control breaks: safe to put in a header (reliability A6)."""
    return _LINE_BREAKS.sub(" ", value).strip()


def plain_address(address: str) -> bool:
    """An ASCII ``local@domain`` the email package writes verbatim (no encoded-words)."""
    return bool(_PLAIN_ADDRESS.fullmatch(address))


def new_message_id(item: WorkItem, domain: str, tokens: Tokens = Tokens()) -> str:
    """R-O3: ``<EMAIL-UUID.WORKITEM-UUID@DOMAIN>``: the reply finds its item by rule 1
    (R-B1: the work-item part signed, ``WORKITEM-UUID.sig``)."""
    return f"<{uuid.uuid4()}.{item.uuid}{tokens.suffix(item.uuid)}@{domain}>"


def body_tag(item: WorkItem, tokens: Tokens = Tokens()) -> str:
    """R-O3: the unique identifier tag R-M2 rule 2 looks for (R-B1: ``[WI-uuid.sig]``)."""
    return f"[WI-{item.uuid}{tokens.suffix(item.uuid)}]"


def plus_tagged(address: str, ref: str, tokens: Tokens = Tokens()) -> str:
    """``local+REF@domain`` (R-B1: ``local+REF.sig@domain``), any old tag replaced."""
    local, _, domain = address.partition("@")
    return f"{local.split('+', 1)[0]}+{ref}{tokens.suffix(ref)}@{domain}"


def from_address(connector: Connector, item: WorkItem, mode: str,
                 tokens: Tokens = Tokens()) -> str:
    """R-O2: ``local+REF@domain`` in modes mixed and plus_only, else the plain address."""
    if mode not in ("mixed", "plus_only"):
        return connector.primary_address
    return plus_tagged(connector.primary_address, item.ref, tokens)


def _compose(*, item: WorkItem, connector: Connector, to: list[str], cc: list[str],
             subject: str, in_reply_to: str | None, domain: str, mode: str,
             hide_plus_in_from: bool, tokens: Tokens = Tokens(), date: str | None = None,
             message_id: str | None = None) -> tuple[EmailMessage, str]:
    """What every mail about a work item carries: From (R-O2), Message-ID (R-O3), threading."""
    message = EmailMessage(policy=WIRE_POLICY)
    tagged = from_address(connector, item, mode, tokens)
    if hide_plus_in_from and tagged != connector.primary_address:
        message["From"] = connector.primary_address
        message["Reply-To"] = tagged
    else:
        message["From"] = tagged
    message["To"] = ", ".join(clean_header(a) for a in to)
    if cc:
        message["Cc"] = ", ".join(clean_header(a) for a in cc)
    message["Subject"] = subject
    message["Date"] = date or formatdate(localtime=False)
    message_id = message_id or new_message_id(item, domain, tokens)
    message["Message-ID"] = message_id
    reference = clean_header(in_reply_to or "")
    if _MESSAGE_ID.fullmatch(reference):    # anything else would be junk in the header
        message["In-Reply-To"] = reference
        message["References"] = reference
    return message, message_id


def _ack_subject(item: WorkItem, subject: str) -> str:
    original = clean_header(subject)[:900]
    return f"[{item.ref}] {original}" if original else f"[{item.ref}]"


def _ack_text(item: WorkItem, tokens: Tokens) -> str:
    return (f"We have received your message and registered it as {item.ref}.\n"
            f"Please keep {item.ref} in the subject of any reply.\n\n"
            f"{body_tag(item, tokens)}\n")


def compose_ack(*, item: WorkItem, subject: str, **common) -> tuple[EmailMessage, str]:
    """R-O5: acknowledge a new work item; marked automated so replies to it are ignored (R-A3).

    ``common``: connector, to, cc, in_reply_to, domain, mode, hide_plus_in_from, tokens
    (and ``date``, ``message_id`` to give them instead of making them).
    """
    message, message_id = _compose(item=item, subject=_ack_subject(item, subject), **common)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(_ack_text(item, common.get("tokens", Tokens())))
    return message, message_id


def ack_bytes(*, item: WorkItem, subject: str, connector: Connector, to: list[str],
              cc: list[str], in_reply_to: str | None, domain: str, mode: str,
              hide_plus_in_from: bool, tokens: Tokens = Tokens()) -> tuple[bytes, str, dict]:
    """:func:`compose_ack` as bytes, written directly: (raw, Message-ID, the summary the API
    shows). Building an ``EmailMessage`` parses every header it is given (addresses
    above all), milliseconds per acknowledgement on the pipeline's writer; the bytes
    are the same (tests/unit/test_outbound.py pins them). Anything out of the ordinary —
    an address that is not plain ASCII, a Message-ID that would need folding — is
    composed through the email package instead."""
    date, message_id = formatdate(localtime=False), new_message_id(item, domain, tokens)
    tagged = from_address(connector, item, mode, tokens)
    sender = [("From", connector.primary_address), ("Reply-To", tagged)] \
        if hide_plus_in_from and tagged != connector.primary_address else [("From", tagged)]
    reference = clean_header(in_reply_to or "")
    threading = [("In-Reply-To", reference), ("References", reference)] \
        if _MESSAGE_ID.fullmatch(reference) else []
    subject_text = _ack_subject(item, subject)
    fields = [*sender, ("To", ", ".join(clean_header(a) for a in to)),
              *([("Cc", ", ".join(clean_header(a) for a in cc))] if cc else []),
              ("Subject", subject_text), ("Date", date), ("Message-ID", message_id),
              *threading, ("Auto-Submitted", "auto-generated"),
              ("X-Auto-Response-Suppress", "All")]
    addresses = [a for name, a in fields if name in ("From", "Reply-To")] + [*to, *cc]
    plain = all(plain_address(a) for a in addresses) and \
        all(len(name) + 2 + len(value) <= WIRE_POLICY.max_line_length
            for name, value in fields if name != "Subject")
    if not plain:
        message, message_id = compose_ack(
            item=item, subject=subject, connector=connector, to=to, cc=cc,
            in_reply_to=in_reply_to, domain=domain, mode=mode,
            hide_plus_in_from=hide_plus_in_from, tokens=tokens, date=date,
            message_id=message_id)
        return message.as_bytes(), message_id, _summary(fields)
    lines = [_folded(name, value) if name == "Subject"
             else f"{name}: {value}\r\n".encode("ascii") for name, value in fields]
    lines.append(b'Content-Type: text/plain; charset="utf-8"\r\n'
                 b"Content-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n\r\n")
    lines.append(_ack_text(item, tokens).replace("\n", "\r\n").encode("ascii"))
    return b"".join(lines), message_id, _summary(fields)


_VERBATIM = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")    # printable ASCII, single spaces


def _folded(name: str, value: str) -> bytes:
    """One header as the email package writes it (RFC 2047 for non-ASCII text); plain
    ASCII that fits a line is written as it is, which is what the package writes too."""
    if _VERBATIM.fullmatch(value) and len(name) + 2 + len(value) <= WIRE_POLICY.max_line_length \
            and "=?" not in value:
        return f"{name}: {value}\r\n".encode("ascii")
    return WIRE_POLICY.fold_binary(name, WIRE_POLICY.header_factory(name, value))


def _summary(fields: list[tuple[str, str]]) -> dict:
    return {"subject": next(v for n, v in fields if n == "Subject"),
            "headers": [[n, v] for n, v in fields]}


def compose_agent_mail(*, item: WorkItem, subject: str, body: str,
                       attachments: list[tuple[str, str, bytes]] = (),
                       **common) -> tuple[EmailMessage, str]:
    """R-O6: an agent's mail about a work item; not automated, so auto-replies to it count.
    ``attachments``: (file name, content type ``main/sub``, bytes)."""
    message, message_id = _compose(item=item, subject=clean_header(subject)[:900], **common)
    message.set_content(f"{body.rstrip()}\n\n{body_tag(item, common.get('tokens', Tokens()))}\n")
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype,
                               filename=clean_header(filename)[:200])
    return message, message_id
