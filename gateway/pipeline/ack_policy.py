"""R-B3 (and RFC 3834 §2): who never gets an automated mail, and the per-recipient budget.

An acknowledgement to a mailer daemon, a no-reply address or a mailing list
starts loops or floods a list; and even a person gets at most a budget of
automated mails a day, so two auto-responders can never ping-pong through us.
"""
from __future__ import annotations

import re

from gateway.mail import Mail

_NEVER = re.compile(
    r"^(mailer-daemon|postmaster|abuse|root|bounces?|bounce[-+].*|no[-_.]?reply|"
    r"do[-_.]?not[-_.]?reply|donotreply|noreply[-+].*|.*-(bounces|request|owner)|owner-.*)@",
    re.IGNORECASE)


def never_automated(address: str) -> str | None:
    """Why ``address`` must never get an automated mail, or None."""
    if _NEVER.match(address):
        return "a mailer or no-reply address"
    return None


def list_mail(mail: Mail) -> str | None:
    """Mail from a list or bulk sender is never acknowledged (RFC 3834 §2)."""
    if mail.has_header("list-id") or mail.has_header("list-unsubscribe"):
        return "list mail (List-Id)"
    precedence = (mail.header("precedence") or "").strip().lower()
    if precedence in ("list", "bulk", "junk"):
        return f"Precedence: {precedence}"
    return None
