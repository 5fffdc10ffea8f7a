"""R-R5 order bands, as the directory API sees them. Pure: no I/O.

A connector's routes are ordered 1..N with no gaps: non-wildcard routes,
then wildcard routes, then the fallback (R-R7). The store keeps a relative
``ord``; the API's ``order`` is the 1-based position in ``(ord, id)`` order,
so a directory seeded with the old sparse numbers (fallback at 1 000 000)
still shows 1..N, and every change through the API writes 1..N back.
"""
from __future__ import annotations

from typing import Iterable

from gateway.model import Route
from gateway.workitems import RuleViolation

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
