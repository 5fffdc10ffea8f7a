"""SQLite SQL of the directory: connectors with credentials, routes, contacts, the
activity history, connector tests and the host's processes (R-C1, R-C3, R-C5, R-R*).

A mixin of :class:`storage.sqlite.txn.SqliteTxn`: the methods run on the
transaction's connection, on its thread, and never suspend.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

from gateway.model import (POLL_FIELDS, SECRET_FIELDS, Connector, ConnectorEntry, Route,
                           RouteRules, RouteTarget)
from storage.base import ActivityLine, Contact, ConnectorTest

_CONNECTOR_COLUMNS = ("name, service, primary_address, aliases, enabled, direction, protocol,"
                      " route_on_envelope, username, password, smtp_host, smtp_port, smtp_tls,"
                      " incoming, secrets")
_ROUTE_COLUMNS = ("id, connector, name, email_address, folder_path, rules, target,"
                  " send_automated_emails, ack_cc, test_mode, enabled, ord, fallback")


def _incoming_json(c: Connector) -> str:
    """The polled-connector settings (POLL_FIELDS) as the ``incoming`` column holds them."""
    return json.dumps(c.poll_settings(), sort_keys=True)


def _incoming(text: str) -> dict:
    values = {k: v for k, v in json.loads(text or "{}").items() if k in POLL_FIELDS}
    if "folders" in values:
        values["folders"] = tuple(values["folders"])
    return values


def _entry(row: Any) -> ConnectorEntry:
    (name, service, primary, aliases, enabled, direction, protocol, on_envelope,
     username, password, smtp_host, smtp_port, smtp_tls, incoming, secrets) = row
    connector = Connector(name=name, service=service, primary_address=primary,
                          aliases=tuple(json.loads(aliases)), enabled=bool(enabled),
                          direction=direction, protocol=protocol,
                          route_on_envelope=bool(on_envelope), smtp_host=smtp_host,
                          smtp_port=smtp_port, smtp_tls=smtp_tls, **_incoming(incoming))
    kept = {k: v for k, v in json.loads(secrets or "{}").items() if k in SECRET_FIELDS}
    return ConnectorEntry(connector, username, password, kept)


def _route(row: Any) -> Route:
    (rid, connector, name, address, folder, rules, target, automated, ack_cc, test_mode,
     enabled, order, fallback) = row
    return Route(id=rid, name=name, connector=connector, email_address=address, order=order,
                 folder_path=folder, rules=RouteRules(**json.loads(rules)),
                 target=RouteTarget(**json.loads(target)),
                 send_automated_emails=bool(automated), ack_cc=bool(ack_cc),
                 test_mode=bool(test_mode), enabled=bool(enabled), fallback=bool(fallback))


def _rules_json(rules: RouteRules) -> dict:
    return {"important": rules.important, "attachment_types": rules.attachment_types,
            "subject_keywords": rules.subject_keywords,
            "sender_companies": rules.sender_companies,
            "sender_list_includes": rules.sender_list_includes,
            "recipient_list_includes": rules.recipient_list_includes}


def _target_json(target: RouteTarget) -> dict:
    return {"kind": target.kind, "process": target.process, "customer": target.customer,
            "contract": target.contract, "service": target.service,
            "ticket_category": target.ticket_category}


class DirectorySql:
    """The directory's reads and writes (see :class:`storage.base.Txn`)."""
    conn: sqlite3.Connection
    now: float

    def _one(self, sql: str, params: Iterable = ()) -> Any: ...   # SqliteTxn's

    def _all(self, sql: str, params: Iterable = ()) -> list: ...

    # -- connectors (R-C1) -------------------------------------------------------------

    async def connector_entry(self, name: str) -> ConnectorEntry | None:
        row = self._one(f"SELECT {_CONNECTOR_COLUMNS} FROM connectors WHERE name = ?", (name,))
        return _entry(row) if row is not None else None

    async def connector_entries(self) -> list[ConnectorEntry]:
        """Every connector with its credentials, by name."""
        return [_entry(r) for r in
                self._all(f"SELECT {_CONNECTOR_COLUMNS} FROM connectors ORDER BY name")]

    async def save_connector(self, entry: ConnectorEntry, *, create: bool) -> None:
        c = entry.connector
        kept = {k: v for k, v in entry.secrets.items() if k in SECRET_FIELDS and v}
        values = (c.service, c.direction, c.protocol, c.primary_address,
                  json.dumps(list(c.aliases)), int(c.enabled), int(c.route_on_envelope),
                  entry.username, entry.password, c.smtp_host, c.smtp_port, c.smtp_tls,
                  _incoming_json(c), json.dumps(kept, sort_keys=True), self.now)
        if create:
            self.conn.execute(
                "INSERT INTO connectors (service, direction, protocol, primary_address, aliases,"
                " enabled, route_on_envelope, username, password, smtp_host, smtp_port,"
                " smtp_tls, incoming, secrets, updated_at, created_at, name)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, self.now, c.name))
        else:
            self.conn.execute(
                "UPDATE connectors SET service = ?, direction = ?, protocol = ?,"
                " primary_address = ?, aliases = ?, enabled = ?, route_on_envelope = ?,"
                " username = ?, password = ?, smtp_host = ?, smtp_port = ?, smtp_tls = ?,"
                " incoming = ?, secrets = ?, updated_at = ? WHERE name = ?", (*values, c.name))

    async def delete_connector(self, name: str) -> None:
        """The connector and its routes (its work items and emails stay)."""
        self.conn.execute("DELETE FROM routes WHERE connector = ?", (name,))
        self.conn.execute("DELETE FROM connectors WHERE name = ?", (name,))

    # -- routes (R-R*) -----------------------------------------------------------------

    async def route(self, route_id: int) -> Route | None:
        row = self._one(f"SELECT {_ROUTE_COLUMNS} FROM routes WHERE id = ?", (route_id,))
        return _route(row) if row is not None else None

    async def routes(self, connector: str | None = None) -> list[Route]:
        clause, params = (" WHERE connector = ?", (connector,)) if connector else ("", ())
        rows = self._all(f"SELECT {_ROUTE_COLUMNS} FROM routes{clause} ORDER BY connector,"
                         " ord, id", params)
        return [_route(r) for r in rows]

    async def save_route(self, route: Route) -> int:
        values = (route.connector, route.name, route.email_address, route.folder_path,
                  json.dumps(_rules_json(route.rules)), json.dumps(_target_json(route.target)),
                  int(route.send_automated_emails), int(route.ack_cc), int(route.test_mode),
                  int(route.enabled), route.order, int(route.fallback))
        if route.id:
            self.conn.execute(
                "UPDATE routes SET connector = ?, name = ?, email_address = ?, folder_path = ?,"
                " rules = ?, target = ?, send_automated_emails = ?, ack_cc = ?, test_mode = ?,"
                " enabled = ?, ord = ?, fallback = ? WHERE id = ?", (*values, route.id))
            return route.id
        return self.conn.execute(
            "INSERT INTO routes (connector, name, email_address, folder_path, rules, target,"
            " send_automated_emails, ack_cc, test_mode, enabled, ord, fallback)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values).lastrowid

    async def delete_route(self, route_id: int) -> None:
        self.conn.execute("DELETE FROM routes WHERE id = ?", (route_id,))

    async def set_route_orders(self, orders: list[tuple[int, int]]) -> None:
        """``(order, id)`` pairs (R-R5: 1..N per connector)."""
        self.conn.executemany("UPDATE routes SET ord = ? WHERE id = ?", orders)

    # -- contacts (R-R2 sender company) ------------------------------------------------

    async def contacts(self) -> list[Contact]:
        return [Contact(*r) for r in
                self._all("SELECT id, pattern, company FROM contacts ORDER BY pattern")]

    async def save_contact(self, pattern: str, company: str) -> tuple[int, bool]:
        """Insert or re-point ``pattern``; returns (id, created)."""
        row = self._one("SELECT id FROM contacts WHERE pattern = ?", (pattern,))
        if row is not None:
            self.conn.execute("UPDATE contacts SET company = ? WHERE id = ?", (company, row[0]))
            return row[0], False
        cursor = self.conn.execute("INSERT INTO contacts (pattern, company) VALUES (?, ?)",
                                   (pattern, company))
        return cursor.lastrowid, True

    async def delete_contact(self, contact_id: int) -> bool:
        return self.conn.execute("DELETE FROM contacts WHERE id = ?",
                                 (contact_id,)).rowcount > 0

    # -- activity (R-C5) ---------------------------------------------------------------

    async def add_activity(self, entity: str, action: str, actor: str, at: float,
                           changes: dict) -> None:
        self.conn.execute("INSERT INTO activity (entity, action, actor, at, changes)"
                          " VALUES (?, ?, ?, ?, ?)",
                          (entity, action, actor, at, json.dumps(changes)))

    async def activity(self, *, entity: str | None, after: int,
                       limit: int) -> list[ActivityLine]:
        clause, params = ("AND entity = ?", (entity,)) if entity else ("", ())
        rows = self._all(f"SELECT id, entity, action, actor, at, changes FROM activity"
                         f" WHERE id > ? {clause} ORDER BY id LIMIT ?", (after, *params, limit))
        return [ActivityLine(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    # -- connector tests (R-C3) --------------------------------------------------------

    async def save_test(self, name: str, ok: bool, detail: str, at: float) -> None:
        """Keep the last test of connector ``name`` (nothing when it was deleted meanwhile)."""
        self.conn.execute(
            "INSERT INTO connector_tests (connector, ok, detail, tested_at)"
            " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM connectors WHERE name = ?)"
            " ON CONFLICT(connector) DO UPDATE SET ok = excluded.ok, detail = excluded.detail,"
            " tested_at = excluded.tested_at", (name, int(ok), detail, at, name))

    async def last_test(self, name: str) -> ConnectorTest | None:
        """The connector's last test, or None when never tested. A test older than the
        connector is of a deleted namesake: it does not count."""
        row = self._one("SELECT t.ok, t.detail, t.tested_at FROM connector_tests t"
                        " JOIN connectors c ON c.name = t.connector"
                        " WHERE t.connector = ? AND t.tested_at >= c.created_at", (name,))
        return ConnectorTest(bool(row[0]), row[1], row[2]) if row is not None else None

    # -- the host's processes (R-R8) ---------------------------------------------------

    async def set_processes(self, names: Iterable[str]) -> None:
        """R-R8: the host's processes, replacing the previous list."""
        self.conn.execute("DELETE FROM processes")
        self.conn.executemany("INSERT OR IGNORE INTO processes (name, updated_at)"
                              " VALUES (?, ?)", [(n, self.now) for n in names])

    async def processes(self) -> set[str]:
        return {r[0] for r in self._all("SELECT name FROM processes")}
