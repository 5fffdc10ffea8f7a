"""The LMTP listener (R-I1, RFC 2033).

After the final dot an LMTP server answers once per accepted recipient, in
RCPT order, duplicates included; ``250`` only for a recipient whose copy is
committed, ``451 4.3.0`` for one whose copy is not, and the same error line
for every recipient when the data itself was refused (too big, line too long).
"""
from __future__ import annotations

from aiosmtpd.lmtp import LMTP

from gateway.intake import RecipientResult
from gateway.protocols.session import DurableSession, accepted_reply, failed_reply


class LmtpSession(DurableSession, LMTP):
    source = "lmtp"

    def error_replies(self, reply: str, rcpts: list[str]) -> list[str]:
        return [reply] * len(rcpts)

    def data_replies(self, results: list[RecipientResult]) -> list[str]:
        return [accepted_reply(r) if r.accepted else failed_reply(r) for r in results]
