"""Route changes behind the HTTP API (R-R1..R-R7, R-C5): create, update, delete, move, search.

One writer job per change (see ``gateway.directory_ops``): the checks read
the connector's routes in the same transaction that writes them, orders are
rewritten 1..N per connector (R-R5), and the history line is recorded there.
``gateway.routes.validate_route`` holds the rules that need no store; this
module adds what depends on the route's past: its band (R-R5), its being the
fallback (R-R7).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from gateway import activity, route_bands
from gateway.directory_ops import load_connector, route_snapshot, write
from gateway.model import Route, RouteRules, RouteTarget
from gateway.routes import validate_route
from gateway.workitems import RuleViolation
from storage import directory_sql
from storage.txn import Txn

KINDS = ("Ticket", "Case")


def _check(route: Route, connector: Any, routes: list[Route]) -> None:
    """Everything ``validate_route`` checks, plus the target's kind (SPEC §3.6)."""
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


def _merged(route: Route, patch: dict) -> Route:
    """``patch`` over ``route``; ``rules`` and ``target`` merge key by key (JSON merge patch)."""
    fields = dict(patch)
    if "rules" in fields:
        fields["rules"] = dataclasses.replace(route.rules, **fields["rules"])
    if "target" in fields:
        fields["target"] = dataclasses.replace(route.target, **fields["target"])
    return dataclasses.replace(route, **fields)


async def _load(txn: Txn, route_id: int) -> tuple[Route, list[Route]]:
    route = await directory_sql.route(txn.db, route_id)
    if route is None:
        raise LookupError(f"no route {route_id}")
    return route, await txn.routes(route.connector)


class RouteOps:
    def __init__(self, ops: Any):
        self.ops = ops

    async def routes(self, connector: str, q: str = "") -> list[tuple[Route, int]]:
        """The connector's routes with their orders; R-R6: ``q`` keeps those whose address,
        process or ticket category starts with it (case-insensitive)."""
        async def read(db) -> list[tuple[Route, int]]:
            await load_connector(db, connector)
            return _with_orders(await Txn(db).routes(connector))
        found = await self.ops.store.read(read)
        needle = q.strip().casefold()
        return [(r, n) for r, n in found
                if not needle or any(v.casefold().startswith(needle) for v in
                                     (r.email_address, r.target.process, r.target.ticket_category))]

    async def route(self, route_id: int) -> tuple[Route, int] | None:
        async def read(db) -> tuple[Route, int] | None:
            route = await directory_sql.route(db, route_id)
            if route is None:
                return None
            return route, route_bands.positions(await Txn(db).routes(route.connector))[route.id]
        return await self.ops.store.read(read)

    async def create(self, connector: str, fields: dict, actor: str) -> tuple[Route, int]:
        """R-R5: a new route goes to the end of its band; R-R7: a fallback only when the
        connector has none (the way back after one was lost, R-C2)."""
        fields = dict(fields)

        async def work(txn: Txn) -> tuple[Route, int]:
            entry = await load_connector(txn.db, connector)
            routes = await txn.routes(connector)
            route = Route(id=0, connector=connector, order=0,
                          rules=RouteRules(**fields.get("rules", {})),
                          target=RouteTarget(**fields.get("target", {})),
                          **{k: v for k, v in fields.items() if k not in ("rules", "target")})
            _check(route, entry.connector, routes)
            route = dataclasses.replace(route, id=await txn.save_route(route))
            ordered = route_bands.in_order(routes)
            at = sum(1 for r in ordered if route_bands.band(r) <= route_bands.band(route))
            ordered.insert(at, route)
            await directory_sql.set_orders(txn.db, [(n, r.id) for n, r in
                                                    enumerate(ordered, start=1)])
            await activity.record(txn.db, f"route:{route.id}", actor, txn.now, None,
                                  route_snapshot(route, at + 1))
            return dataclasses.replace(route, order=at + 1), at + 1
        return await write(self.ops, work)

    async def update(self, route_id: int, patch: dict, actor: str) -> tuple[Route, int]:
        """R-R5: no change between wildcard and non-wildcard (delete and recreate), orders
        change by ``move`` only; R-R7: the fallback stays the fallback, on its connector,
        enabled and without rules (``validate_route``)."""
        patch = dict(patch)

        async def work(txn: Txn) -> tuple[Route, int]:
            old, routes = await _load(txn, route_id)
            order = route_bands.positions(routes)[old.id]
            if "order" in patch and patch["order"] != order:
                raise RuleViolation("R-R5", "change a route's order with POST "
                                    f"/api/v1/routes/{old.id}/move", "order")
            patch.pop("order", None)
            if patch.get("connector", old.connector) != old.connector:
                raise RuleViolation("R-R7" if old.fallback else "R-R1", "a route's connector "
                                    "is fixed; create the route on the other connector",
                                    "connector")
            if patch.get("fallback", old.fallback) != old.fallback:
                raise RuleViolation("R-R7", "a route cannot become or stop being the "
                                    "fallback; each connector has exactly one", "fallback")
            new = _merged(old, patch)
            if new.wildcard != old.wildcard and not old.fallback:
                raise RuleViolation("R-R5", "a route cannot change between wildcard (*) and "
                                    "an address: delete it and create a new one",
                                    "email_address")
            _check(new, (await load_connector(txn.db, old.connector)).connector, routes)
            await txn.save_route(new)
            await activity.record(txn.db, f"route:{old.id}", actor, txn.now,
                                  route_snapshot(old, order), route_snapshot(new, order))
            return new, order
        return await write(self.ops, work)

    async def delete(self, route_id: int, actor: str) -> None:
        """R-R7: the fallback cannot be deleted; the others close the gap (R-R5)."""
        async def work(txn: Txn) -> None:
            old, routes = await _load(txn, route_id)
            if old.fallback:
                raise RuleViolation("R-R7", "the fallback route cannot be deleted; every "
                                    "connector keeps exactly one", "fallback")
            order = route_bands.positions(routes)[old.id]
            await directory_sql.delete_route(txn.db, old.id)
            rest = [r for r in routes if r.id != old.id]
            await directory_sql.set_orders(txn.db, route_bands.renumbered(rest))
            await activity.record(txn.db, f"route:{old.id}", actor, txn.now,
                                  route_snapshot(old, order), None)
        await write(self.ops, work)

    async def move(self, route_id: int, order: int, actor: str) -> tuple[Route, int]:
        """R-R5: within the route's band only; the routes in between shift by one."""
        async def work(txn: Txn) -> tuple[Route, int]:
            old, routes = await _load(txn, route_id)
            before = route_bands.positions(routes)[old.id]
            pairs = route_bands.moved(routes, old.id, order)
            await directory_sql.set_orders(txn.db, pairs)
            if before != order:
                await activity.record(txn.db, f"route:{old.id}", actor, txn.now,
                                      {"order": before}, {"order": order}, action="move")
            return dataclasses.replace(old, order=order), order
        return await write(self.ops, work)


def _with_orders(routes: list[Route]) -> list[tuple[Route, int]]:
    return [(r, n) for n, r in enumerate(route_bands.in_order(routes), start=1)]
