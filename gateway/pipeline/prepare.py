"""Preparation: what a copy's decision needs from its bytes alone, worked out away from the store.

DESIGN "The store": deciding a copy has two halves. This is the pure one: the MIME
parse, the fingerprints (R-D1), automatic mail and its class (R-A1, R-A2, R-B4), the
addresses, and the refs a reply may carry in its subject and body (R-M2). It reads
no store, so it runs in worker processes (``pipeline.workers``) on every core while
the writer commits journal batches; a copy that overruns its deadline is killed with
its worker. What comes back is a :class:`Prepared`: small and plain; the raw bytes
and the parsed body stay behind.

The stages then run the second half, the state step, on a :class:`Prepared`: it
offers the attributes of ``gateway.mail.Mail`` they read, under the same names.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.mail import Mail, ParseLimits
from gateway.mail_classes import CLASSIFIER, Classifier, bounce_of
from gateway.mail_summary import header_summary
from gateway.pipeline import fingerprints
from gateway.pipeline.autogen_rules import detect
from gateway.tokens import SIGNATURE
from gateway.workitems import rules as workitems

if TYPE_CHECKING:       # a worker imports no more than preparing needs
    from storage.base import JournaledCopy

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
BODY_TAG = re.compile(rf"\[WI-({_UUID})(?:\.({SIGNATURE}))?\]")
_DASH_KIND = re.compile(r"-[TCA]")


@dataclass(frozen=True)
class PrepareSettings:
    """The settings preparation reads (SPEC §5.2 [autogen]); sent to each worker once."""
    autogen_extended: bool = True                # R-A2
    autogen_disabled: frozenset[str] = frozenset()
    classifier: Classifier = CLASSIFIER          # R-B4
    limits: ParseLimits = ParseLimits()


@dataclass(frozen=True, slots=True)
class Prepared:
    """One copy, prepared: its envelope, the header facts the stages read (named as on
    ``Mail``), its fingerprints, whether and how it is automatic, and the refs it may
    carry. ``failure`` is set when preparing it raised (a bug, not bad mail): the runner
    raises it again where the copy's decision starts, so it is isolated as any error."""
    email_id: int | None
    connector: str | None
    source: str
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    folder_path: str | None = None
    parse_error: str | None = None
    parse_seconds: float = 0.0
    parse_notes: tuple[str, ...] = ()            # what the parse left out (R-H4 budgets)
    failure: str | None = None
    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str = ""
    from_address: str | None = None
    to_addresses: tuple[str, ...] = ()
    cc_addresses: tuple[str, ...] = ()
    important: bool = False
    attachment_names: tuple[str, ...] = ()
    authentication_results: tuple[str, ...] = ()
    f1: str = ""
    fingerprints: tuple[str, ...] = ()
    autogen_rule: str | None = None              # R-A1/R-A2: the rule that fired
    mail_class: str | None = None                # R-B4
    list_rule: str | None = None                 # R-B4: a list rule fired (no ack)
    bounce_of: str | None = None                 # R-B4: the Message-ID that bounced
    class_notes: tuple[str, ...] = ()            # what the trace says of the above
    body_tags: tuple[tuple[str, tuple[str | None, ...]], ...] = ()   # R-M2 rule 2
    subject_refs: tuple[str, ...] = ()           # R-M2 rule 3
    body_refs: tuple[str, ...] = ()              # R-M2 rule 4
    summary: dict = field(default_factory=dict)  # the headers the API shows


