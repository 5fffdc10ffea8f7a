"""``mailgate directory export|import``: the directory as one reviewable TOML file (SPEC §5.1).

Export reads connectors, routes and contacts and renders them
(``directory.file``). Import checks the whole file before touching anything
and, only when it has no problem, hands it to the directory's one write door
(``DirectoryOps.replace``), which makes the stored directory exactly the file
in one transaction (all or nothing), with an R-C5 history line per connector
and route it creates, changes or deletes.
"""
from __future__ import annotations

from gateway.directory.activity import route_snapshot
from gateway.directory.file import check_directory, line_of, render
from gateway.directory.ops import DirectoryOps
from gateway.directory.rules import places
from gateway.model import ConnectorEntry, Route
from storage.base import Contact, Txn


async def export_directory(ops: DirectoryOps) -> str:
    """Connectors by name, routes by connector then order, contacts by pattern."""
    async def read(txn: Txn) -> tuple[list[ConnectorEntry], list[Route], list[Contact]]:
        return await txn.connector_entries(), await txn.routes(), await txn.contacts()
    entries, routes, contacts = await ops.store.read(read)
    order = places(routes)
    ranked = sorted(routes, key=lambda r: (r.connector, order[r.id]))
    return render([e.connector for e in entries],
                  [route_snapshot(r, order[r.id]) for r in ranked],
                  [(c.pattern, c.company) for c in contacts])


async def import_directory(ops: DirectoryOps, text: str, source: str,
                           actor: str = "import") -> list[str]:
    """Check ``text``; with no problem, make the stored directory exactly the file.

    Connectors, routes and contacts not in the file are deleted (work items and
    mail stay); a kept connector keeps its credentials and secrets; a stored route
    with the same connector and name keeps its id. Orders become 1..N per connector.
    Returns the problems (empty: applied).
    """
    wanted, problems = check_directory(text, source)
    if problems:
        return problems
    refused = await ops.replace([ConnectorEntry(c) for c in wanted.connectors], wanted.routes,
                                wanted.contacts, actor)
    # R-C3 holds for an import too: a file cannot switch on an incoming polled connector
    # whose last test failed. There is no force here; the API has it.
    return [f"{source}:{line_of(text, 'connectors', index, 'enabled')}: connector "
            f"{wanted.connectors[index].name!r}: R-C3: its last test failed ({detail[:200]}); "
            "keep enabled = false here, then test it and enable it through the API (PATCH "
            "with \"force\": true to enable it anyway)" for index, detail in refused]
