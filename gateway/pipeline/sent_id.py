"""R-S1: the gateway's own mail coming back is recognised by its Message-ID and stops here."""
from __future__ import annotations

from gateway.mail import Mail
from gateway.pipeline.context import Context, Verdict


class SentIdCheck:
    name = "sent-id"

    async def run(self, mail: Mail, ctx: Context) -> Verdict | None:
        if mail.message_id and await ctx.txn.sent_message(mail.message_id):
            return Verdict("own_mail", "sent_by_gateway")
        return None
