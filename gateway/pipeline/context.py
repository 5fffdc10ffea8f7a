"""What every stage receives besides the mail: the directory, settings, the transaction, the trace.

DESIGN "A stage": stages know nothing of transport, metrics or SQL dialects.
They read through ``ctx.txn`` (domain methods, not SQL), record what they
found on the context for the stages after them, and end the pipeline by
returning a :class:`Verdict`.

``ctx.txn`` is the store's pipeline transaction (``storage.base.PipelineTxn``): a
stage awaits it and nothing else, so the same stage runs on SQLite's writer thread
(where those awaits never suspend) and on a server database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.directory.snapshot import Directory
from gateway.mail_classes import CLASSIFIER, Classifier
from gateway.model import Connector, Route, TraceLine
from gateway.outbound.compose import Composing
from gateway.pipeline.prepare import Prepared
from gateway.tokens import Tokens
from storage.base import PipelineTxn


@dataclass(frozen=True)
class PipelineSettings:
    """The settings the rules read (SPEC §5.2 [matching], [autogen], [gateway])."""
    matching_mode: str = "off"               # off | mixed | plus_only (R-M1)
    hide_plus_in_from: bool = False
    ref_requires_participant: bool = False   # R-B2
    trusted_authserv_ids: frozenset[str] = frozenset()
    autogen_extended: bool = True            # R-A2
    autogen_disabled: frozenset[str] = frozenset()
    message_id_domain: str = "mailgate.invalid"
    dedup_window_days: int = 30              # R-D4
    ack_budget_per_day: int = 10             # R-B3: automated mails per recipient a day
    sender_budget: int = 20                  # R-B3: copies per sender per connector ...
    sender_window: float = 600.0             # ... in this many seconds (0 budget: off)
    reopen_budget: int = 5                   # R-B3: reopens by mail per work item ...
    reopen_window: float = 86400.0           # ... in this many seconds (0 budget: off)
    classifier: Classifier = CLASSIFIER      # R-B4: the shipped rules or [autogen] classes_file
    tokens: Tokens = Tokens()                # R-B1: signing off unless configured

    @property
    def composing(self) -> Composing:
        """What the gateway's own mail takes from these settings."""
        return Composing(self.message_id_domain, self.matching_mode, self.hide_plus_in_from,
                         self.tokens)


@dataclass
class Verdict:
    """The end of the pipeline for one copy (R-U1: every copy ends with exactly one)."""
    outcome: str                             # appended | created | ignored | duplicate | own_mail | unprocessed
    reason: str = ""
    targets: list[dict] = field(default_factory=list)   # [{"ref", "action"}]


@dataclass
class MatchHit:
    """A work item found for this copy, and how (trace + metrics label)."""
    ref: str
    method: str                              # plus_tag | in_reply_to | references | body_tag | subject_ref | body_ref


@dataclass
class Context:
    mail: Prepared
    connector: Connector
    directory: Directory
    settings: PipelineSettings
    txn: PipelineTxn
    trace: list[TraceLine] = field(default_factory=list)
    # what the stages found, in pipeline order
    f1: str | None = None
    fingerprints: tuple[str, ...] = ()
    sender: str | None = None                              # R-B3: whose budget it counts on
    autogen_rule: str | None = None
    mail_class: str | None = None                          # R-B4: auto_reply, bounce, list …
    list_rule: str | None = None                           # R-B4: a list rule fired (no ack)
    bounce_of: str | None = None                           # R-B4: the Message-ID that bounced
    visible: list[str] = field(default_factory=list)       # visible K-addresses (mailboxes)
    tags: list[str] = field(default_factory=list)          # refs from plus tags (R-P1)
    matches: list[MatchHit] = field(default_factory=list)
    resolved: list = field(default_factory=list)           # workitems.Resolution (R-M5)
    global_match: str | None = None                        # R-M6 link target
    routed: list[tuple[str, Route]] = field(default_factory=list)  # (target address, route)
    wildcard_only: bool = False                            # R-M4: placed by a wildcard route
    match_candidates: list | None = None                   # R-M2: found once per copy

    def adopt(self, mail: Prepared) -> None:
        """What preparation found (R-D1, R-A1/R-A2, R-B4), for the stages after."""
        self.f1, self.fingerprints = mail.f1, mail.fingerprints
        self.autogen_rule, self.mail_class = mail.autogen_rule, mail.mail_class
        self.list_rule, self.bounce_of = mail.list_rule, mail.bounce_of

    def note(self, text: str) -> None:
        """Extra detail for the current stage's trace line."""
        self._notes.append(text)

    def __post_init__(self) -> None:
        self._notes: list[str] = []

    def take_notes(self) -> str:
        notes, self._notes = "; ".join(self._notes), []
        return notes


class Stage(Protocol):
    """DESIGN: small, typed, ignorant of transport, metrics and SQL dialects. ``run``
    awaits nothing but ``ctx.txn``: on SQLite it runs on the writer's thread, without
    a loop."""
    name: str

    async def run(self, mail: Prepared, ctx: Context) -> Verdict | None: ...
