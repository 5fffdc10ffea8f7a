"""R-B3, first loop breaker: a per-sender intake budget on each connector.

A mail loop (two autoresponders answering each other, a misconfigured
forward, a monitoring system stuck in a retry) shows as one sender bringing
one connector far more mail than a person writes. Past ``sender_budget``
copies in ``sender_window`` seconds, further mail from that sender ends
unprocessed with reason ``sender_flood``: stored, listed in
``GET /unprocessed``, replayable by a person (R-U1), and it never touches a
work item or sends an acknowledgement.

The stage runs last before apply, so what counts is mail that would touch a
work item: every copy from the sender that reached this stage, ``sender_flood``
ones included, so a loop that goes on keeps itself over the budget and its mail
flows again once it has been quiet for a window. Mail the earlier stages ended
(duplicates, the gateway's own mail, ignored auto-replies, unroutable mail) does
not count: it changes nothing, and a server re-delivering a message must not
use up a budget. A copy apply finds already received everywhere (R-D2) does
not count either.
"""
from __future__ import annotations

from gateway.directory.addresses import normalize_address
from gateway.pipeline.context import Context, Verdict
from gateway.pipeline.prepare import Prepared


def sender_of(mail: Prepared) -> str | None:
    """Whose budget a copy counts against: the From mailbox, else the envelope sender,
    with any plus tag removed (a loop through VERP-style addresses is one sender)."""
    address = mail.from_address or mail.mail_from
    return normalize_address(address) if address else None


class SenderBudget:
    name = "sender-budget"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        sender = sender_of(mail)
        ctx.sender = sender
        budget = ctx.settings.sender_budget
        if not budget or sender is None:
            return None
        window = ctx.settings.sender_window
        seen = await ctx.txn.sender_intake(ctx.connector.name, sender, ctx.txn.now - window, budget)
        if seen < budget:
            return None
        ctx.note(f"{sender} already brought {ctx.connector.name} {budget} mails in the last "
                 f"{_duration(window)}, its budget (R-B3, [loops] sender_budget)")
        return Verdict("unprocessed", "sender_flood")


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:g} minutes" if minutes < 120 else f"{minutes / 60:g} hours"
