"""Host operations on work items and the directory (R-W3, R-C1, R-R*), for Python and HTTP.

Each operation runs as one job on the store's single writer, so it is
serialised with the pipeline: a transition and a message for the same item
never interleave. The rules themselves are the pure functions of
``gateway.workitems`` and ``gateway.routes``; this module loads, checks,
saves and emits the events (R-E6).
"""
from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable

import aiosqlite

from gateway import workitems
from gateway.model import Connector, Route, RouteTarget, WorkItem
from gateway.routes import validate_route
from gateway.workitems import Effects, RuleViolation
from storage import directory_sql
from storage.sqlite import SqliteStore
from storage.txn import Txn


class Operations:
    def __init__(self, store: SqliteStore, on_directory_change: Callable[[], Awaitable[None]]):
        self.store = store
        self.on_directory_change = on_directory_change

    async def _in_txn(self, work: Callable[[Txn], Awaitable[Any]]) -> Any:
        async def job(db: aiosqlite.Connection) -> Any:
            return await work(Txn(db))
        return await self.store.write(job)

    @staticmethod
    async def _save(txn: Txn, effects: Effects, event_data: dict | None = None) -> None:
        for item in effects.items:
            await txn.save_workitem(item)
        for item in effects.created:
            await txn.emit("workitem.created", ref=item.ref, kind=item.kind,
                           connector=item.connector, mode=item.mode, **(event_data or {}))
        for change in effects.changes:
            await txn.emit("workitem.state_changed", ref=change.ref, old=change.old,
                           new=change.new, wait_type=change.new_wait_type)

    @staticmethod
    async def _get(txn: Txn, ref: str, field: str = "ref") -> WorkItem:
        canonical = workitems.canonical_ref(ref) or ref
        item = await txn.workitem(canonical)
        if item is None:
            raise LookupError(f"no work item {ref!r}")
        return item

    # -- work items (R-W3) -----------------------------------------------------------

    async def create_workitem(self, *, kind: str, connector: str, parent: str | None = None,
                              mode: str = "live", state: str = "TO_DO",
                              wait_type: str | None = None, custom_data: dict | None = None,
                              contacts: list[str] | None = None,
                              send_automated_emails: bool = False) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            await _connector(txn, connector)
            parent_item = await self._get(txn, parent, "parent") if parent else None
            workitems.check_new(kind, state, parent_item, wait_type=wait_type, mode=mode)
            number = await txn.next_number()
            ref = workitems.format_ref(number, kind)
            effects = workitems.create(ref, kind, str(uuid.uuid4()), connector, state=state,
                                       wait_type=wait_type, mode=mode, parent=parent_item,
                                       contacts=contacts or (), custom_data=custom_data,
                                       send_automated_emails=send_automated_emails)
            await self._save(txn, effects)
            return effects.item(ref)
        return await self._in_txn(work)

    async def workitem(self, ref: str) -> WorkItem | None:
        async def work(db: aiosqlite.Connection) -> WorkItem | None:
            return await Txn(db).workitem(workitems.canonical_ref(ref) or ref)
        return await self.store.read(work)

    async def transition(self, ref: str, state: str, wait_type: str | None = None) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            item = await self._get(txn, ref)
            effects = workitems.transition(item, state, wait_type)
            await self._save(txn, effects)
            return effects.item(item.ref)
        return await self._in_txn(work)

    async def split(self, ref: str, children: int) -> list[WorkItem]:
        if isinstance(children, bool) or not isinstance(children, int) \
                or not 1 <= children <= 100:
            raise RuleViolation("R-W3", "children must be a number from 1 to 100", "children")

        async def work(txn: Txn) -> list[WorkItem]:
            item = await self._get(txn, ref)
            refs = [workitems.format_ref(await txn.next_number(), "Ticket")
                    for _ in range(children)]
            effects = workitems.split(item, refs, [str(uuid.uuid4()) for _ in refs])
            await self._save(txn, effects, {"split_from": item.ref})
            return [effects.item(r) for r in refs]
        return await self._in_txn(work)

    async def merge(self, refs: list[str], into: str) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            sources = [await self._get(txn, r) for r in refs]
            target = await self._get(txn, into, "into")
            effects = workitems.merge(sources, target)
            await self._save(txn, effects)
            return effects.item(target.ref)
        return await self._in_txn(work)

    async def convert(self, ref: str) -> WorkItem:
        """A Ticket becomes a Case; returns the Case."""
        async def work(txn: Txn) -> WorkItem:
            ticket = await self._get(txn, ref)
            case_ref = workitems.format_ref(await txn.next_number(), "Case")
            effects = workitems.convert(ticket, case_ref, str(uuid.uuid4()))
            await self._save(txn, effects, {"converted_from": ticket.ref})
            return effects.item(case_ref)
        return await self._in_txn(work)

    async def link(self, ref: str, other: str) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            a, b = await self._get(txn, ref), await self._get(txn, other, "ref")
            effects = workitems.link(a, b)
            await self._save(txn, effects)
            return effects.item(a.ref)
        return await self._in_txn(work)

    async def set_parent(self, ref: str, parent: str | None) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            child = await self._get(txn, ref)
            parent_item = await self._get(txn, parent, "parent") if parent else None
            known: dict[str, WorkItem] = {}

            async def preload(start: WorkItem | None) -> None:
                while start is not None and start.ref not in known and len(known) < 1000:
                    known[start.ref] = start
                    start = await txn.workitem(start.parent) if start.parent else None

            await preload(parent_item)
            effects = workitems.set_parent(child, parent_item, known.get)
            await self._save(txn, effects)
            return effects.item(child.ref)
        return await self._in_txn(work)

    async def send_email(self, ref: str, *, to: list[str], subject: str, body: str,
                         cc: list[str] = (), settings=None, connector: Connector | None = None,
                         in_reply_to: str | None = None, directory=None,
                         share_with_linked: bool = False,
                         attachments: list[tuple[str, str, bytes]] = ()) -> tuple[int, str]:
        """R-O6: an agent's mail, appended to the item as outgoing and queued for delivery;
        with ``share_with_linked`` also to the linked items it is addressed to.
        R-O2: in modes mixed/plus_only a gateway address in To/Cc that belongs to the
        connector of a linked item carries that item's tag, so the copy lands there.
        Returns (email id, Message-ID)."""
        from gateway.outbound import compose_agent_mail, plain_address, plus_tagged

        for field, addresses in (("to", to), ("cc", cc)):
            bad = [a for a in addresses if not plain_address(a)]
            if bad or (field == "to" and not addresses):
                raise RuleViolation("R-O6", f"{field}: plain addresses like a@example.com only,"
                                    f" got {bad or 'none'}", field)

        async def work(txn: Txn) -> tuple[int, str]:
            item = await self._get(txn, ref)
            sender = connector or await _connector(txn, item.connector)
            shared: list[str] = []

            async def tagged(addresses: list[str]) -> list[str]:
                if directory is None or settings.matching_mode not in ("mixed", "plus_only"):
                    return list(addresses)
                result = []
                for address in addresses:
                    owner = directory.owner(address)
                    linked = [await txn.workitem(r) for r in item.linked] if owner else []
                    match = next((l for l in linked if l and l.connector == owner), None)
                    if match is None:
                        result.append(address)
                        continue
                    result.append(plus_tagged(address, match.ref, settings.tokens))
                    shared.append(match.ref)
                return result

            to_tagged, cc_tagged = await tagged(list(to)), await tagged(list(cc))
            message, message_id = compose_agent_mail(
                item=item, connector=sender, to=to_tagged, cc=cc_tagged, subject=subject,
                attachments=list(attachments),
                body=body, in_reply_to=in_reply_to, domain=settings.message_id_domain,
                mode=settings.matching_mode, hide_plus_in_from=settings.hide_plus_in_from,
                tokens=settings.tokens)
            email_id = await txn.store_outgoing(
                message.as_bytes(), connector=sender.name, message_id=message_id,
                mail_from=sender.primary_address, rcpt_to=[*to_tagged, *cc_tagged],
                automated=False)
            await txn.attach_email(item.ref, email_id, "sent")
            if share_with_linked:
                for linked_ref in dict.fromkeys(shared):
                    await txn.attach_email(linked_ref, email_id, "sent")
            await txn.emit("outbound.queued", ref=item.ref, email_id=email_id, automated=False)
            return email_id, message_id
        return await self._in_txn(work)

    async def workitem_emails(self, ref: str) -> list[int]:
        async def work(db: aiosqlite.Connection) -> list[int]:
            return await Txn(db).item_email_ids(workitems.canonical_ref(ref) or ref)
        return await self.store.read(work)

    # -- directory (R-C1, R-R*) ------------------------------------------------------

    async def add_connector(self, connector: Connector, *, fallback_kind: str = "Ticket",
                            send_automated_emails: bool = False,
                            with_fallback: bool = True, username: str | None = None,
                            password: str | None = None,
                            secrets: dict | None = None) -> Route | None:
        """Create a connector with its fallback route (R-R7: every connector has exactly one;
        R-C2: it cannot be enabled without one). Returns the fallback route. A polled
        connector brings its login: ``username``, ``password`` and the Graph ``secrets``."""
        async def work(txn: Txn) -> Route:
            await directory_sql.save_connector(txn.db, connector, username, password, txn.now,
                                               create=True, secrets=secrets)
            if not with_fallback:
                return None
            return await _ensure_fallback(txn, connector, fallback_kind, send_automated_emails)
        route = await self._in_txn(work)
        await self.on_directory_change()
        return route

    async def delete_connector(self, name: str) -> bool:
        """Remove a connector and its routes; its work items and emails stay."""
        async def work(txn: Txn) -> bool:
            if await directory_sql.connector(txn.db, name) is None:
                return False
            await directory_sql.delete_connector(txn.db, name)
            return True
        deleted = await self._in_txn(work)
        await self.on_directory_change()
        return deleted

    async def add_route(self, route: Route) -> Route:
        """R-R1..R-R7 checks that need no store state beyond the connector's routes; a new
        route goes to the end of its band (non-wildcard, then wildcard, before the fallback)."""
        async def work(txn: Txn) -> Route:
            connector = await _connector(txn, route.connector)
            existing = await txn.routes(route.connector)
            problems = validate_route(route, connector, existing)
            if problems:
                rule, field, message = problems[0]
                raise RuleViolation(rule, message, field)
            order = _end_of_band(existing, route)
            saved = Route(**{**_route_fields(route), "id": 0, "order": order})
            await _shift_fallback(txn, existing, order)
            route_id = await txn.save_route(saved)
            return Route(**{**_route_fields(saved), "id": route_id})
        route = await self._in_txn(work)
        await self.on_directory_change()
        return route

    async def search_routes(self, connector: str, q: str) -> list[Route]:
        """R-R6: routes whose address, process or ticket category starts with ``q``."""
        async def work(db: aiosqlite.Connection) -> list[Route]:
            needle = q.strip().lower()
            return [r for r in await Txn(db).routes(connector)
                    if any(field.lower().startswith(needle) for field in
                           (r.email_address, r.target.process, r.target.ticket_category))]
        return await self.store.read(work)

    async def set_processes(self, names: list[str]) -> None:
        """R-R8: the host says which processes exist; routes naming others get flagged."""
        async def work(txn: Txn) -> None:
            await txn.set_processes(names)
        await self._in_txn(work)

    async def flagged_routes(self) -> list[tuple[Route, str]]:
        """R-R8 (and R-R7): routes that keep working but need an admin's look, with why."""
        async def work(db: aiosqlite.Connection) -> list[tuple[Route, str]]:
            txn = Txn(db)
            known = await txn.processes()
            flagged = []
            for route in await txn.routes():
                if known and route.target.process and route.target.process not in known:
                    flagged.append((route, f"R-R8: process {route.target.process!r} "
                                           "no longer exists"))
            return flagged
        return await self.store.read(work)

    async def add_contact(self, pattern: str, company: str) -> None:
        await self._in_txn(lambda txn: txn.save_contact(pattern, company))
        await self.on_directory_change()


