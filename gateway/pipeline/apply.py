"""R-E1..R-E6 and R-D2: put the copy on its work items, or create them; acknowledge new ones.

The stage whose job is the effects: it writes through the transaction the
runner owns, which commits the batch (or, for ``mailgate explain``, rolls it
back). Every target is checked against the fingerprints first (R-D2: at most
one work item per target per email); every change emits an event (R-E6).
"""
from __future__ import annotations

import dataclasses
import uuid

from gateway.model import Route, WorkItem
from gateway.outbound.compose import ack_bytes
from gateway.pipeline.ack_policy import never_automated
from gateway.pipeline.context import Context, Verdict
from gateway.pipeline.dedup import already_received, remember
from gateway.pipeline.prepare import Prepared
from gateway.workitems import rules as workitems


# R-B3: CC'd people an acknowledgement goes to (with ack_cc), at most. Anyone can write
# thousands of addresses into a Cc line, and the ack would carry their Subject there.
ACK_CC_MAX = 10
# R-B3: the acknowledgement budget counts automated mail of the last day.
ACK_BUDGET_WINDOW = 86400.0


class Apply:
    name = "apply"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        targets: list[dict] = []
        skipped: list[str] = []
        done: set[str] = set()
        for resolution in ctx.resolved:
            ref = resolution.ref
            if ref is None or ref in done:
                continue
            done.add(ref)
            if await already_received(ctx, ref):
                skipped.append(ref)
                continue
            await self._append(mail, ctx, ref)
            targets.append({"ref": ref, "action": "appended"})
        copy_from = next((r.copy_from for r in ctx.resolved if r.ref is None and r.copy_from),
                         None)
        for address, route in ctx.routed:
            target = address.lower()
            if await already_received(ctx, target):
                skipped.append(target)
                continue
            item = await self._create(mail, ctx, route, copy_from)
            await remember(ctx, target)
            targets.append({"ref": item.ref, "action": "created"})
        if skipped:
            ctx.note("already received: " + ", ".join(skipped))
        if not targets:
            return Verdict("duplicate", "every_target_already_received")
        created = any(t["action"] == "created" for t in targets)
        return Verdict("created" if created else "appended", "", targets)

    async def _append(self, mail: Prepared, ctx: Context, ref: str) -> None:
        """R-E1..R-E3 (R-E5: auto-generated mail too)."""
        txn = ctx.txn
        item = await txn.workitem(ref)
        assert item is not None
        parent = await txn.workitem(item.parent) if item.parent else None
        reopen = item.state != "RESOLVED" or await _reopen_allowed(ctx, ref)
        applied = workitems.apply_email(item, parent, reopen=reopen)
        if item.state == "RESOLVED" and reopen:
            await txn.record_reopen(ref, mail.email_id)
        for changed in applied.items:
            await txn.save_workitem(changed)
        for change in applied.changes:
            await txn.emit("workitem.state_changed", ref=change.ref, email_id=mail.email_id,
                           old=change.old, new=change.new)
        await txn.attach_email(ref, mail.email_id, "appended")
        await txn.emit("email.appended", ref=ref, email_id=mail.email_id)
        await remember(ctx, ref)

    async def _create(self, mail: Prepared, ctx: Context, route: Route,
                      copy_from: str | None) -> WorkItem:
        """R-E4: a new item from routing: TO_DO, contacts = sender + CCs, mode from the route."""
        txn = ctx.txn
        number = await txn.next_number()
        kind = route.target.kind if route.target.kind in ("Ticket", "Case") else "Ticket"
        contacts = _contacts(mail, ctx)
        automated = route.send_automated_emails and ctx.autogen_rule is None  # R-A4
        closed = await txn.workitem(copy_from) if copy_from else None
        effects = workitems.create(
            workitems.format_ref(number, kind), kind, str(uuid.uuid4()), ctx.connector.name,
            mode="test" if route.test_mode else "live", contacts=contacts,
            custom_data=_route_data(route), send_automated_emails=automated, copy_of=closed)
        item = effects.item(workitems.format_ref(number, kind))
        item.new_info = True
        if ctx.global_match and ctx.global_match != item.ref:
            item.linked = [ctx.global_match]
        await txn.save_workitem(item)
        if item.copied_from:
            await txn.copy_communications(item.copied_from, item.ref)
        if ctx.global_match:
            other = await txn.workitem(ctx.global_match)
            if other is not None and item.ref not in other.linked:
                await txn.save_workitem(dataclasses.replace(other,
                                                            linked=[*other.linked, item.ref]))
        await txn.attach_email(item.ref, mail.email_id, "created")
        await txn.emit("workitem.created", ref=item.ref, email_id=mail.email_id,
                       kind=item.kind, connector=item.connector, mode=item.mode,
                       route=route.id, copied_from=item.copied_from)
        await remember(ctx, item.ref)
        if automated:
            await self._acknowledge(mail, ctx, item, route)
        elif route.send_automated_emails:
            ctx.note(f"no acknowledgement for {item.ref}: auto-generated ({ctx.autogen_rule})")
        return item

    async def _acknowledge(self, mail: Prepared, ctx: Context, item: WorkItem,
                           route: Route) -> None:
        """R-O5 to the sender, and to CCs with ``ack_cc``; queued as automated mail (R-A3)."""
        if not mail.from_address:
            ctx.note(f"no acknowledgement for {item.ref}: no sender address")
            return
        if ctx.list_rule:
            ctx.note(f"no acknowledgement for {item.ref}: list mail, rule {ctx.list_rule} of "
                     "R-B4 (R-B3)")
            return
        own = ctx.directory.owner
        cc = [a for a in mail.cc_addresses if own(a) is None] if route.ack_cc else []
        if len(cc) > ACK_CC_MAX:    # one inbound mail must not buy a mailing to thousands
            ctx.note(f"{len(cc) - ACK_CC_MAX} more CC'd addresses get no acknowledgement: "
                     f"at most {ACK_CC_MAX} (R-B3)")
            cc = cc[:ACK_CC_MAX]
        recipients = []
        for address in dict.fromkeys([mail.from_address, *cc]):
            why = never_automated(address)
            since = ctx.txn.now - ACK_BUDGET_WINDOW
            if why is None and await ctx.txn.automated_sent_to(address, since=since) \
                    >= ctx.settings.ack_budget_per_day:
                why = f"its budget of {ctx.settings.ack_budget_per_day} automated mails a day"
            if why:
                ctx.note(f"no acknowledgement to {address}: {why} (R-B3)")
            else:
                recipients.append(address)
        if not recipients:
            return
        to, cc = recipients[:1], recipients[1:]
        raw, message_id, summary = ack_bytes(
            item=item, connector=ctx.connector, to=to, cc=cc,
            subject=mail.subject, in_reply_to=mail.message_id,
            domain=ctx.settings.message_id_domain, mode=ctx.settings.matching_mode,
            hide_plus_in_from=ctx.settings.hide_plus_in_from, tokens=ctx.settings.tokens)
        email_id = await ctx.txn.store_outgoing(
            raw, connector=ctx.connector.name, message_id=message_id,
            mail_from=ctx.connector.primary_address, rcpt_to=[*to, *cc],
            automated=True, summary=summary)
        await ctx.txn.attach_email(item.ref, email_id, "sent")
        await ctx.txn.emit("outbound.queued", ref=item.ref, email_id=email_id, automated=True)
        ctx.note(f"acknowledgement queued as email {email_id}")


