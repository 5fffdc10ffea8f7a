"""R-D1..R-D4: fingerprints, and the short-circuit for an exact repeat.

The fingerprints are computed when the copy is prepared (``pipeline.prepare``);
the stage ends the pipeline only for an exact F1 repeat on the same connector (R-D3: a server re-delivering, an IMAP
delayed expunge). The per-target check of R-D2 needs the targets, so it
happens in apply, through :func:`already_received`.
"""
from __future__ import annotations

from gateway.pipeline.context import Context, Verdict
from gateway.pipeline.prepare import Prepared
from storage.base import Txn


class Dedup:
    name = "dedup"

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None:
        ctx.f1, ctx.fingerprints = mail.f1, mail.fingerprints
        since = ctx.txn.now - ctx.settings.dedup_window_days * 86400
        earlier = await ctx.txn.f1_seen(ctx.connector.name, ctx.f1, mail.email_id or 0, since)
        if earlier is not None:
            return Verdict("duplicate", f"same_bytes_as_email_{earlier}")
        return None


async def already_received(ctx: Context, target: str) -> bool:
    """R-D2: did ``target`` (a ref, a route address or ``*``) get this content already?"""
    return await ctx.txn.target_received(target, ctx.fingerprints)


async def remember(ctx: Context, target: str) -> None:
    await ctx.txn.remember(target, ctx.fingerprints, ctx.mail.email_id or 0)


async def prune(txn: Txn, window_days: int) -> int:
    """R-D4: forget fingerprints older than the window."""
    return await txn.prune_fingerprints(txn.now - window_days * 86400)
