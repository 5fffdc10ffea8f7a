"""Route evaluation (SPEC §3.6, R-R1 … R-R9): which routes place a message. Pure, no I/O.

A connector's routes live in three bands (R-R5): routes for one exact address,
then wildcard routes (``*``), then the one fallback (R-R7). :class:`RouteIndex`
keeps that shape so a lookup reads only the visible address's own routes, the
wildcard band and the fallback — never the routes of other addresses (R-R9).

Rules (R-R2) look only at :class:`RoutingFacts`, a few header-derived values the
caller extracts once; the body is never used for routing. List-valued rules are
parsed once per distinct string (``lru_cache``), so evaluating a route costs a
few set lookups or one regex search.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

from gateway.directory.addresses import normalize_address
from gateway.model import Connector, Route, RouteRules

WILDCARD = "*"


# -- what the rules read ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RoutingFacts:
    """The parts of a message routing may look at (R-R2, R-R3). Never the body.

    Addresses are lower-cased mailboxes; the rules strip plus tags again, so a
    caller passing ``Bob+x@Example.com`` still gets the right answer.
    """
    subject: str = ""
    sender: str | None = None                 # From, lower-cased; None when absent
    recipients: list[str] = field(default_factory=list)       # To + Cc, lower-cased
    attachment_names: list[str] = field(default_factory=list)
    important: bool = False                   # see important_flag()
    folder_path: str | None = None            # polled mail only (R-I5); None when pushed
    sender_company: str | None = None         # see company_of()


def important_flag(importance: str | None, x_priority: str | None) -> bool:
    """R-R2: ``Importance: high`` or ``X-Priority`` 1–2 (``"2 (High)"`` counts)."""
    if importance and importance.strip().lower() == "high":
        return True
    digits = re.match(r"\s*(\d+)", x_priority or "")
    return bool(digits) and digits.group(1) in ("1", "2")


def company_of(sender: str | None, contacts: dict[str, str]) -> str | None:
    """R-R2 sender company: ``contacts`` maps ``addr`` or ``*@domain`` → company.

    The exact address wins over its domain. ``*@example.com`` covers that
    domain only, not ``sub.example.com``. An unknown sender has no company.
    """
    if not sender:
        return None
    address = normalize_address(sender)
    company = contacts.get(address)
    if company is None and "@" in address:
        company = contacts.get("*@" + address.rpartition("@")[2])
    return company


# -- parsing rule strings (once per distinct string) ---------------------------------------

@lru_cache(maxsize=4096)
def _entries(text: str) -> tuple[str, ...]:
    """``"a; b ;;"`` → ``("a", "b")``. Only ``;`` separates (company names may hold commas)."""
    return tuple(part.strip() for part in text.split(";") if part.strip())


@lru_cache(maxsize=4096)
def _extensions(text: str) -> tuple[str, ...]:
    """``"pdf; .DOCX; *.xlsx"`` → ``(".pdf", ".docx", ".xlsx")``; ``*`` → any attachment."""
    found = []
    for entry in _entries(text):
        ext = entry.lstrip("*").lstrip(".").lower()
        found.append("" if ext in ("", "*") else "." + ext)   # "x".endswith("") is True
    return tuple(found)


@lru_cache(maxsize=4096)
def _keyword_pattern(text: str) -> re.Pattern[str] | None:
    """Any keyword as a whole word; inner spaces of a multi-word keyword match any whitespace.

    ``(?<!\\w)…(?!\\w)`` instead of ``\\b`` so that keywords that start or end
    with a non-word character (``C++``, ``#urgent``) still work.
    """
    words = [r"\s+".join(map(re.escape, k.split())) for k in _entries(text)]
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _companies(text: str) -> frozenset[str]:
    return frozenset(e.casefold() for e in _entries(text))


@dataclass(frozen=True, slots=True)
class _AddressList:
    """A parsed ``sender_list_includes`` / ``recipient_list_includes`` value (R-R2).

    ``a@x.com`` one mailbox (plus tag ignored); ``*@x.com`` or ``@x.com`` the
    domain x.com only; ``*x.com`` x.com and its subdomains, on a label
    boundary (not ``badx.com``); ``*.x.com`` subdomains only; ``*`` anyone.
    """
    anyone: bool
    mailboxes: frozenset[str]
    domains: frozenset[str]
    suffixes: tuple[str, ...]                 # ".x.com"

    def matches(self, address: str | None) -> bool:
        if not address:
            return False
        if self.anyone:
            return True
        mailbox = normalize_address(address)
        if mailbox in self.mailboxes:
            return True
        domain = mailbox.rpartition("@")[2]
        return domain in self.domains or any(domain.endswith(s) for s in self.suffixes)


@lru_cache(maxsize=4096)
def _address_list(text: str) -> _AddressList:
    anyone, mailboxes, domains, suffixes = False, set(), set(), []
    for entry in (e.lower() for e in _entries(text)):
        if entry == WILDCARD:
            anyone = True
        elif entry.startswith(("*@", "@")):
            domains.add(entry.partition("@")[2])
        elif entry.startswith("*."):
            suffixes.append(entry[1:])
        elif entry.startswith("*"):
            domains.add(entry[1:])
            suffixes.append("." + entry[1:])
        else:
            mailboxes.add(normalize_address(entry))
    domains.discard("")
    return _AddressList(anyone, frozenset(mailboxes), frozenset(domains), tuple(suffixes))


def _malformed_entries(text: str) -> list[str]:
    """Entries of an address list that can never match anything (for validate_route)."""
    bad = []
    for entry in _entries(text):
        local, at, domain = entry.rpartition("@")
        if entry == WILDCARD or (entry.startswith("*") and "@" not in entry and len(entry) > 1):
            continue
        if not at or not domain or (not local and not entry.startswith("@")) or "*" in domain:
            bad.append(entry)
    return bad


# -- R-R2, R-R3 -----------------------------------------------------------------------------

def rules_match(rules: RouteRules, facts: RoutingFacts) -> tuple[bool, str]:
    """R-R2: every rule given must match. Returns (ok, reason for the trace).

    Rules are checked in the model's field order; the reason names the first
    rule that failed, or lists the rules that matched. A rule whose text holds
    no entries (``""``, ``" ; "``) is not given.
    """
    checked: list[str] = []
    if rules.important is not None:
        if facts.important != rules.important:
            return False, f"important: message is {'' if facts.important else 'not '}important"
        checked.append("important")
    if _entries(rules.attachment_types):
        wanted = _extensions(rules.attachment_types)
        if not any(n.strip().lower().endswith(wanted) for n in facts.attachment_names):
            return False, "attachment_types: no attachment of those types"
        checked.append("attachment_types")
    pattern = _keyword_pattern(rules.subject_keywords)
    if pattern is not None:
        if not pattern.search(facts.subject or ""):
            return False, "subject_keywords: no keyword in subject"
        checked.append("subject_keywords")
    if _entries(rules.sender_companies):
        company = facts.sender_company
        if company is None:
            return False, "sender_companies: sender has no known company"
        if company.strip().casefold() not in _companies(rules.sender_companies):
            return False, f"sender_companies: sender's company is {company!r}"
        checked.append("sender_companies")
    if _entries(rules.sender_list_includes):
        if not _address_list(rules.sender_list_includes).matches(facts.sender):
            return False, "sender_list_includes: sender not listed"
        checked.append("sender_list_includes")
    if _entries(rules.recipient_list_includes):
        listed = _address_list(rules.recipient_list_includes)
        if not any(listed.matches(r) for r in facts.recipients):
            return False, "recipient_list_includes: no recipient listed"
        checked.append("recipient_list_includes")
    return True, ("rules: " + ", ".join(checked)) if checked else "no rules"


def _folder_key(folder: str) -> str:
    return folder.strip().rstrip("/").casefold()


def folder_matches(route: Route, folder_path: str | None) -> bool:
    """R-R3: blank or ``*`` matches any message, pushed or polled.

    Otherwise the message's folder must be the same, compared
    case-insensitively (Graph folder names are; IMAP's ``INBOX`` is) and
    ignoring surrounding spaces and a trailing ``/``. Pushed mail has no
    folder, so a route naming one never takes it.
    """
    wanted = route.folder_path.strip()
    if not wanted or wanted == WILDCARD:
        return True
    return folder_path is not None and _folder_key(folder_path) == _folder_key(wanted)


# -- R-R9: the index ----------------------------------------------------------------------

def _in_order(routes: Iterable[Route]) -> tuple[Route, ...]:
    return tuple(sorted(routes, key=lambda r: (r.order, r.id)))


def fallback_route(routes: Iterable[Route]) -> Route | None:
    """R-R7 / R-C2: the connector's fallback (the lowest ``order`` if, wrongly, several)."""
    fallbacks = _in_order(r for r in routes if r.fallback)
    return fallbacks[0] if fallbacks else None


class RouteIndex:
    """R-R9: one connector's routes, indexed so a lookup never scans other addresses' routes.

    Each indexed address holds a ready tuple (its own routes, then the wildcard
    band, then the fallback when it applies), so ``candidates`` is one dict
    lookup; every other address shares one tuple. Memory is
    O(addresses × wildcard band), small for any real directory.
    """

    def __init__(self, routes: Iterable[Route] = ()):
        routes = list(routes)
        self.fallback = fallback_route(routes)
        self.wildcard_band = _in_order(r for r in routes if r.wildcard and not r.fallback)
        own: dict[str, list[Route]] = {}
        for route in routes:
            if not route.wildcard and not route.fallback:
                own.setdefault(normalize_address(route.email_address), []).append(route)
        self.fallback_address = None
        if self.fallback is not None and not self.fallback.wildcard:
            self.fallback_address = normalize_address(self.fallback.email_address)
        tail = self.wildcard_band
        self._tail = tail + (self.fallback,) if self.fallback and self.fallback.wildcard else tail
        self._with_fallback = tail + (self.fallback,) if self.fallback else tail
        self._by_address = {address: _in_order(rs) + self._tail_for(address)
                            for address, rs in own.items()}
        if self.fallback_address and self.fallback_address not in self._by_address:
            self._by_address[self.fallback_address] = self._with_fallback
        self._count = len(routes)

    def _tail_for(self, address: str) -> tuple[Route, ...]:
        return self._with_fallback if address == self.fallback_address else self._tail

    def candidates(self, address: str) -> Sequence[Route]:
        """R-R1 evaluation order for ``address``: own routes, wildcard band, fallback (R-R5).

        The fallback is included only for the address it names (the primary,
        R-R7) unless it is ``*``. Tags and case are ignored.
        """
        address = normalize_address(address)
        found = self._by_address.get(address)
        return found if found is not None else self._tail

    def __len__(self) -> int:
        return self._count


# -- R-R1, R-R4, R-R7, R-M4: choosing ---------------------------------------------------------

@dataclass(slots=True)
class RoutingResult:
    """What routing decided: the winners, or why nothing won, and how (the trace)."""
    winners: list[tuple[str, Route]] = field(default_factory=list)   # (target, route)
    reason: str | None = None          # no_route | alias_without_route | no_visible_address
    notes: list[str] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        return [target for target, _ in self.winners]


def _describe(route: Route) -> str:
    return f"route {route.id} {route.name!r}"


def _first_match(candidates: Sequence[Route], facts: RoutingFacts, label: str,
                 notes: list[str], primary: str | None = None) -> Route | None:
    """The first enabled candidate whose folder and rules match; notes say why others lost."""
    for route in candidates:
        if not route.enabled:
            notes.append(f"{label}: {_describe(route)} disabled")
            continue
        if (primary is not None and route.fallback and not route.wildcard
                and normalize_address(route.email_address) != primary):
            notes.append(f"{label}: {_describe(route)} is a fallback off the primary (R-R7)")
            continue
        if not folder_matches(route, facts.folder_path):
            notes.append(f"{label}: {_describe(route)} folder {route.folder_path!r} "
                         f"!= {facts.folder_path!r}")
            continue
        ok, why = rules_match(route.rules, facts)
        if ok:
            notes.append(f"{label}: {_describe(route)} wins ({why})")
            return route
        notes.append(f"{label}: {_describe(route)} no match ({why})")
    return None


def choose_routes(index: RouteIndex, connector: Connector, visible_addresses: Iterable[str],
                  facts: RoutingFacts) -> RoutingResult:
    """R-R1: per visible address, the first enabled route that accepts it; one item per target.

    The target is the route's address, ``*`` for a wildcard route (R-D2). Two
    addresses won by the same route give one item. Distinct winners always
    have distinct targets, as R-D2 requires: an address's own routes target
    that address, and the wildcard band and a ``*`` fallback see only the
    message (rules, folder), so every address reaching them gets the same
    route. Addresses no route accepts are skipped; with no winner at all the reason is
    ``alias_without_route`` when no visible address is the primary, else
    ``no_route`` (``no_visible_address`` for an empty list: see choose_wildcard).
    """
    primary = normalize_address(connector.primary_address)
    result = RoutingResult()
    won: set[int] = set()
    seen: list[str] = []
    for address in map(normalize_address, visible_addresses):
        if address in seen:
            continue
        seen.append(address)
        route = _first_match(index.candidates(address), facts, address, result.notes, primary)
        if route is None:
            result.notes.append(f"{address}: no route accepts it")
            continue
        if route.id not in won:
            won.add(route.id)
            target = WILDCARD if route.wildcard else normalize_address(route.email_address)
            result.winners.append((target, route))
        else:
            result.notes.append(f"{address}: {_describe(route)} already has this email's item")
    if not result.winners:
        if not seen:
            result.reason = "no_visible_address"
        elif primary in seen:
            result.reason = "no_route"
        else:
            result.reason = "alias_without_route"
    return result


def choose_wildcard(index: RouteIndex, facts: RoutingFacts,
                    notes: list[str] | None = None) -> Route | None:
    """R-M4: a copy with no visible K-address can only be placed by a wildcard route (target ``*``).

    Only the wildcard band counts (R-R4 "match any or no visible address");
    a ``*`` fallback does not, since R-R7 has it match *addresses*. None →
    the caller reports ``no_visible_address``.
    """
    return _first_match(index.wildcard_band, facts, "(no visible address)",
                        notes if notes is not None else [])


# -- validation (what needs no store) ------------------------------------------------------

def validate_route(route: Route, connector: Connector,
                   existing_routes: Iterable[Route]) -> list[tuple[str, str, str]]:
    """Problems with ``route`` as (rule id, field, message); empty when valid.

    ``existing_routes`` are the connector's stored routes; ``route`` itself
    (same id) is ignored there, so this serves create and update alike.
    Band placement and moves (R-R5) are checked elsewhere.
    """
    problems: list[tuple[str, str, str]] = []
    rules = route.rules
    mailboxes = {normalize_address(a) for a in connector.addresses()}
    if route.connector != connector.name:
        problems.append(("R-R1", "connector",
                         f"route belongs to {route.connector!r}, not {connector.name!r}"))
    if not route.wildcard and normalize_address(route.email_address) not in mailboxes:
        problems.append(("R-R1", "email_address",
                         f"{route.email_address!r} is not an address of connector "
                         f"{connector.name!r} (use its primary address, an alias, or *)"))
    for name in ("sender_list_includes", "recipient_list_includes"):
        bad = _malformed_entries(getattr(rules, name))
        if bad:
            problems.append(("R-R2", f"rules.{name}",
                             f"cannot match any address: {'; '.join(bad)} "
                             "(use a@x.com, *@x.com or *x.com)"))
    if route.wildcard and not route.fallback:
        senders = _entries(rules.sender_list_includes)
        if not senders:
            problems.append(("R-R4", "rules.sender_list_includes",
                             "a wildcard route needs a sender list"))
        elif WILDCARD in senders:
            problems.append(("R-R4", "rules.sender_list_includes",
                             "a wildcard route's sender list may not be *"))
    if route.fallback:
        problems.extend(_fallback_problems(route, connector, existing_routes))
    return problems


def _given_rules(rules: RouteRules) -> list[str]:
    given = ["important"] if rules.important is not None else []
    return given + [name for name in ("attachment_types", "subject_keywords", "sender_companies",
                                      "sender_list_includes", "recipient_list_includes")
                    if _entries(getattr(rules, name))]


def _fallback_problems(route: Route, connector: Connector,
                       existing_routes: Iterable[Route]) -> list[tuple[str, str, str]]:
    """R-R7: one per connector, no rules, enabled, primary address or ``*``, any folder."""
    problems = []
    given = _given_rules(route.rules)
    if given:
        problems.append(("R-R7", "rules",
                         f"a fallback route has no rules (has {', '.join(given)})"))
    if not route.enabled:
        problems.append(("R-R7", "enabled", "a fallback route is always enabled"))
    if not route.wildcard and (normalize_address(route.email_address)
                               != normalize_address(connector.primary_address)):
        problems.append(("R-R7", "email_address",
                         f"a fallback route's address is the primary address "
                         f"{connector.primary_address} or *"))
    if route.folder_path.strip() not in ("", WILDCARD):
        problems.append(("R-R7", "folder_path", "a fallback route takes every folder (blank or *)"))
    other = fallback_route(r for r in existing_routes
                           if r.id != route.id and r.connector == connector.name)
    if other is not None:
        problems.append(("R-R7", "fallback",
                         f"connector {connector.name!r} already has fallback {_describe(other)}"))
    return problems
