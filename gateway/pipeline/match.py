"""R-M1..R-M6: find the work items of connector K this copy belongs to, then resolve them.

Modes (R-M1): ``off`` — the standard rules, at most one item; ``mixed`` — plus
tags (several items) and the standard rules; ``plus_only`` — plus tags, and
rule 1 against earlier *incoming* mail only (R-M3).

The standard rules (R-M2), first hit wins, items of connector K only:
1. In-Reply-To is a gateway Message-ID → its work item; else In-Reply-To, then
   References newest first, equals the Message-ID of an earlier email placed
   on an item (how a CC'd person's reply finds the original item). A bounce's
   original Message-ID (R-B4) comes first, as if it were In-Reply-To;
2. the body holds ``[WI-<uuid>]``;
3. the Subject holds the ref of an existing item;
4. the body holds such a ref.
With R-B2 sender binding on, a ref of rules 3–4 counts only for a participant
of the item (``sender_binding``); the trace says which refs were passed over.

Resolution (R-M5) follows splits, merges, conversions and closed items to the
item that really takes the mail; a closed item with no open parent asks
routing for a new item copied from it.
"""
from __future__ import annotations

import re

from gateway.model import WorkItem
from gateway.pipeline.context import Context, MatchHit, Verdict
from gateway.pipeline.prepare import Prepared
from gateway.pipeline.sender_binding import why_not_participant
from gateway.tokens import SIGNATURE
from gateway.workitems import rules as workitems

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_CLOSURE_LIMIT = 200


def gateway_message_id(domain: str) -> re.Pattern:
    """R-O3: ``<EMAIL-UUID.WORKITEM-UUID@DOMAIN>`` (R-B1: ``WORKITEM-UUID.sig``)."""
    return re.compile(rf"<({_UUID})\.({_UUID})(?:\.({SIGNATURE}))?@{re.escape(domain)}>",
                      re.IGNORECASE)


class Match:
    name = "match"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        if not ctx.visible:
            return self._no_visible_address(mail, ctx)
        mode = ctx.settings.matching_mode
        hits: list[MatchHit] = []
        if mode in ("mixed", "plus_only"):
            hits += [MatchHit(ref, "plus_tag") for ref in ctx.tags]
        if mode == "plus_only":
            hit = await self._thread_rule(mail, ctx, ctx.connector.name, incoming_only=True)
            if hit:
                hits.append(hit)
        else:
            hit = await standard_match(mail, ctx, ctx.connector.name)
            if hit:
                hits.append(hit)
        seen: set[str] = set()
        ctx.matches = [h for h in hits if not (h.ref in seen or seen.add(h.ref))]
        if not ctx.matches:
            hit = await standard_match(mail, ctx, None)
            ctx.global_match = hit.ref if hit else None
            ctx.note("no match" + (f"; global match {hit.ref} ({hit.method})" if hit else ""))
            return None
        ctx.note(", ".join(f"{h.ref} by {h.method}" for h in ctx.matches))
        await self._resolve(ctx)
        return None

    @staticmethod
    def _no_visible_address(mail: Prepared, ctx: Context) -> Verdict | None:
        """R-M4: only BCC'd. Another connector's visible address means that connector works."""
        for address in (*mail.to_addresses, *mail.cc_addresses):
            owner = ctx.directory.owner(address)
            if owner is not None and owner != ctx.connector.name:
                return Verdict("duplicate", f"visible_on_connector_{owner}")
        ctx.wildcard_only = True
        ctx.note("no visible address: wildcard routes only")
        return None

    async def _thread_rule(self, mail: Prepared, ctx: Context, connector: str, *,
                           incoming_only: bool) -> MatchHit | None:
        """R-M3: in plus_only, rule 1 against earlier incoming Message-IDs only."""
        chain = [("in_reply_to", m) for m in mail.in_reply_to]
        chain += [("references", m) for m in reversed(mail.references)]
        for method, message_id in chain:
            for ref in await ctx.txn.placed_on(message_id, incoming_only=incoming_only):
                item = await ctx.txn.workitem(ref)
                if item and item.connector == connector:
                    return MatchHit(item.ref, method)
        return None

    async def _resolve(self, ctx: Context) -> None:
        resolved: list[workitems.Resolution] = []
        for hit in ctx.matches:
            item = await ctx.txn.workitem(hit.ref)
            if item is None:
                continue
            known = await _closure(ctx, item)
            resolved += workitems.resolve_target(item, known.get)
        ctx.resolved = resolved
        paths = [" → ".join(r.path) for r in resolved if len(r.path) > 1]
        if paths:
            ctx.note("resolved " + "; ".join(paths))


