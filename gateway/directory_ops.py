"""Directory changes behind the HTTP API: connectors and contacts (R-C1, R-C2, R-C5, R-R2, R-R7).

Every change is one job on the store's single writer (``store.write``): it
reads what it checks inside the same transaction, so two admins cannot both
pass a check that only one of them may pass, and it records its R-C5 history
line there too. After each change the directory snapshot is rebuilt at once
(``on_directory_change`` = ``Gateway.reload_directory``): intake answers RCPT
for a new address, and the pipeline routes with a new route, from the next mail.

Routes are in ``gateway.route_ops``; the pure band arithmetic in ``gateway.route_bands``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiosqlite

from gateway import activity, route_bands
from gateway.directory import normalize_address
from gateway.model import SECRET_FIELDS, Connector, Route, RouteTarget
from gateway.workitems import RuleViolation
from storage import directory_sql
from storage.txn import Txn

_CONTACT = re.compile(r"(\*|[^@\s*;+]+)@[a-z0-9-]+(\.[a-z0-9-]+)*")


class Conflict(RuleViolation):
    """The change clashes with something that exists (a name, an address): HTTP 409."""


@dataclass(frozen=True, slots=True)
class ConnectorEntry:
    """A connector with its credentials (R-C1). The password and the other secrets
    (``client_secret``, ``certificate_password``) leave only as ``*_set`` flags."""
    connector: Connector
    username: str | None = None
    password: str | None = None
    secrets: dict = dataclasses.field(default_factory=dict)

    def secret(self, name: str) -> str | None:
        return self.secrets.get(name) or None

    def snapshot(self) -> dict:
        """The fields the history compares (R-C5); ``activity`` masks the secrets."""
        c = self.connector
        values = {"name": c.name, "service": c.service, "direction": c.direction,
                  "primary_address": c.primary_address, "aliases": list(c.aliases),
                  "enabled": c.enabled, "route_on_envelope": c.route_on_envelope,
                  "smtp_host": c.smtp_host, "smtp_port": c.smtp_port, "smtp_tls": c.smtp_tls,
                  "username": self.username, "password": self.password}
        if c.polled:
            values.update(c.poll_settings())
            values.update({name: self.secret(name) for name in SECRET_FIELDS})
        return values


def route_snapshot(route: Route, order: int) -> dict:
    """A route's fields under their API names (SPEC §3.6), ``order`` as 1..N (R-R5)."""
    return {"name": route.name, "connector": route.connector,
            "email_address": route.email_address, "folder_path": route.folder_path,
            "rules": dataclasses.asdict(route.rules), "target": dataclasses.asdict(route.target),
            "send_automated_emails": route.send_automated_emails, "ack_cc": route.ack_cc,
            "test_mode": route.test_mode, "enabled": route.enabled, "order": order,
            "fallback": route.fallback}


async def write(ops: Any, work: Callable[[Txn], Awaitable[Any]], *, reload: bool = True) -> Any:
    """Run ``work`` as one transaction on the writer; then refresh the snapshot."""
    async def job(db: aiosqlite.Connection) -> Any:
        return await work(Txn(db))
    result = await ops.store.write(job)
    if reload:
        await ops.on_directory_change()
    return result


async def load_connector(db: aiosqlite.Connection, name: str) -> ConnectorEntry:
    found = await directory_sql.connector(db, name)
    if found is None:
        raise LookupError(f"no connector {name!r}")
    return ConnectorEntry(*found)


