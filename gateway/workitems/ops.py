"""Host operations on work items (R-W3) and agents' mail (R-O6), for Python and HTTP.

Each operation is one transaction of the store's, so it is serialised with the
pipeline: a transition and a message for the same item never interleave. The
rules themselves are the pure functions of ``workitems.rules``; this module
loads, checks, saves and emits the events (R-E6).
"""
from __future__ import annotations

import uuid

from gateway.directory.snapshot import Directory
from gateway.mail_summary import message_summary
from gateway.model import Connector, RuleViolation, WorkItem
from gateway.outbound.compose import Composing, compose_agent_mail, plain_address, plus_tagged
from gateway.workitems import rules as workitems
from gateway.workitems.rules import Effects
from storage.base import Store, Txn


class WorkItemOps:
    def __init__(self, store: Store):
        self.store = store

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
        return await self.store.transaction(work)

    async def workitem(self, ref: str) -> WorkItem | None:
        canonical = workitems.canonical_ref(ref) or ref
        return await self.store.read(lambda t: t.workitem(canonical))

    async def workitems(self, *, connector: str | None = None, state: str | None = None,
                        mode: str | None = None, limit: int = 1000) -> list[WorkItem]:
        return await self.store.read(lambda t: t.workitems(connector=connector, state=state,
                                                           mode=mode, limit=limit))

    async def transition(self, ref: str, state: str, wait_type: str | None = None) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            item = await self._get(txn, ref)
            effects = workitems.transition(item, state, wait_type)
            await self._save(txn, effects)
            return effects.item(item.ref)
        return await self.store.transaction(work)

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
        return await self.store.transaction(work)

    async def merge(self, refs: list[str], into: str) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            sources = [await self._get(txn, r) for r in refs]
            target = await self._get(txn, into, "into")
            effects = workitems.merge(sources, target)
            await self._save(txn, effects)
            return effects.item(target.ref)
        return await self.store.transaction(work)

    async def convert(self, ref: str) -> WorkItem:
        """A Ticket becomes a Case; returns the Case."""
        async def work(txn: Txn) -> WorkItem:
            ticket = await self._get(txn, ref)
            case_ref = workitems.format_ref(await txn.next_number(), "Case")
            effects = workitems.convert(ticket, case_ref, str(uuid.uuid4()))
            await self._save(txn, effects, {"converted_from": ticket.ref})
            return effects.item(case_ref)
        return await self.store.transaction(work)

    async def link(self, ref: str, other: str) -> WorkItem:
        async def work(txn: Txn) -> WorkItem:
            a, b = await self._get(txn, ref), await self._get(txn, other, "ref")
            effects = workitems.link(a, b)
            await self._save(txn, effects)
            return effects.item(a.ref)
        return await self.store.transaction(work)

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
        return await self.store.transaction(work)

    async def send_email(self, ref: str, *, to: list[str], subject: str, body: str,
                         composing: Composing, directory: Directory | None = None,
                         cc: list[str] = (), connector: Connector | None = None,
                         in_reply_to: str | None = None,
                         share_with_linked: bool = False,
                         attachments: list[tuple[str, str, bytes]] = ()) -> tuple[int, str]:
        """R-O6: an agent's mail, appended to the item as outgoing and queued for delivery;
        with ``share_with_linked`` also to the linked items it is addressed to.
        R-O2: in modes mixed/plus_only a gateway address in To/Cc that belongs to the
        connector of a linked item carries that item's tag, so the copy lands there.
        Returns (email id, Message-ID)."""
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
                if directory is None or composing.mode not in ("mixed", "plus_only"):
                    return list(addresses)
                result = []
                for address in addresses:
                    owner = directory.owner(address)
                    linked = [await txn.workitem(r) for r in item.linked] if owner else []
                    match = next((l for l in linked if l and l.connector == owner), None)
                    if match is None:
                        result.append(address)
                        continue
                    result.append(plus_tagged(address, match.ref, composing.tokens))
                    shared.append(match.ref)
                return result

            to_tagged, cc_tagged = await tagged(list(to)), await tagged(list(cc))
            message, message_id = compose_agent_mail(
                item=item, connector=sender, to=to_tagged, cc=cc_tagged, subject=subject,
                attachments=list(attachments),
                body=body, in_reply_to=in_reply_to, domain=composing.domain, mode=composing.mode,
                hide_plus_in_from=composing.hide_plus_in_from, tokens=composing.tokens)
            email_id = await txn.store_outgoing(
                message.as_bytes(), connector=sender.name, message_id=message_id,
                mail_from=sender.primary_address, rcpt_to=[*to_tagged, *cc_tagged],
                automated=False, summary=message_summary(message))
            await txn.attach_email(item.ref, email_id, "sent")
            if share_with_linked:
                for linked_ref in dict.fromkeys(shared):
                    await txn.attach_email(linked_ref, email_id, "sent")
            await txn.emit("outbound.queued", ref=item.ref, email_id=email_id, automated=False)
            return email_id, message_id
        return await self.store.transaction(work)

    async def workitem_emails(self, ref: str) -> list[int]:
        canonical = workitems.canonical_ref(ref) or ref
        return await self.store.read(lambda t: t.item_email_ids(canonical))


async def _connector(txn: Txn, name: str) -> Connector:
    found = await txn.connector_entry(name)
    if found is None:
        raise LookupError(f"no connector {name!r}")
    return found.connector
