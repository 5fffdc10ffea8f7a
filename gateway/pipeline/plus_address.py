"""R-P1..R-P3: plus tags on visible addresses name work items.

``info+123-T@example.com`` is the address ``info@example.com`` carrying the tag ``123-T``
(SPEC §1 "Address"). These helpers are pure; the stage that looks the refs up (R-P1
unknown refs traced, R-P2 mixed live/test, R-P3 modes) wraps them.
"""
from __future__ import annotations

import re
from typing import Iterable

from gateway.pipeline.context import Context, Verdict
from gateway.pipeline.prepare import Prepared
from gateway.tokens import SIGNATURE
from gateway.workitems import rules as workitems

# R-P1 ``^\d+-[TCA]$`` with ASCII digits only (``\d`` would accept other scripts' digits),
# at most 18 of them so a ref always fits a 64-bit integer, and the letter in either case;
# R-B1 may follow it with ``.signature``.
_REF = re.compile(rf"([0-9]{{1,18}})-([TCAtca])(?:\.({SIGNATURE}))?")


def split_tag(address: str) -> tuple[str, str | None]:
    """(lower-case mailbox, tag) of an addr-spec; the tag is None when there is none.

    Only the first ``+`` splits (``a+b+c@x`` carries ``b+c``). As with Postfix's
    ``recipient_delimiter``, a local part that starts with ``+`` is not split, and an
    empty tag is no tag. A ref tag's letter is upper-cased (``123-t`` → ``123-T``);
    other tags keep the case they were written in.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at:
        local, domain = domain, ""
    base, plus, tag = local.partition("+")
    if not plus or not base:
        return address.strip().lower(), None
    mailbox = f"{base}@{domain}".lower() if at else base.lower()
    if not tag:
        return mailbox, None
    ref = _REF.fullmatch(tag)
    if ref is None:
        return mailbox, tag
    return mailbox, f"{ref[1]}-{ref[2].upper()}" + (f".{ref[3].lower()}" if ref[3] else "")


def ref_and_signature(tag: str) -> tuple[str, str | None]:
    """``123-T.k3f7q2`` → (``123-T``, ``k3f7q2``); an unsigned tag's signature is None."""
    ref, _, signature = tag.partition(".")
    return ref, signature or None


def ref_tags(addresses: Iterable[str], mailbox_filter: Iterable[str]) -> list[str]:
    """R-P1: distinct ref tags (``123-T``, or R-B1's ``123-T.sig``) on addresses whose
    mailbox is one of ``mailbox_filter`` (the connector's own addresses), in order of
    appearance. Tags that are not refs, and tags on other mailboxes, are ignored."""
    own = {split_tag(mailbox)[0] for mailbox in mailbox_filter}
    refs: dict[str, None] = {}
    for address in addresses:
        mailbox, tag = split_tag(address)
        if tag is not None and mailbox in own and _REF.fullmatch(tag):
            refs.setdefault(tag)
    return list(refs)


def visible_mailboxes(mail: Prepared, ctx: Context) -> list[str]:
    """SPEC §3: To/Cc addresses that are K's primary address or an alias (tags stripped);
    with ``route_on_envelope`` the envelope recipients count too."""
    own = ctx.directory.mailboxes(ctx.connector.name)
    candidates = [*mail.to_addresses, *mail.cc_addresses]
    if ctx.connector.route_on_envelope:
        candidates += list(mail.rcpt_to)
    seen: dict[str, None] = {}
    for address in candidates:
        mailbox, _ = split_tag(address)
        if mailbox in own:
            seen.setdefault(mailbox)
    return list(seen)


class PlusAddress:
    """The stage: visible K-addresses and the refs their plus tags name (R-P1..R-P3)."""
    name = "plus-address"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        ctx.visible = visible_mailboxes(mail, ctx)
        tags = ref_tags([*mail.to_addresses, *mail.cc_addresses],
                        ctx.directory.mailboxes(ctx.connector.name))
        if not tags:
            return None
        if ctx.settings.matching_mode == "off":
            ctx.note(f"tags {', '.join(tags)} not used in mode off (R-P3)")
            return None
        found = []
        for tag in tags:
            named, signature = ref_and_signature(tag)
            ref = workitems.canonical_ref(named)
            item = await ctx.txn.workitem(ref) if ref else None
            if item is None:
                ctx.note(f"unknown ref {named} ignored")
                continue
            refused = ctx.settings.tokens.refusal(item.ref, signature,
                                                  created_at=item.created_at, now=ctx.txn.now)
            if refused:
                ctx.note(f"tag {named} ignored: {refused}")
                continue
            found.append(item)
        if {"live", "test"} <= {item.mode for item in found}:
            return Verdict("unprocessed", "mixed_live_test")
        ctx.tags = [item.ref for item in found]
        if ctx.tags:
            ctx.note("tags " + ", ".join(ctx.tags))
        return None
