"""R-R1..R-R4, R-R7: when nothing matched, the connector's routes decide what to create.

Routing also runs for a match that resolved to "create a new item copied from
a closed one" (R-M5), and, when the connector was only BCC'd, with the
wildcard band alone and the target ``*`` (R-M4).
"""
from __future__ import annotations

from gateway.directory.routing import RoutingFacts, choose_routes, choose_wildcard, company_of
from gateway.pipeline.context import Context, Verdict
from gateway.pipeline.prepare import Prepared


def routing_facts(mail: Prepared, ctx: Context) -> RoutingFacts:
    """What R-R2's rules may look at: headers and attachments, never the body."""
    sender = mail.from_address
    return RoutingFacts(
        subject=mail.subject, sender=sender,
        recipients=[*mail.to_addresses, *mail.cc_addresses],
        attachment_names=list(mail.attachment_names), important=mail.important,
        folder_path=mail.folder_path,
        sender_company=company_of(sender, ctx.directory.contacts) if sender else None)


class Route:
    name = "route"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        needs_new = any(r.ref is None for r in ctx.resolved)
        if ctx.matches and not needs_new:
            return None
        index = ctx.directory.routes[ctx.connector.name]
        facts = routing_facts(mail, ctx)
        if ctx.wildcard_only:
            route = choose_wildcard(index, facts)
            if route is None:
                return Verdict("unprocessed", "no_visible_address")
            ctx.routed = [("*", route)]
            ctx.note(f"wildcard route {route.id} ({route.name})")
            return None
        result = choose_routes(index, ctx.connector, ctx.visible, facts)
        for note in result.notes:
            ctx.note(note)
        if not result.winners:
            if ctx.resolved and not needs_new:
                return None
            return Verdict("unprocessed", result.reason or "no_route")
        ctx.routed = list(result.winners)
        return None
