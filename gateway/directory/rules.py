"""The directory's rules that need no store: R-R5 order bands, R-C1 address ownership,
R-R1/R-R7 route checks, R-R2 contacts. Pure: no I/O.

``directory.ops`` (the one door every directory change goes through) reads what
these need inside its transaction and calls them, so HTTP, embedding, the config
bootstrap and ``directory import`` refuse exactly the same things.

A connector's routes are ordered 1..N with no gaps: non-wildcard routes,
then wildcard routes, then the fallback (R-R7). The store keeps a relative
``ord``; the API's ``order`` is the 1-based position in ``(ord, id)`` order,
so a directory seeded with the old sparse numbers (fallback at 1 000 000)
still shows 1..N, and every change through the API writes 1..N back.
"""
from __future__ import annotations

import dataclasses
import re
from itertools import groupby
from typing import Iterable

from gateway.directory.addresses import (NOT_A_CONNECTOR_ADDRESS, is_connector_address,
                                         normalize_address)
from gateway.directory.connector_checks import connector_problems, credential_problems
from gateway.directory.routing import validate_route
from gateway.model import Conflict, Connector, ConnectorEntry, Route, RuleViolation

BAND_NAMES = ("non-wildcard routes", "wildcard routes", "the fallback route")


def band(route: Route) -> int:
    """R-R5: 0 non-wildcard, 1 wildcard, 2 fallback."""
    return 2 if route.fallback else (1 if route.wildcard else 0)


def in_order(routes: Iterable[Route]) -> list[Route]:
    """Evaluation order, bands first: a stray order from old data cannot break R-R5."""
    return sorted(routes, key=lambda r: (band(r), r.order, r.id))


def positions(routes: Iterable[Route]) -> dict[int, int]:
    """Route id → its API order (1..N)."""
    return {route.id: n for n, route in enumerate(in_order(routes), start=1)}


def places(routes: Iterable[Route]) -> dict[int, int]:
    """Route id → its API order (1..N) on its own connector, for routes of many."""
    ranked = sorted(routes, key=lambda r: r.connector)
    return {rid: n for _, same in groupby(ranked, lambda r: r.connector)
            for rid, n in positions(same).items()}


def renumbered(routes: Iterable[Route]) -> list[tuple[int, int]]:
    """``(order, id)`` pairs that make the stored orders 1..N again."""
    return [(n, route.id) for n, route in enumerate(in_order(routes), start=1)]


def band_orders(routes: Iterable[Route], which: int) -> tuple[int, int]:
    """The min–max API orders band ``which`` occupies (empty band: ``(0, 0)``)."""
    found = [n for n, r in enumerate(in_order(routes), start=1) if band(r) == which]
    return (min(found), max(found)) if found else (0, 0)


def moved(routes: list[Route], route_id: int, order: int) -> list[tuple[int, int]]:
    """R-R5 ``move``: the new ``(order, id)`` pairs with ``route_id`` at ``order``.

    Only within the route's band (the error names the band's min–max orders);
    the fallback never moves (R-R7). The routes between the old and the new
    place shift by one, so the orders stay 1..N.
    """
    ordered = in_order(routes)
    [route] = [r for r in ordered if r.id == route_id]
    if route.fallback:
        raise RuleViolation("R-R7", "the fallback route is always last; it cannot be moved",
                            "order")
    low, high = band_orders(ordered, band(route))
    if not low <= order <= high:
        span = f"order {low}" if low == high else f"orders {low}–{high}"
        raise RuleViolation("R-R5", f"{BAND_NAMES[band(route)]} occupy {span}; route "
                            f"{route.id} can only move within them", "order")
    ordered.remove(route)
    ordered.insert(order - 1, route)
    return [(n, r.id) for n, r in enumerate(ordered, start=1)]


# -- connectors (R-C1) ---------------------------------------------------------------------

