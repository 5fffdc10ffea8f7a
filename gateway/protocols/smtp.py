"""The optional SMTP listener (R-I2) for MTAs that cannot speak LMTP.

Same durability as LMTP, but SMTP has one reply per message: ``250`` only when
every recipient's copy is committed. If any copy failed the whole message gets
``451 4.3.0`` and the sender's MTA retries it; copies that did commit then
arrive twice, which dedup (R-D1) absorbs — losing mail is the worse failure.
"""
from __future__ import annotations

from gateway.intake import RecipientResult
from gateway.protocols.session import TEMPFAIL, DurableSession


class SmtpSession(DurableSession):
    source = "smtp"

    def error_replies(self, reply: str, rcpts: list[str]) -> list[str]:
        return [reply]

    def data_replies(self, results: list[RecipientResult]) -> list[str]:
        if all(r.accepted for r in results):
            ids = ", ".join(dict.fromkeys(str(r.email_id) for r in results))
            return [f"250 2.0.0 Ok: stored as email {ids}"]
        return [TEMPFAIL]
