"""R-B1 signed tokens: the work-item names the gateway hands out carry a short HMAC.

With ``[matching] sign_tokens = true`` every token that places mail on a work item
without a person reading it gets a signature over what it names:

- the plus tag of a From or shared address: ``info+123-T.k3f7q2@example.com``;
- the body tag: ``[WI-<workitem uuid>.k3f7q2]``;
- the work-item part of the Message-ID: ``<EMAIL-UUID.WORKITEM-UUID.k3f7q2@DOMAIN>``.

A token with a wrong signature is ignored (and traced). An unsigned one is
accepted only during the transition window, and only for work items that existed
before signing started: mail sent before then carries unsigned tokens, and their
replies must keep working. Refs are sequential, so without signatures anyone could
post into a work item by guessing ``info+124-T@``.

Six base32 characters (30 bits) against a secret of at least 16 bytes: guessing
takes about half a billion mails per token, far beyond any sender budget (R-B3).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

SIGNATURE_LENGTH = 6
SIGNATURE = rf"[a-zA-Z2-7]{{{SIGNATURE_LENGTH}}}"   # a regex fragment, for the parsers


@dataclass(frozen=True)
class Tokens:
    secret: bytes | None = None          # None: signing is off
    since: float = 0.0                   # when signing started (kept in the store)
    unsigned_until: float = 0.0          # unsigned tokens of older items count until then

    @property
    def on(self) -> bool:
        return self.secret is not None

    def signature(self, value: str) -> str:
        """The signature of ``value`` (a ref like ``123-T`` or a work item's uuid)."""
        assert self.secret is not None
        mac = hmac.new(self.secret, b"mailgate-token:" + value.lower().encode(),
                       hashlib.sha256).digest()
        return base64.b32encode(mac).decode()[:SIGNATURE_LENGTH].lower()

    def suffix(self, value: str) -> str:
        """``.sig`` to append to a token naming ``value``; empty when signing is off."""
        return f".{self.signature(value)}" if self.on else ""

    def refusal(self, value: str, signature: str | None, *, created_at: float,
                now: float) -> str | None:
        """None when a token naming ``value`` with ``signature`` (None: unsigned) may
        place mail on an item created at ``created_at``; else why not, for the trace."""
        if not self.on:
            return None
        if signature is None:
            if now < self.unsigned_until and created_at < self.since:
                return None
            return "unsigned (R-B1)"
        if hmac.compare_digest(signature.lower(), self.signature(value)):
            return None
        return "badly signed (R-B1)"