class DirectoryOps:
    """Connector and contact operations on top of ``gateway.operations.Operations``."""

    def __init__(self, ops: Any):
        self.ops = ops

    # -- reads -----------------------------------------------------------------------

    async def connectors(self) -> list[ConnectorEntry]:
        return [ConnectorEntry(*row) for row in
                await self.ops.store.read(directory_sql.connectors)]

    async def connector(self, name: str) -> ConnectorEntry | None:
        found = await self.ops.store.read(lambda db: directory_sql.connector(db, name))
        return ConnectorEntry(*found) if found else None

    async def has_fallback(self, name: str) -> bool:
        routes = await self.ops.store.read(lambda db: Txn(db).routes(name))
        return any(r.fallback for r in routes)

    # -- connectors ------------------------------------------------------------------

    async def create_connector(self, entry: ConnectorEntry, actor: str) -> ConnectorEntry:
        """R-C1 create, with its fallback route (R-R7), so enabling it is allowed (R-C2)."""
        async def work(txn: Txn) -> ConnectorEntry:
            c = entry.connector
            if await directory_sql.connector(txn.db, c.name) is not None:
                raise Conflict("R-C1", f"connector {c.name!r} exists", "name")
            await _check_addresses_free(txn.db, c)
            await directory_sql.save_connector(txn.db, c, entry.username, entry.password,
                                               txn.now, create=True, secrets=entry.secrets)
            await activity.record(txn.db, f"connector:{c.name}", actor, txn.now, None,
                                  entry.snapshot())
            fallback = Route(id=0, name=f"{c.name} fallback", connector=c.name,
                             email_address=c.primary_address, order=1,
                             target=RouteTarget(kind="Ticket"), fallback=True)
            fallback = dataclasses.replace(fallback, id=await txn.save_route(fallback))
            await activity.record(txn.db, f"route:{fallback.id}", actor, txn.now, None,
                                  route_snapshot(fallback, 1))
            return entry
        return await write(self.ops, work)

    async def update_connector(self, name: str, fields: dict, actor: str, *,
                               force: bool = False) -> ConnectorEntry:
        """R-C1 update. R-C2: enabling needs a fallback route. R-C3: enabling a polled
        mailbox whose last test failed needs ``force``. R-R7: the fallback follows the
        primary address. An address that routes use must stay (R-R1)."""
        async def work(txn: Txn) -> ConnectorEntry:
            old = await load_connector(txn.db, name)
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
            if new.connector.enabled and not old.connector.enabled and fallback is None:
                raise RuleViolation("R-C2", f"connector {name!r} has no fallback route; "
                                    "create one (POST .../routes with fallback true) first",
                                    "enabled")
            if new.connector.enabled and not old.connector.enabled and not force:
                await _check_last_test(txn.db, new.connector)
            await _check_addresses_free(txn.db, new.connector)
            _check_routed_addresses_kept(old.connector, new.connector, routes)
            await directory_sql.save_connector(txn.db, new.connector, new.username,
                                               new.password, txn.now, create=False,
                                               secrets=new.secrets)
            await activity.record(txn.db, f"connector:{name}", actor, txn.now,
                                  old.snapshot(), new.snapshot())
            primary = new.connector.primary_address
            if fallback is not None and not fallback.wildcard \
                    and fallback.email_address != primary:
                order = route_bands.positions(routes)[fallback.id]
                moved = dataclasses.replace(fallback, email_address=primary)
                await txn.save_route(moved)
                await activity.record(txn.db, f"route:{fallback.id}", actor, txn.now,
                                      route_snapshot(fallback, order),
                                      route_snapshot(moved, order))
            return new
        return await write(self.ops, work)

    async def delete_connector(self, name: str, actor: str) -> None:
        """The connector and its routes, each with its history line; items and mail stay."""
        async def work(txn: Txn) -> None:
            old = await load_connector(txn.db, name)
            routes = await txn.routes(name)
            orders = route_bands.positions(routes)
            for route in routes:
                await activity.record(txn.db, f"route:{route.id}", actor, txn.now,
                                      route_snapshot(route, orders[route.id]), None)
            await directory_sql.delete_connector(txn.db, name)
            await activity.record(txn.db, f"connector:{name}", actor, txn.now,
                                  old.snapshot(), None)
        await write(self.ops, work)

    # -- contacts (R-R2 sender company) ----------------------------------------------

    async def contacts(self) -> list[tuple[int, str, str]]:
        return await self.ops.store.read(directory_sql.contacts)

    async def save_contact(self, pattern: str, company: str) -> tuple[int, str, str, bool]:
        """R-R2: ``a@x.com`` or ``*@x.com`` → company; a known pattern is re-pointed.
        Returns (id, pattern, company, created)."""
        pattern = pattern.strip().lower()
        company = company.strip()
        if not _CONTACT.fullmatch(pattern):
            raise RuleViolation("R-R2", "pattern is an address (a@example.com, no plus tag) "
                                "or a whole domain (*@example.com)", "pattern")
        if not company or ";" in company or len(company) > 200:
            raise RuleViolation("R-R2", "company is 1 to 200 characters without ';' (routes "
                                "list companies separated by ';')", "company")

        async def work(txn: Txn) -> tuple[int, bool]:
            return await directory_sql.save_contact(txn.db, pattern, company)
        contact_id, created = await write(self.ops, work)
        return contact_id, pattern, company, created

    async def delete_contact(self, contact_id: int) -> bool:
        async def work(txn: Txn) -> bool:
            return await directory_sql.delete_contact(txn.db, contact_id)
        return await write(self.ops, work)


async def _check_last_test(db: aiosqlite.Connection, connector: Connector) -> None:
    """R-C3: an incoming polled connector whose last test failed would only fail again
    every poll_interval; switching it on takes a passing test or an explicit force. Read
    in the enabling transaction, so a test recorded meanwhile cannot slip past."""
    if not connector.polled or connector.direction == "outgoing":
        return
    last = await directory_sql.last_test(db, connector.name)
    if last is not None and not last[0]:
        detail = last[1] if len(last[1]) <= 300 else last[1][:299] + "…"
        raise RuleViolation("R-C3", f"the last test of connector {connector.name!r} failed "
                            f"({detail}); test it again (POST /api/v1/connectors/"
                            f"{connector.name}/test) or enable it with \"force\": true",
                            "enabled")


async def _check_addresses_free(db: aiosqlite.Connection, connector: Connector) -> None:
    """R-C1: an address (tags and case ignored) belongs to one connector, enabled or not."""
    mine = [normalize_address(a) for a in connector.addresses()]
    if len(set(mine)) != len(mine):
        raise RuleViolation("R-C1", "an address is listed twice (primary and aliases)",
                            "aliases")
    for other, *_ in await directory_sql.connectors(db):
        if other.name == connector.name:
            continue
        taken = {normalize_address(a) for a in other.addresses()}
        for address, raw in zip(mine, connector.addresses()):
            if address in taken:
                field = "primary_address" if raw == connector.primary_address else "aliases"
                raise Conflict("R-C1", f"{raw} already belongs to connector {other.name!r}",
                               field)


def _check_routed_addresses_kept(old: Connector, new: Connector, routes: list[Route]) -> None:
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
