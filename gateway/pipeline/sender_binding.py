"""R-B2 sender binding: who may post into a work item by naming its ref.

Refs are short sequential numbers (``123-T``), so anyone can guess one. With
``[matching] ref_requires_participant = true`` a ref found in the Subject or
the body (R-M2 rules 3–4) only counts when the sender takes part in the item:

- the sender is one of its contacts;
- the sender shares a contact's domain (a colleague writing for the customer),
  unless that domain is a public mail service (every gmail.com user is not a
  colleague of a gmail.com customer);
- or a trusted MTA vouches for a contact's domain: the topmost
  ``Authentication-Results`` header (RFC 8601), the one the receiving MTA added
  last, has an authserv-id in ``trusted_authserv_ids`` and reports
  ``dmarc=pass`` for that ``header.from`` domain or ``dkim=pass`` for that
  ``header.d`` domain (or a parent of it). Headers further down were written by
  whoever sent the mail, so they are never read.

A pass for some other domain proves nothing about the item: an attacker's own
domain passes DMARC too. Rules 1–2 (a reply to our Message-ID, the
``[WI-uuid]`` tag) are not guessable and are not bound.
"""
from __future__ import annotations

import re
from typing import Iterable, Protocol

from gateway.directory.addresses import normalize_address
from gateway.model import WorkItem

class Sender(Protocol):
    """What R-B2 reads of a mail (``Mail`` and a prepared copy both offer it)."""
    from_address: str | None
    authentication_results: tuple[str, ...]


_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_RESULT = re.compile(r"^\s*([a-z0-9_-]+)\s*=\s*([a-z]+)\b(.*)$", re.I | re.S)
_PROPERTY = re.compile(r"\b(header\.(?:from|d|i))\s*=\s*\"?([^\s;\"]+)", re.I)


def authenticated_domains(mail: Sender, trusted: Iterable[str]) -> set[str]:
    """Domains a trusted MTA says passed DMARC (``header.from``) or DKIM (``header.d``,
    ``header.i``) for this mail, read from the topmost Authentication-Results header
    only, and only when its authserv-id is trusted: anyone can write such headers into
    the mail they send, below the one the receiving MTA adds on top."""
    trusted = {t.lower() for t in trusted}
    values = mail.authentication_results
    if not trusted or not values:
        return set()
    domains: set[str] = set()
    serv_id, *results = _COMMENT.sub(" ", values[0]).split(";")     # the topmost only
    if (serv_id.split() or [""])[0].lower() in trusted:
        for result in results:
            found = _RESULT.match(result)
            if not found or found[2].lower() != "pass":
                continue
            method = found[1].lower()
            for ptype, value in _PROPERTY.findall(found[3]):
                ptype = ptype.lower()
                if (method == "dmarc" and ptype == "header.from") or \
                        (method == "dkim" and ptype in ("header.d", "header.i")):
                    domains.add(value.rpartition("@")[2].lower().rstrip("."))
    return domains


# Public mail services: sharing one of these domains makes nobody a colleague.
PUBLIC_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "live.com", "msn.com",
    "yahoo.com", "ymail.com", "icloud.com", "me.com", "mac.com", "aol.com", "gmx.com",
    "gmx.de", "gmx.net", "web.de", "t-online.de", "mail.com", "mail.ru", "yandex.ru",
    "yandex.com", "proton.me", "protonmail.com", "zoho.com", "fastmail.com", "qq.com",
    "163.com", "126.com", "naver.com", "orange.fr", "free.fr", "laposte.net", "libero.it",
})


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _covers(authenticated: str, domain: str) -> bool:
    return domain == authenticated or domain.endswith("." + authenticated)


def why_not_participant(mail: Sender, item: WorkItem, trusted: Iterable[str]) -> str | None:
    """None when the sender takes part in ``item``; else why not, for the trace."""
    sender = mail.from_address
    if sender is None:
        return "the sender is not one mailbox"
    contacts = {normalize_address(c) for c in item.contacts}
    if normalize_address(sender) in contacts:
        return None
    domains = {_domain(c) for c in contacts}
    if _domain(sender) in domains - PUBLIC_MAIL_DOMAINS:
        return None
    passed = authenticated_domains(mail, trusted)
    if any(_covers(a, d) for a in passed for d in domains):
        return None
    return (f"{sender} is not a contact of {item.ref} and shares no contact's domain"
            + ("" if not passed else f" (authenticated only for {', '.join(sorted(passed))})"))
