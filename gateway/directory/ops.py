"""THE write door of the directory: connectors, routes and contacts (R-C1..R-C5, R-R1..R-R8).

Every directory change goes through :class:`DirectoryOps` — the HTTP API, a
host embedding the gateway (actor ``host``), the config file's first start
(actor ``config``) and ``directory import`` (the CLI's user) — so each is held
to the same checks (``directory.rules``), writes the same R-C5 history line and
keeps the same order scheme: a connector's routes are numbered 1..N, exact
addresses first, then wildcards, then the one fallback (R-R5, R-R7).

Each change is one transaction: it reads what it checks inside the transaction
that writes, so two admins cannot both pass a check only one of them may pass,
and its history line commits with it. After each change the snapshot intake and
the pipeline read is rebuilt at once (``on_change``): intake answers RCPT for a
new address, and the pipeline routes with a new route, from the next mail.
"""
from __future__ import annotations

import dataclasses
from itertools import groupby
from typing import Any, Awaitable, Callable

from gateway.directory import activity, rules
from gateway.directory.activity import connector_snapshot, route_snapshot
from gateway.directory.snapshot import Directory
from gateway.model import SECRET_FIELDS, Conflict, ConnectorEntry, Route, RuleViolation
from storage.base import ActivityLine, ConnectorTest, Contact, Store, Txn

# What a new connector's fallback route is like unless told otherwise (R-R7): a Ticket,
# no acknowledgement; its name and address are the connector's.
FALLBACK = Route(id=0, name="", connector="", email_address="", order=0, fallback=True)


async def _entry(txn: Txn, name: str) -> ConnectorEntry:
    found = await txn.connector_entry(name)
    if found is None:
        raise LookupError(f"no connector {name!r}")
    return found


async def _route_and_siblings(txn: Txn, route_id: int) -> tuple[Route, list[Route]]:
    route = await txn.route(route_id)
    if route is None:
        raise LookupError(f"no route {route_id}")
    return route, await txn.routes(route.connector)


