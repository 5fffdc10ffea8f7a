"""Driving the whole gateway through LMTP, the way a mail admin's MTA does."""
from __future__ import annotations

import uuid
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid

from gateway.config import BootstrapConnector, BootstrapRoute, MatchingSection
from tests.wire import WireClient

WIRE = policy.SMTP.clone(max_line_length=998)  # as MTAs send: CRLF, long IDs unfolded
DEPARTMENTS = [BootstrapConnector(name="fr", primary_address="fr@corp.test"),
               BootstrapConnector(name="ma", primary_address="ma@corp.test")]
ACKING_FALLBACKS = [BootstrapRoute(connector=c.name, email_address=c.primary_address,
                                   fallback=True, send_automated_emails=True)
                    for c in DEPARTMENTS]


def mail(*, to=("fr@corp.test",), cc=(), sender="carol@customer.test", subject="Help",
         body="Please help.", in_reply_to: str | None = None, references=(),
         headers: dict | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(idstring=uuid.uuid4().hex[:8], domain="customer.test")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = " ".join([*references, in_reply_to])
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


async def deliver(gw, message: EmailMessage, rcpts=None, *, sender="carol@customer.test"):
    """LMTP-deliver to ``rcpts`` (default: every To/Cc of ours), then let the pipeline finish.
    Returns the stored copies of this message (one per receiving connector)."""
    if rcpts is None:
        rcpts = [a.strip() for field in ("To", "Cc") for a in (message.get(field) or "").split(",")
                 if a.strip() and gw.directory.owner(a.strip())]
    await deliver_raw(gw, message.as_bytes(policy=WIRE), rcpts, sender=sender)
    return await gw.store.emails_by_message_id(message["Message-ID"])


async def deliver_raw(gw, raw: bytes, rcpts, *, sender: str = "") -> None:
    """LMTP-deliver ``raw`` exactly as given (a bounce, the gateway's own mail coming
    back); every recipient must get 250; then let the pipeline finish."""
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO e2e")
    _, replies = await client.transaction(sender, list(rcpts), raw)
    await client.close()
    assert all(r.code == 250 for r in replies), replies
    await gw.pipeline.drain()


def only(copies, connector: str):
    [copy] = [c for c in copies if c.connector == connector]
    return copy


async def outgoing(gw, ref: str) -> list[EmailMessage]:
    """The mail the gateway composed for a work item (acks, agent mail), oldest first."""
    import email
    from email import policy
    found = []
    for email_id in await gw.workitems.workitem_emails(ref):
        record = await gw.store.email(email_id)
        if record.direction == "outgoing":
            found.append(email.message_from_bytes(await gw.store.raw(email_id),
                                                  policy=policy.default))
    return found


def matching(mode: str) -> MatchingSection:
    return MatchingSection(mode=mode)


async def poll(gw, name: str):
    """One poll round of connector ``name``, started now, then the pipeline drained."""
    status = await gw.pollers.poll(name)
    await gw.pipeline.drain()
    return status


async def copies(gw, message: EmailMessage) -> list:
    """The stored copies of ``message``, by its Message-ID."""
    return await gw.store.emails_by_message_id(message["Message-ID"])


async def work_item_count(gw) -> int:
    return len(await gw.workitems.workitems(limit=100_000))
