"""R-B3 (and RFC 3834 §2): who never gets an automated mail, and the per-recipient budget.

An acknowledgement to a mailer daemon or a no-reply address starts loops (list
mail, R-B4's class ``list``, is never acknowledged either); and even a person gets
at most a budget of automated mails a day, so two auto-responders can never
ping-pong through us.
"""
from __future__ import annotations

import re

_NEVER = re.compile(
    r"^(mailer-daemon|postmaster|abuse|root|bounces?|bounce[-+].*|no[-_.]?reply|"
    r"do[-_.]?not[-_.]?reply|donotreply|noreply[-+].*|.*-(bounces|request|owner)|owner-.*)@",
    re.IGNORECASE)


def never_automated(address: str) -> str | None:
    """Why ``address`` must never get an automated mail, or None."""
    if _NEVER.match(address):
        return "a mailer or no-reply address"
    return None