class DirectoryOps:
    def __init__(self, store: Store, on_change: Callable[[], Awaitable[None]]):
        self.store = store
        self.on_change = on_change

    async def _change(self, work: Callable[[Txn], Awaitable[Any]]) -> Any:
        """``work`` as one transaction; then the snapshot follows."""
        result = await self.store.transaction(work)
        await self.on_change()
        return result

    # -- reads -------------------------------------------------------------------------

    async def snapshot(self) -> Directory:
        """The directory as intake and the pipeline read it, from one read."""
        async def read(txn: Txn) -> Directory:
            return Directory([e.connector for e in await txn.connector_entries()],
                             await txn.routes(),
                             {c.pattern.lower(): c.company for c in await txn.contacts()})
        return await self.store.read(read)

    async def connectors(self) -> list[ConnectorEntry]:
        return await self.store.read(lambda t: t.connector_entries())

    async def connector(self, name: str) -> ConnectorEntry | None:
        return await self.store.read(lambda t: t.connector_entry(name))

    async def has_fallback(self, name: str) -> bool:
        return any(r.fallback for r in await self.store.read(lambda t: t.routes(name)))

    async def routes(self, connector: str, q: str = "") -> list[tuple[Route, int]]:
        """The connector's routes with their orders; R-R6: ``q`` keeps those whose address,
        process or ticket category starts with it (case-insensitive)."""
        async def read(txn: Txn) -> list[Route]:
            await _entry(txn, connector)
            return rules.in_order(await txn.routes(connector))
        found = [(r, n) for n, r in enumerate(await self.store.read(read), start=1)]
        needle = q.strip().casefold()
        return [(r, n) for r, n in found
                if not needle or any(v.casefold().startswith(needle) for v in
                                     (r.email_address, r.target.process, r.target.ticket_category))]

    async def route(self, route_id: int) -> tuple[Route, int] | None:
        async def read(txn: Txn) -> tuple[Route, int] | None:
            route = await txn.route(route_id)
            if route is None:
                return None
            return route, rules.positions(await txn.routes(route.connector))[route.id]
        return await self.store.read(read)

    async def contacts(self) -> list[Contact]:
        return await self.store.read(lambda t: t.contacts())

    async def activity(self, *, entity: str | None, after: int,
                       limit: int) -> list[ActivityLine]:
        return await self.store.read(lambda t: t.activity(entity=entity, after=after,
                                                          limit=limit))

    async def flagged_routes(self) -> list[tuple[Route, str]]:
        """R-R8: routes that keep working but need an admin's look, with why."""
        async def read(txn: Txn) -> tuple[set[str], list[Route]]:
            return await txn.processes(), await txn.routes()
        known, routes = await self.store.read(read)
        return [(r, f"R-R8: process {r.target.process!r} no longer exists") for r in routes
                if known and r.target.process and r.target.process not in known]

    # -- connectors --------------------------------------------------------------------

    async def create_connector(self, entry: ConnectorEntry, actor: str, *,
                               fallback: Route = FALLBACK) -> ConnectorEntry:
        """R-C1 create, with its fallback route (R-R7), so enabling it is allowed (R-C2).
        ``fallback``: what the fallback route is like (its target, acknowledgements …);
        by default it creates a Ticket and sends nothing."""
        return await self._change(lambda txn: _create_connector(txn, entry, actor, fallback))

    async def create_all(self, connectors: list[tuple[ConnectorEntry, Route]],
                         routes: list[Route], actor: str) -> None:
        """Connectors (each with what its fallback is like) and then routes, every one
        checked and recorded as by :meth:`create_connector` and :meth:`create_route`, in
        ONE transaction: the config file's first start seeds all of it or nothing."""
        async def work(txn: Txn) -> None:
            for entry, fallback in connectors:
                await _create_connector(txn, entry, actor, fallback)
            for route in routes:
                await _create_route(txn, route, actor)
        await self._change(work)

    async def update_connector(self, name: str, fields: dict, actor: str, *,
                               force: bool = False) -> ConnectorEntry:
        """R-C1 update. R-C2: enabling needs a fallback route. R-C3: enabling a polled
        mailbox whose last test failed needs ``force``. R-R7: the fallback follows the
        primary address. An address that routes use must stay (R-R1)."""
        async def work(txn: Txn) -> ConnectorEntry:
            old = await _entry(txn, name)
            credentials = {k: fields[k] for k in ("username", "password") if k in fields}
            secrets = {k: fields[k] for k in SECRET_FIELDS if k in fields}
            changed = {k: v for k, v in fields.items()
                       if k not in credentials and k not in secrets}
            for listed in ("aliases", "folders"):
                if listed in changed:
                    changed[listed] = tuple(changed[listed])
            new = dataclasses.replace(old, connector=dataclasses.replace(old.connector, **changed),
                                      secrets={**old.secrets, **secrets}, **credentials)
            routes = await txn.routes(name)
            fallback = next((r for r in routes if r.fallback), None)
            enabling = new.connector.enabled and not old.connector.enabled
            if enabling and fallback is None:
                raise RuleViolation("R-C2", f"connector {name!r} has no fallback route; "
                                    "create one (POST .../routes with fallback true) first",
                                    "enabled")
            failed = await _failed_test(txn, new) if enabling and not force else None
            if failed is not None:
                detail = failed.detail if len(failed.detail) <= 300 else \
                    failed.detail[:299] + "…"
                raise RuleViolation("R-C3", f"the last test of connector {name!r} failed "
                                    f"({detail}); test it again (POST /api/v1/connectors/"
                                    f"{name}/test) or enable it with \"force\": true",
                                    "enabled")
            rules.check_connector(new)
            rules.check_addresses_free(new.connector,
                                       [e.connector for e in await txn.connector_entries()])
            rules.check_routed_addresses_kept(old.connector, new.connector, routes)
            await txn.save_connector(new, create=False)
            await activity.record(txn, f"connector:{name}", actor, connector_snapshot(old),
                                  connector_snapshot(new))
            primary = new.connector.primary_address
            if fallback is not None and not fallback.wildcard \
                    and fallback.email_address != primary:
                order = rules.positions(routes)[fallback.id]
                moved = dataclasses.replace(fallback, email_address=primary)
                await txn.save_route(moved)
                await activity.record(txn, f"route:{fallback.id}", actor,
                                      route_snapshot(fallback, order),
                                      route_snapshot(moved, order))
            return new
        return await self._change(work)

    async def delete_connector(self, name: str, actor: str) -> None:
        """The connector and its routes, each with its history line; items and mail stay."""
        async def work(txn: Txn) -> None:
            old = await _entry(txn, name)
            routes = await txn.routes(name)
            orders = rules.positions(routes)
            for route in routes:
                await activity.record(txn, f"route:{route.id}", actor,
                                      route_snapshot(route, orders[route.id]), None)
            await txn.delete_connector(name)
            await activity.record(txn, f"connector:{name}", actor, connector_snapshot(old),
                                  None)
        await self._change(work)

    async def record_test(self, name: str, ok: bool, detail: str, at: float) -> None:
        """R-C3: keep a connector's last test (no setting changes: no snapshot rebuild)."""
        await self.store.transaction(lambda t: t.save_test(name, ok, detail, at))

    # -- routes ------------------------------------------------------------------------

    async def create_route(self, route: Route, actor: str) -> tuple[Route, int]:
        """R-R5: a new route goes to the end of its band; R-R7: a fallback only when the
        connector has none (the way back after one was lost, R-C2)."""
        return await self._change(lambda txn: _create_route(txn, route, actor))

    async def update_route(self, route_id: int, patch: dict, actor: str) -> tuple[Route, int]:
        """R-R5: no change between wildcard and non-wildcard (delete and recreate), orders
        change by ``move`` only; R-R7: the fallback stays the fallback, on its connector,
        enabled and without rules (``routing.validate_route``)."""
        patch = dict(patch)

        async def work(txn: Txn) -> tuple[Route, int]:
            old, routes = await _route_and_siblings(txn, route_id)
            order = rules.positions(routes)[old.id]
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
            new = rules.patched(old, patch)
            if new.wildcard != old.wildcard and not old.fallback:
                raise RuleViolation("R-R5", "a route cannot change between wildcard (*) and "
                                    "an address: delete it and create a new one",
                                    "email_address")
            rules.check_route(new, (await _entry(txn, old.connector)).connector, routes)
            await txn.save_route(new)
            await activity.record(txn, f"route:{old.id}", actor, route_snapshot(old, order),
                                  route_snapshot(new, order))
            return new, order
        return await self._change(work)

    async def delete_route(self, route_id: int, actor: str) -> None:
        """R-R7: the fallback cannot be deleted; the others close the gap (R-R5)."""
        async def work(txn: Txn) -> None:
            old, routes = await _route_and_siblings(txn, route_id)
            if old.fallback:
                raise RuleViolation("R-R7", "the fallback route cannot be deleted; every "
                                    "connector keeps exactly one", "fallback")
            order = rules.positions(routes)[old.id]
            await txn.delete_route(old.id)
            await txn.set_route_orders(rules.renumbered(r for r in routes if r.id != old.id))
            await activity.record(txn, f"route:{old.id}", actor, route_snapshot(old, order),
                                  None)
        await self._change(work)

    async def move_route(self, route_id: int, order: int, actor: str) -> tuple[Route, int]:
        """R-R5: within the route's band only; the routes in between shift by one."""
        async def work(txn: Txn) -> tuple[Route, int]:
            old, routes = await _route_and_siblings(txn, route_id)
            before = rules.positions(routes)[old.id]
            await txn.set_route_orders(rules.moved(routes, old.id, order))
            if before != order:
                await activity.record(txn, f"route:{old.id}", actor, {"order": before},
                                      {"order": order}, action="move")
            return dataclasses.replace(old, order=order), order
        return await self._change(work)

    async def set_processes(self, names: list[str]) -> None:
        """R-R8: the host says which processes exist; routes naming others get flagged."""
        await self.store.transaction(lambda t: t.set_processes(names))

    # -- contacts (R-R2 sender company) --------------------------------------------------

    async def save_contact(self, pattern: str, company: str) -> tuple[int, str, str, bool]:
        """R-R2: ``a@x.com`` or ``*@x.com`` → company; a known pattern is re-pointed.
        Returns (id, pattern, company, created)."""
        pattern, company = pattern.strip().lower(), company.strip()
        rules.check_contact(pattern, company)
        contact_id, created = await self._change(lambda t: t.save_contact(pattern, company))
        return contact_id, pattern, company, created

    async def delete_contact(self, contact_id: int) -> bool:
        return await self._change(lambda t: t.delete_contact(contact_id))

    # -- the whole directory at once (``directory import``) ------------------------------

    async def replace(self, connectors: list[ConnectorEntry], routes: list[Route],
                      contacts: list[tuple[str, str]], actor: str) -> list[tuple[int, str]]:
        """Make the stored directory exactly these, in ONE transaction (all or nothing),
        with a history line per connector and route created, changed or deleted.

        The caller has checked them as a whole (``directory.file``): addresses, routes
        and contacts. Checked here, against what is stored: R-C3 — a connector whose last
        test failed is not switched on; those come back as ``(index, the test's detail)``
        and nothing is written. A kept connector keeps its credentials and secrets; a
        stored route with the same connector and name keeps its id. Orders become 1..N
        per connector, in the order of the routes' ``order``."""
        async def work(txn: Txn) -> list[tuple[int, str]]:
            before = {e.connector.name: e for e in await txn.connector_entries()}
            refused = []
            for index, entry in enumerate(connectors):
                old = before.get(entry.connector.name)
                failed = (await _failed_test(txn, entry)
                          if old is not None and not old.connector.enabled else None)
                if failed is not None:
                    refused.append((index, failed.detail))
            if refused:
                return refused      # nothing written yet: the transaction commits nothing
            old_routes = await txn.routes()
            old_order = rules.places(old_routes)
            for entry in connectors:
                old = before.get(entry.connector.name)
                new = entry if old is None else dataclasses.replace(
                    entry, username=old.username, password=old.password, secrets=old.secrets)
                await txn.save_connector(new, create=old is None)
                await activity.record(txn, f"connector:{new.connector.name}", actor,
                                      old and connector_snapshot(old), connector_snapshot(new))
            unclaimed: dict[tuple[str, str], list[Route]] = {}
            for old in old_routes:
                unclaimed.setdefault((old.connector, old.name), []).append(old)
            ranked = sorted(routes, key=lambda r: (r.connector, r.order))
            for route, order in ((r, n) for _, same in groupby(ranked, lambda r: r.connector)
                                 for n, r in enumerate(same, start=1)):
                old = (unclaimed.get((route.connector, route.name)) or [None]).pop(0)
                new = dataclasses.replace(route, id=old.id if old else 0, order=order)
                new = dataclasses.replace(new, id=await txn.save_route(new))
                await activity.record(txn, f"route:{new.id}", actor,
                                      old and route_snapshot(old, old_order[old.id]),
                                      route_snapshot(new, order))
            for old in (r for olds in unclaimed.values() for r in olds):
                await txn.delete_route(old.id)
                await activity.record(txn, f"route:{old.id}", actor,
                                      route_snapshot(old, old_order[old.id]), None)
            wanted = {e.connector.name for e in connectors}
            for name in sorted(before.keys() - wanted):
                await txn.delete_connector(name)
                await activity.record(txn, f"connector:{name}", actor,
                                      connector_snapshot(before[name]), None)
            for contact in await txn.contacts():
                await txn.delete_contact(contact.id)
            for pattern, company in contacts:
                await txn.save_contact(pattern, company)
            return []
        refused = await self.store.transaction(work)
        if not refused:
            await self.on_change()
        return refused