def prepare(copy: JournaledCopy, settings: PrepareSettings = PrepareSettings()) -> Prepared:
    """The pure half of deciding ``copy``. Never raises for bad mail: a parse problem is
    ``parse_error``; anything else is a bug and comes back as ``failure``."""
    envelope = dict(email_id=copy.email_id, connector=copy.connector, source=copy.source,
                    mail_from=copy.mail_from, rcpt_to=tuple(copy.rcpt_to),
                    folder_path=copy.folder_path)
    try:
        envelope["summary"] = header_summary(copy.raw)
    except Exception:               # the headers shown are a courtesy; the copy goes on
        envelope["summary"] = {}
    try:
        return _prepare(copy, settings, envelope)
    except Exception as exc:        # a bug on one copy must not take the batch down
        return Prepared(**envelope, failure=f"{type(exc).__name__}: {exc}")


def _prepare(copy: JournaledCopy, settings: PrepareSettings, envelope: dict) -> Prepared:
    mail = Mail(copy.raw, email_id=copy.email_id, connector=copy.connector, source=copy.source,
                mail_from=copy.mail_from, rcpt_to=tuple(copy.rcpt_to),
                folder_path=copy.folder_path, limits=settings.limits)
    started = time.perf_counter()
    problem = mail.parse_all()
    seconds = time.perf_counter() - started
    f1 = fingerprints.f1(copy.raw)
    if problem is not None:
        return Prepared(**envelope, parse_error=problem, parse_seconds=seconds, f1=f1)
    rule = detect(mail, extended=settings.autogen_extended, disabled=settings.autogen_disabled)
    klass, by, listed = settings.classifier.classify(mail, rule)
    notes = [f"rule {rule}"] if rule else []
    if klass is not None:
        notes.append(f"class {klass} (rule {by.name}, {by.origin})" if by
                     else f"class {klass} (auto-generated, no class rule)")
    if listed is not None and klass != "list":
        notes.append(f"list mail too (rule {listed.name})")
    bounced = bounce_of(mail) if klass == "bounce" else None
    if klass == "bounce":
        notes.append(f"bounce of {bounced}" if bounced
                     else "the bounce does not name the mail that bounced")
    body = mail.text_body
    tags: dict[str, list[str | None]] = {}   # uuid → its signatures, first appearance first
    for tag in BODY_TAG.finditer(body):
        tags.setdefault(tag.group(1).lower(), []).append(tag.group(2))
    return Prepared(
        **envelope, parse_seconds=seconds, parse_notes=tuple(mail.parse_notes),
        message_id=mail.message_id, in_reply_to=tuple(mail.in_reply_to),
        references=tuple(mail.references), subject=mail.subject,
        from_address=mail.from_address, to_addresses=tuple(mail.to_addresses),
        cc_addresses=tuple(mail.cc_addresses), important=mail.important,
        attachment_names=mail.attachment_names,
        authentication_results=mail.authentication_results,
        f1=f1, fingerprints=(f1, "F2:" + fingerprints.f2(mail), "F3:" + fingerprints.f3(mail)),
        autogen_rule=rule, mail_class=klass, list_rule=listed.name if listed else None,
        bounce_of=bounced, class_notes=tuple(notes),
        body_tags=tuple((uuid, tuple(sigs)) for uuid, sigs in tags.items()),
        subject_refs=tuple(dict.fromkeys(refs_in_text(mail.subject))),
        body_refs=tuple(dict.fromkeys(refs_in_text(body))))


def refs_in_text(text: str) -> list[str]:
    r"""Canonical refs (``\b\d+-[TCA]\b``, R-M2 rules 3–4) in order of appearance.

    Equivalent to ``workitems.REF_IN_TEXT`` but led by a literal ``-``: a regex that
    starts with a digit class tried every position of a 5 KB body (8% of the
    pipeline's CPU in the bench profile).
    """
    refs = []
    for dash in _DASH_KIND.finditer(text):
        end = dash.start()
        after = dash.end()
        if after < len(text) and (text[after].isalnum() or text[after] == "_"):
            continue
        start = end
        while start > 0 and "0" <= text[start - 1] <= "9":
            start -= 1
        if start == end or (start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_")):
            continue
        ref = workitems.canonical_ref(text[start:after])
        if ref:
            refs.append(ref)
    return refs
