"""R-S1: the gateway's own mail coming back is recognised by its Message-ID and stops here."""
from __future__ import annotations

import re

from gateway.pipeline.context import Context, Verdict
from gateway.pipeline.prepare import Prepared
from gateway.tokens import SIGNATURE

# Every Message-ID the gateway sends has this shape (R-O3), whatever domain was
# configured when it was sent; anything else cannot be ours and costs no lookup.
_OURS = re.compile(rf"<[0-9a-fA-F-]{{36}}\.[0-9a-fA-F-]{{36}}(?:\.{SIGNATURE})?@[^<>]+>")


class SentIdCheck:
    name = "sent-id"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        message_id = mail.message_id
        if message_id and _OURS.fullmatch(message_id) \
                and await ctx.txn.sent_message(message_id):
            return Verdict("own_mail", "sent_by_gateway")
        return None