async def _create_connector(txn: Txn, entry: ConnectorEntry, actor: str,
                            fallback: Route) -> ConnectorEntry:
    c = entry.connector
    route = dataclasses.replace(
        fallback, id=0, connector=c.name, order=1, fallback=True,
        name=fallback.name or f"{c.name} fallback",
        email_address=fallback.email_address or c.primary_address)
    if await txn.connector_entry(c.name) is not None:
        raise Conflict("R-C1", f"connector {c.name!r} exists", "name")
    rules.check_connector(entry)
    rules.check_addresses_free(c, [e.connector for e in await txn.connector_entries()])
    rules.check_route(route, c, [])
    await txn.save_connector(entry, create=True)
    await activity.record(txn, f"connector:{c.name}", actor, None, connector_snapshot(entry))
    saved = dataclasses.replace(route, id=await txn.save_route(route))
    await activity.record(txn, f"route:{saved.id}", actor, None, route_snapshot(saved, 1))
    return entry


async def _create_route(txn: Txn, route: Route, actor: str) -> tuple[Route, int]:
    entry = await _entry(txn, route.connector)
    routes = await txn.routes(route.connector)
    new = dataclasses.replace(route, id=0, order=0)
    rules.check_route(new, entry.connector, routes)
    new = dataclasses.replace(new, id=await txn.save_route(new))
    ordered, order = rules.inserted(routes, new)
    await txn.set_route_orders([(n, r.id) for n, r in enumerate(ordered, start=1)])
    await activity.record(txn, f"route:{new.id}", actor, None, route_snapshot(new, order))
    return dataclasses.replace(new, order=order), order


async def _failed_test(txn: Txn, entry: ConnectorEntry) -> ConnectorTest | None:
    """R-C3: the failed last test that keeps ``entry`` from being switched on, if any.
    An incoming polled connector whose last test failed would only fail again every
    poll_interval; switching it on takes a passing test (or, through the API, a force).
    Read in the enabling transaction, so a test recorded meanwhile cannot slip past."""
    connector = entry.connector
    if not connector.enabled or not connector.polled or connector.direction == "outgoing":
        return None
    last = await txn.last_test(connector.name)
    return last if last is not None and not last.ok else None
