"""``mailgate directory export|import``: the directory as one reviewable TOML file (SPEC §5.1).

Export reads connectors, routes and contacts and renders them
(``gateway.directory_file``). Import checks the whole file before touching
anything and, only when it has no problem, applies it in ONE write transaction
that makes the stored directory exactly the file (all or nothing), with an R-C5
history line per connector and route it creates, changes or deletes.
"""
from __future__ import annotations

import dataclasses
from itertools import groupby

from gateway import activity, route_bands
from gateway.directory_file import DirectoryFile, check_directory, line_of, render
from gateway.directory_ops import ConnectorEntry, route_snapshot
from gateway.model import Route
from storage import directory_sql
from storage.txn import Txn


def _positions(routes: list[Route]) -> dict[int, int]:
    """Route id → its place 1..N on its own connector (the API's ``order``, R-R5)."""
    ranked = sorted(routes, key=lambda r: r.connector)
    return {rid: n for _, same in groupby(ranked, lambda r: r.connector)
            for rid, n in route_bands.positions(same).items()}


async def export_directory(store) -> str:
    """Connectors by name, routes by connector then order, contacts by pattern."""
    async def read(db) -> tuple[list[Route], list]:
        return await Txn(db).routes(), await directory_sql.contacts(db)
    routes, contacts = await store.read(read)
    order = _positions(routes)
    ranked = sorted(routes, key=lambda r: (r.connector, order[r.id]))
    return render(await store.connectors(), [route_snapshot(r, order[r.id]) for r in ranked],
                  [(pattern, company) for _, pattern, company in contacts])


# -- applying -----------------------------------------------------------------------------

async def import_directory(store, text: str, source: str, actor: str = "import") -> list[str]:
    """Check ``text``; with no problem, make the stored directory exactly the file.

    Connectors, routes and contacts not in the file are deleted (work items and
    mail stay); a kept connector keeps its credentials and secrets; a stored route
    with the same connector and name keeps its id. Orders become 1..N per connector.
    Returns the problems (empty: applied). The caller reloads a running snapshot.
    """
    wanted, problems = check_directory(text, source)
    if problems:
        return problems

    async def apply(db) -> list[str]:
        txn = Txn(db)
        now = txn.now       # one time for every history line of this import
        before = {e[0].name: ConnectorEntry(*e) for e in await directory_sql.connectors(db)}
        refused = await _failed_tests_enabled(db, wanted, before, text, source)
        if refused:
            return refused  # nothing written yet: the transaction commits nothing
        old_routes = await txn.routes()
        old_order = _positions(old_routes)
        for connector in wanted.connectors:
            old = before.get(connector.name)
            new = (ConnectorEntry(connector, old.username, old.password, old.secrets) if old
                   else ConnectorEntry(connector))
            await directory_sql.save_connector(db, connector, new.username, new.password, now,
                                               create=old is None, secrets=new.secrets)
            await activity.record(db, f"connector:{connector.name}", actor, now,
                                  old and old.snapshot(), new.snapshot())
        unclaimed: dict[tuple[str, str], list[Route]] = {}
        for old in old_routes:
            unclaimed.setdefault((old.connector, old.name), []).append(old)
        ranked = sorted(wanted.routes, key=lambda r: (r.connector, r.order))
        for route, order in ((r, n) for _, group in groupby(ranked, lambda r: r.connector)
                             for n, r in enumerate(group, start=1)):
            old = (unclaimed.get((route.connector, route.name)) or [None]).pop(0)
            new = dataclasses.replace(route, id=old.id if old else 0, order=order)
            new = dataclasses.replace(new, id=await txn.save_route(new))
            await activity.record(db, f"route:{new.id}", actor, now,
                                  old and route_snapshot(old, old_order[old.id]),
                                  route_snapshot(new, order))
        for old in (r for olds in unclaimed.values() for r in olds):
            await directory_sql.delete_route(db, old.id)
            await activity.record(db, f"route:{old.id}", actor, now,
                                  route_snapshot(old, old_order[old.id]), None)
        for name in sorted(before.keys() - {k.name for k in wanted.connectors}):
            await directory_sql.delete_connector(db, name)
            await activity.record(db, f"connector:{name}", actor, now,
                                  before[name].snapshot(), None)
        for contact_id, _, _ in await directory_sql.contacts(db):
            await directory_sql.delete_contact(db, contact_id)
        for pattern, company in wanted.contacts:
            await directory_sql.save_contact(db, pattern, company)
        return []
    return await store.write(apply)


async def _failed_tests_enabled(db, wanted: DirectoryFile, before: dict[str, ConnectorEntry],
                                text: str, source: str) -> list[str]:
    """R-C3 holds for an import too: a file cannot switch on an incoming polled connector
    whose last test failed. There is no force here; the API has it."""
    problems = []
    for index, connector in enumerate(wanted.connectors):   # a clean file: file order
        old = before.get(connector.name)
        if (old is None or old.connector.enabled or not connector.enabled
                or not connector.polled or connector.direction == "outgoing"):
            continue
        last = await directory_sql.last_test(db, connector.name)
        if last is not None and not last[0]:
            line = line_of(text, "connectors", index, "enabled")
            problems.append(f"{source}:{line}: connector {connector.name!r}: R-C3: its last "
                            f"test failed ({last[1][:200]}); keep enabled = false here, then "
                            "test it and enable it through the API (PATCH with \"force\": "
                            "true to enable it anyway)")
    return problems
