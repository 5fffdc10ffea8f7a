"""SQL for the directory API: connectors with credentials, routes by id, orders,
contacts and the activity history (R-C1, R-R5, R-R7, R-C5).

Plain functions over an open connection, so the same call serves a write job
(inside the writer's transaction, ``Txn.db``) and a read (the reader connection).
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import aiosqlite

from gateway.model import POLL_FIELDS, SECRET_FIELDS, Connector, Route
from storage.txn import ROUTE_COLUMNS, route_from_row

_CONNECTOR_COLUMNS = ("name, service, primary_address, aliases, enabled, direction, protocol,"
                      " route_on_envelope, username, password, smtp_host, smtp_port, smtp_tls,"
                      " incoming, secrets")


async def _one(db: aiosqlite.Connection, sql: str, params: Iterable = ()) -> Any:
    async with db.execute(sql, tuple(params)) as cursor:
        return await cursor.fetchone()


async def _all(db: aiosqlite.Connection, sql: str, params: Iterable = ()) -> list:
    async with db.execute(sql, tuple(params)) as cursor:
        return list(await cursor.fetchall())


# (connector, username, password, secrets): what the directory keeps of a connector
ConnectorRow = tuple[Connector, str | None, str | None, dict]


def incoming_json(c: Connector) -> str:
    """The polled-connector settings (POLL_FIELDS) as the ``incoming`` column holds them."""
    return json.dumps(c.poll_settings(), sort_keys=True)


def _incoming(text: str) -> dict:
    values = {k: v for k, v in json.loads(text or "{}").items() if k in POLL_FIELDS}
    if "folders" in values:
        values["folders"] = tuple(values["folders"])
    return values


def _connector(row: Any) -> ConnectorRow:
    (name, service, primary, aliases, enabled, direction, protocol, on_envelope,
     username, password, smtp_host, smtp_port, smtp_tls, incoming, secrets) = tuple(row)
    return (Connector(name=name, service=service, primary_address=primary,
                      aliases=tuple(json.loads(aliases)), enabled=bool(enabled),
                      direction=direction, protocol=protocol,
                      route_on_envelope=bool(on_envelope), smtp_host=smtp_host,
                      smtp_port=smtp_port, smtp_tls=smtp_tls, **_incoming(incoming)),
            username, password,
            {k: v for k, v in json.loads(secrets or "{}").items() if k in SECRET_FIELDS})


async def connector(db: aiosqlite.Connection, name: str) -> ConnectorRow | None:
    """(connector, username, password, secrets) or None."""
    row = await _one(db, f"SELECT {_CONNECTOR_COLUMNS} FROM connectors WHERE name = ?", (name,))
    return _connector(row) if row is not None else None


async def connectors(db: aiosqlite.Connection) -> list[ConnectorRow]:
    rows = await _all(db, f"SELECT {_CONNECTOR_COLUMNS} FROM connectors ORDER BY name")
    return [_connector(r) for r in rows]


async def save_connector(db: aiosqlite.Connection, c: Connector, username: str | None,
                         password: str | None, now: float, *, create: bool,
                         secrets: dict | None = None) -> None:
    kept = {k: v for k, v in (secrets or {}).items() if k in SECRET_FIELDS and v}
    values = (c.service, c.direction, c.protocol, c.primary_address, json.dumps(list(c.aliases)),
              int(c.enabled), int(c.route_on_envelope), username, password, c.smtp_host,
              c.smtp_port, c.smtp_tls, incoming_json(c), json.dumps(kept, sort_keys=True), now)
    if create:
        await db.execute(
            "INSERT INTO connectors (service, direction, protocol, primary_address, aliases,"
            " enabled, route_on_envelope, username, password, smtp_host, smtp_port, smtp_tls,"
            " incoming, secrets, updated_at, created_at, name)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, now, c.name))
    else:
        await db.execute(
            "UPDATE connectors SET service = ?, direction = ?, protocol = ?, primary_address = ?,"
            " aliases = ?, enabled = ?, route_on_envelope = ?, username = ?, password = ?,"
            " smtp_host = ?, smtp_port = ?, smtp_tls = ?, incoming = ?, secrets = ?,"
            " updated_at = ? WHERE name = ?",
            (*values, c.name))


async def delete_connector(db: aiosqlite.Connection, name: str) -> None:
    """The connector and its routes (its work items and emails stay)."""
    await db.execute("DELETE FROM routes WHERE connector = ?", (name,))
    await db.execute("DELETE FROM connectors WHERE name = ?", (name,))


async def route(db: aiosqlite.Connection, route_id: int) -> Route | None:
    row = await _one(db, f"SELECT {ROUTE_COLUMNS} FROM routes WHERE id = ?", (route_id,))
    return route_from_row(tuple(row)) if row is not None else None


async def delete_route(db: aiosqlite.Connection, route_id: int) -> None:
    await db.execute("DELETE FROM routes WHERE id = ?", (route_id,))


async def set_orders(db: aiosqlite.Connection, orders: list[tuple[int, int]]) -> None:
    """``(order, id)`` pairs (R-R5: 1..N per connector)."""
    await db.executemany("UPDATE routes SET ord = ? WHERE id = ?", orders)



# -- connector tests (R-C3) ---------------------------------------------------------------

async def save_test(db: aiosqlite.Connection, name: str, ok: bool, detail: str,
                    at: float) -> None:
    """Keep the last test of connector ``name`` (nothing when it was deleted meanwhile)."""
    await db.execute(
        "INSERT INTO connector_tests (connector, ok, detail, tested_at)"
        " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM connectors WHERE name = ?)"
        " ON CONFLICT(connector) DO UPDATE SET ok = excluded.ok, detail = excluded.detail,"
        " tested_at = excluded.tested_at", (name, int(ok), detail, at, name))


async def last_test(db: aiosqlite.Connection, name: str) -> tuple[bool, str, float] | None:
    """(ok, detail, tested_at) of the connector's last test, or None when never tested.
    A test older than the connector is of a deleted namesake: it does not count."""
    row = await _one(db, "SELECT t.ok, t.detail, t.tested_at FROM connector_tests t"
                         " JOIN connectors c ON c.name = t.connector"
                         " WHERE t.connector = ? AND t.tested_at >= c.created_at", (name,))
    return (bool(row[0]), row[1], row[2]) if row is not None else None

# -- contacts (R-R2 sender company) ------------------------------------------------------

async def contacts(db: aiosqlite.Connection) -> list[tuple[int, str, str]]:
    return [tuple(r) for r in await _all(db, "SELECT id, pattern, company FROM contacts"
                                         " ORDER BY pattern")]


async def save_contact(db: aiosqlite.Connection, pattern: str, company: str
                       ) -> tuple[int, bool]:
    """Insert or re-point ``pattern``; returns (id, created)."""
    row = await _one(db, "SELECT id FROM contacts WHERE pattern = ?", (pattern,))
    if row is not None:
        await db.execute("UPDATE contacts SET company = ? WHERE id = ?", (company, row[0]))
        return row[0], False
    cursor = await db.execute("INSERT INTO contacts (pattern, company) VALUES (?, ?)",
                              (pattern, company))
    return cursor.lastrowid, True


async def delete_contact(db: aiosqlite.Connection, contact_id: int) -> bool:
    cursor = await db.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
    return cursor.rowcount > 0


# -- activity (R-C5) ------------------------------------------------------------------

async def add_activity(db: aiosqlite.Connection, entity: str, action: str, actor: str,
                       at: float, changes: dict) -> None:
    await db.execute("INSERT INTO activity (entity, action, actor, at, changes)"
                     " VALUES (?, ?, ?, ?, ?)", (entity, action, actor, at, json.dumps(changes)))


async def activity(db: aiosqlite.Connection, *, entity: str | None, after: int,
                   limit: int) -> list[dict]:
    clause, params = ("AND entity = ?", (entity,)) if entity else ("", ())
    rows = await _all(db, f"SELECT id, entity, action, actor, at, changes FROM activity"
                          f" WHERE id > ? {clause} ORDER BY id LIMIT ?", (after, *params, limit))
    return [{"id": r[0], "entity": r[1], "action": r[2], "actor": r[3], "at": r[4],
             "changes": json.loads(r[5])} for r in rows]