async def _connector(txn: Txn, name: str) -> Connector:
    found = await directory_sql.connector(txn.db, name)
    if found is None:
        raise LookupError(f"no connector {name!r}")
    return found[0]


async def _ensure_fallback(txn: Txn, connector: Connector, kind: str,
                           send_automated_emails: bool) -> Route:
    existing = [r for r in await txn.routes(connector.name) if r.fallback]
    if existing:
        return existing[0]
    route = Route(id=0, name=f"{connector.name} fallback", connector=connector.name,
                  email_address=connector.primary_address, order=1_000_000,
                  target=RouteTarget(kind=kind), send_automated_emails=send_automated_emails,
                  fallback=True)
    route_id = await txn.save_route(route)
    return Route(**{**_route_fields(route), "id": route_id})


def _route_fields(route: Route) -> dict:
    return {name: getattr(route, name) for name in Route.__dataclass_fields__}


def _band(route: Route) -> int:
    """R-R5: 0 non-wildcard, 1 wildcard, 2 fallback."""
    return 2 if route.fallback else (1 if route.wildcard else 0)


def _end_of_band(existing: list[Route], route: Route) -> int:
    band = _band(route)
    same_or_before = [r.order for r in existing if _band(r) <= band and not r.fallback]
    return max(same_or_before, default=0) + 1


async def _shift_fallback(txn: Txn, existing: list[Route], order: int) -> None:
    """Keep every wildcard after every exact route, and the fallback last."""
    for other in existing:
        if other.order >= order:
            moved = Route(**{**_route_fields(other), "order": other.order + 1})
            await txn.save_route(moved)
