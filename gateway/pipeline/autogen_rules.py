"""R-A1/R-A2: is this message auto-generated (a bounce, an out-of-office, a report)?

RFC 3834 §2: an automatic responder must not answer automatically submitted mail, and
R-A3/R-A4 build on this verdict (no new_info for auto-replies to our automated mail, no
acknowledgement ever). Detection is a table of pure predicates over a ``Mail``: each
rule has the name the trace shows, R-A1's always run, R-A2's only with
``autogen.extended`` and each can be turned off by name. Only ``content-type-report``
may need the MIME parse (for a multipart top level), so it is the last R-A1 rule.
"""
from __future__ import annotations

import re
from typing import Callable

from gateway.mail import Mail

_RETURN_PATH_NULL = re.compile(r"\s*<\s*(?:<\s*>\s*)?>\s*")
_SUPPRESS = frozenset({"all", "oof", "autoreply"})
_DAEMONS = frozenset({"mailer-daemon", "postmaster"})
_DAEMON_IN_FROM = re.compile(r"(?:^|[\s<\"])(mailer-daemon|postmaster)(?:@[^\s>]*)?(?:[\s>\"]|$)",
                             re.I)
_DSN_SUBJECT = re.compile(
    r"undelivered mail returned to sender|delivery status notification|mail delivery failed"
    r"|undeliverable:|returned mail:|failure notice|delivery failure|undeliverable mail"
    r"|delivery has failed|delayed mail", re.I)


def _auto_submitted(mail: Mail) -> bool:
    """RFC 3834 §5: the keyword before any ``;`` parameters or ``(comment)``."""
    for value in mail.headers("auto-submitted"):
        keyword = re.match(r"\s*([A-Za-z0-9-]*)", value)[1].lower()
        if keyword in ("auto-generated", "auto-replied"):
            return True
    return False


def _report(mail: Mail) -> bool:
    """multipart/report (RFC 6522) or a message/delivery-status part at the top level."""
    if mail.content_type in ("multipart/report", "message/delivery-status"):
        return True
    return mail.content_type.startswith("multipart/") \
        and "message/delivery-status" in mail.child_content_types


def _return_path_null(mail: Mail) -> bool:
    """The null reverse-path: MTAs write ``<>``, some ``<<>>`` (RFC 5321 §4.5.5)."""
    value = mail.header("return-path")
    return value is not None and _RETURN_PATH_NULL.fullmatch(value) is not None


def _response_suppress(mail: Mail) -> bool:
    """Exchange's X-Auto-Response-Suppress (MS-OXCMAIL): All, OOF or AutoReply."""
    return any(_SUPPRESS.intersection(re.split(r"[\s,;]+", value.lower()))
               for value in mail.headers("x-auto-response-suppress"))


def _mailer_daemon_dsn(mail: Mail) -> bool:
    """A bounce sent without RFC 3464 structure: a daemon sender and a DSN-like subject.
    Many daemons write an invalid From (``MAILER-DAEMON`` without a domain), so when the
    strict address is unknown the raw field is searched; this only ever detects, never
    identifies a sender."""
    if not _DSN_SUBJECT.search(mail.subject):
        return False
    if mail.from_address is not None:
        return mail.from_address.rpartition("@")[0] in _DAEMONS
    return any(_DAEMON_IN_FROM.search(value) for value in mail.headers("from"))


Rule = Callable[[Mail], bool]
_A1: tuple[tuple[str, Rule], ...] = (
    ("x-autoreply", lambda mail: mail.has_header("x-autoreply")),
    ("x-autorespond", lambda mail: mail.has_header("x-autorespond")),
    ("auto-submitted", _auto_submitted),
    ("return-path-null", _return_path_null),
    ("content-type-report", _report),
)
_A2: tuple[tuple[str, Rule], ...] = (
    ("x-auto-response-suppress", _response_suppress),
    ("precedence-auto-reply",
     lambda mail: any(v.strip().lower() == "auto_reply" for v in mail.headers("precedence"))),
    ("mailer-daemon-dsn", _mailer_daemon_dsn),
)
RULES_A1 = tuple(name for name, _ in _A1)
RULES_A2 = tuple(name for name, _ in _A2)


def detect(mail: Mail, *, extended: bool = True,
           disabled: frozenset[str] = frozenset()) -> str | None:
    """The name of the first rule that fires, or None when the mail is not auto-generated.

    ``disabled`` names R-A2 rules to skip. R-A1 rules are the spec's floor and always run:
    an R-A1 name in ``disabled`` has no effect. Rules run in RULES_A1 then RULES_A2 order;
    ``return-path-null`` precedes ``content-type-report`` (the spec lists them the other
    way round) because only the latter may need the MIME parse.
    """
    for name, rule in _A1:
        if rule(mail):
            return name
    if extended:
        for name, rule in _A2:
            if name not in disabled and rule(mail):
                return name
    return None