async def standard_match(mail: Prepared, ctx: Context, connector: str | None) -> MatchHit | None:
    """R-M2 rules 1–4 in order; ``connector=None`` looks across connectors (R-M6)."""
    for hit, item in await _candidates(mail, ctx):
        if connector is None or item.connector == connector:
            return hit
    return None


async def _candidates(mail: Prepared, ctx: Context) -> list[tuple[MatchHit, WorkItem]]:
    """Every item rules 1–4 point at, in rule order; found once per copy, then filtered
    by connector (K first, then any connector for R-M6) without scanning the body again."""
    if ctx.match_candidates is not None:
        return ctx.match_candidates
    found: list[tuple[MatchHit, WorkItem]] = []
    txn = ctx.txn
    pattern = gateway_message_id(ctx.settings.message_id_domain)
    # R-B4: a bounce answers the mail it returns, as a reply's In-Reply-To would.
    replied = [ctx.bounce_of, *mail.in_reply_to] if ctx.bounce_of else mail.in_reply_to
    for message_id in replied:
        gateway_id = pattern.fullmatch(message_id)
        item = await txn.workitem_by_uuid(gateway_id.group(2)) if gateway_id else None
        if item and _signed_any(ctx, item, [gateway_id.group(3)], "Message-ID"):
            found.append((MatchHit(item.ref, "gateway_message_id"), item))
    chain = [("bounce_of" if m == ctx.bounce_of else "in_reply_to", m) for m in replied]
    chain += [("references", m) for m in reversed(mail.references)]
    for method, message_id in chain:
        for ref in await txn.placed_on(message_id):
            item = await txn.workitem(ref)
            if item:
                found.append((MatchHit(item.ref, method), item))
    for uuid, signatures in mail.body_tags:         # first appearance first
        item = await txn.workitem_by_uuid(uuid)
        # A reply quotes older mail: one good occurrence of the tag is enough.
        if item and _signed_any(ctx, item, signatures, "body tag"):
            found.append((MatchHit(item.ref, "body_tag"), item))
    bound = ctx.settings.ref_requires_participant
    refused: dict[str, str] = {}
    for method, refs in (("subject_ref", mail.subject_refs), ("body_ref", mail.body_refs)):
        for ref in refs:
            item = await txn.workitem(ref)
            if item is None or item.ref in refused:
                continue
            why = why_not_participant(mail, item, ctx.settings.trusted_authserv_ids) \
                if bound else None
            if why is not None:
                refused[item.ref] = why
                continue
            found.append((MatchHit(item.ref, method), item))
    for ref, why in refused.items():
        ctx.note(f"ref {ref} not used: {why} (R-B2)")
    ctx.match_candidates = found
    return found


def _signed_any(ctx: Context, item: WorkItem, signatures: list[str | None],
                where: str) -> bool:
    """R-B1: does any of these tokens for ``item`` place the mail? Traced if none does."""
    refusals = [ctx.settings.tokens.refusal(item.uuid, signature, created_at=item.created_at,
                                            now=ctx.txn.now) for signature in signatures]
    if all(refusals):
        ctx.note(f"{where} of {item.ref} ignored: {refusals[0]}")
        return False
    return True


async def _closure(ctx: Context, item: WorkItem) -> dict[str, WorkItem]:
    """Every item R-M5 may walk to from ``item``, loaded up front for the pure resolver."""
    known = {item.ref: item}
    pending = [item]
    while pending and len(known) < _CLOSURE_LIMIT:
        current = pending.pop()
        for ref in (*current.split_into, current.merged_into, current.converted_to,
                    current.parent):
            if ref and ref not in known:
                found = await ctx.txn.workitem(ref)
                if found is not None:
                    known[ref] = found
                    pending.append(found)
    return known