def check_connector(entry: ConnectorEntry) -> None:
    """R-C1, R-I6, R-B5: the connector's addresses and settings, and the login an enabled
    polled one needs (``connector_checks``, which the API, config seeds and directory
    files use)."""
    c = entry.connector
    for field, address in (("primary_address", c.primary_address),
                           *(("aliases", a) for a in c.aliases)):
        if not is_connector_address(address):
            raise RuleViolation("R-C1", f"{address!r} {NOT_A_CONNECTOR_ADDRESS}", field)
    found = connector_problems(entry.connector) + credential_problems(
        entry.connector, entry.username, entry.password, entry.secrets)
    if found:
        field, message = found[0]
        rule, _, text = message.partition(": ")
        raise RuleViolation(rule, text, field)


def check_addresses_free(connector: Connector, others: Iterable[Connector]) -> None:
    """R-C1: an address (tags and case ignored) belongs to one connector, enabled or not."""
    mine = [normalize_address(a) for a in connector.addresses()]
    if len(set(mine)) != len(mine):
        raise RuleViolation("R-C1", "an address is listed twice (primary and aliases)",
                            "aliases")
    for other in others:
        if other.name == connector.name:
            continue
        taken = {normalize_address(a) for a in other.addresses()}
        for address, raw in zip(mine, connector.addresses()):
            if address in taken:
                field = "primary_address" if raw == connector.primary_address else "aliases"
                raise Conflict("R-C1", f"{raw} already belongs to connector {other.name!r}",
                               field)


def check_routed_addresses_kept(old: Connector, new: Connector, routes: list[Route]) -> None:
    """R-R1: a route's address is one of its connector's; removing one a route uses is
    refused (the fallback follows the primary instead, R-R7)."""
    kept = {normalize_address(a) for a in new.addresses()}
    for route in routes:
        if route.wildcard or route.fallback:
            continue
        address = normalize_address(route.email_address)
        if address not in kept:
            field = ("primary_address" if address == normalize_address(old.primary_address)
                     else "aliases")
            raise RuleViolation("R-R1", f"route {route.id} {route.name!r} uses "
                                f"{route.email_address}; change or delete it first", field)


# -- routes (R-R1, R-R7) -------------------------------------------------------------------

KINDS = ("Ticket", "Case")


def check_route(route: Route, connector: Connector, routes: list[Route]) -> None:
    """Everything ``routing.validate_route`` checks, plus the target's kind (SPEC §3.6)."""
    problems = validate_route(route, connector, routes)
    if problems:
        rule, field, message = problems[0]
        raise RuleViolation(rule, message, field)
    if route.target.kind not in KINDS:
        raise RuleViolation("R-R1", f"a route creates a Ticket or a Case, not "
                            f"{route.target.kind!r}", "target.kind")
    if route.target.kind != "Ticket" and route.target.ticket_category:
        raise RuleViolation("R-R1", "ticket_category is for Ticket targets only",
                            "target.ticket_category")


def patched(route: Route, patch: dict) -> Route:
    """``patch`` over ``route``; ``rules`` and ``target`` merge key by key (JSON merge patch)."""
    fields = dict(patch)
    if "rules" in fields:
        fields["rules"] = dataclasses.replace(route.rules, **fields["rules"])
    if "target" in fields:
        fields["target"] = dataclasses.replace(route.target, **fields["target"])
    return dataclasses.replace(route, **fields)


def inserted(routes: list[Route], route: Route) -> tuple[list[Route], int]:
    """R-R5: the connector's routes in order with ``route`` at the end of its band, and
    its place there (1..N)."""
    ordered = in_order(routes)
    at = sum(1 for r in ordered if band(r) <= band(route))
    ordered.insert(at, route)
    return ordered, at + 1


# -- contacts (R-R2 sender company) ---------------------------------------------------------

_CONTACT = re.compile(r"(\*|[^@\s*;+]+)@[a-z0-9-]+(\.[a-z0-9-]+)*")


def check_contact(pattern: str, company: str) -> None:
    """R-R2: ``a@x.com`` or ``*@x.com`` (lower case) → a company name routes can list."""
    if not _CONTACT.fullmatch(pattern):
        raise RuleViolation("R-R2", "pattern is an address (a@example.com, no plus tag) "
                            "or a whole domain (*@example.com)", "pattern")
    if not company or ";" in company or len(company) > 200:
        raise RuleViolation("R-R2", "company is 1 to 200 characters without ';' (routes "
                            "list companies separated by ';')", "company")