async def _reopen_allowed(ctx: Context, ref: str) -> bool:
    """R-B3, second loop breaker: mail may reopen one RESOLVED item ``reopen_budget``
    times a window. Past it the mail is still appended (new_info, never lost), but the
    item stays RESOLVED: an autoresponder answering the resolution notice cannot keep
    pulling a ticket back into the queue."""
    budget, window = ctx.settings.reopen_budget, ctx.settings.reopen_window
    if not budget or await ctx.txn.reopens(ref, ctx.txn.now - window) < budget:
        return True
    ctx.note(f"{ref} stays RESOLVED: mail reopened it {budget} times in the last "
             f"{window / 3600:g} hours, its budget (R-B3, [loops] reopen_budget)")
    return False


def _contacts(mail: Prepared, ctx: Context) -> list[str]:
    """R-E4: the sender and the CC'd people, not the gateway's own addresses."""
    people = [mail.from_address] if mail.from_address else []
    people += [a for a in mail.cc_addresses if ctx.directory.owner(a) is None]
    return list(dict.fromkeys(people))


def _route_data(route: Route) -> dict:
    """The route's target fields, kept on the item for the host (process, customer …)."""
    target = route.target
    data = {"process": target.process, "customer": target.customer,
            "contract": target.contract, "service": target.service}
    if target.kind == "Ticket":
        data["ticket_category"] = target.ticket_category
    return {k: v for k, v in data.items() if v}
