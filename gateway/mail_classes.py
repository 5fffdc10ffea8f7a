"""R-B4: which kind of automatic mail this is — ``auto_reply``, ``bounce``, ``list`` or
``notification`` — from a rule set that is data (``mail_classes.toml``), versioned, and
held to a corpus (tests/corpus/classes/).

R-A1/R-A2 decide *whether* mail is auto-generated, and that alone drives R-A3/R-A4.
The class says *what* it is, for the trace, the metrics and two behaviours: a
mail any ``list`` rule fires for is never acknowledged, and a ``bounce`` names the
mail that bounced
(:func:`bounce_of`) so it lands on that mail's work item (R-M2 rule 1).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import NamedTuple
from importlib import resources
from pathlib import Path

from gateway.mail import Mail, quoted_message_ids

CLASSES = ("auto_reply", "bounce", "list", "notification")
_CONDITIONS = {"header", "matches", "content_type", "child_type", "from_local", "subject"}


class RulesError(ValueError):
    """The rule file is wrong; the message names the rule and what to write instead."""


@dataclass(frozen=True)
class ClassRule:
    name: str
    klass: str
    origin: str = ""                     # "classes v1", or the admin's file and its version
    header: str | None = None
    matches: re.Pattern | None = None
    content_type: frozenset[str] = frozenset()
    child_type: frozenset[str] = frozenset()
    from_local: frozenset[str] = frozenset()
    subject: re.Pattern | None = None

    def fires(self, mail: Mail) -> bool:
        """Every condition the rule names holds (cheap header tests first)."""
        if self.header is not None:
            values = mail.headers(self.header)
            if not values:
                return False
            if self.matches is not None and not any(self.matches.search(v) for v in values):
                return False
        if self.content_type and mail.content_type not in self.content_type:
            return False
        if self.from_local and not self._from_local(mail):
            return False
        if self.subject is not None and not self.subject.search(mail.subject):
            return False
        if self.child_type and not self.child_type.intersection(mail.child_content_types):
            return False
        return True

    def _from_local(self, mail: Mail) -> bool:
        if mail.from_address is not None:
            return mail.from_address.rpartition("@")[0] in self.from_local
        # Daemons often write a From the strict parser refuses (``MAILER-DAEMON`` alone):
        # look for the word in the raw field; this only classifies, never identifies.
        raw = " ".join(mail.headers("from")).lower()
        return any(re.search(rf"(?:^|[\s<\"]){re.escape(local)}(?:@|[\s>\"]|$)", raw)
                   for local in self.from_local)


class Classification(NamedTuple):
    klass: str | None                    # auto_reply, bounce, list, notification, or None
    rule: ClassRule | None               # the rule that gave it (None: no rule)
    list_rule: ClassRule | None          # a list rule that fired: never acknowledged


@dataclass(frozen=True)
class Classifier:
    version: int
    rules: tuple[ClassRule, ...]

    def classify(self, mail: Mail, autogen_rule: str | None) -> Classification:
        """One pass over the rules: the first that fires gives the class (auto-generated
        mail that none classes is a ``notification``); the first ``list`` rule that
        fires says it is list mail, whatever its class, since list mail is never
        acknowledged even when an earlier rule (a bounce header, an admin's own rule)
        gave it another class. Once a class is found only list rules are still tried."""
        first = listed = None
        for rule in self.rules:
            if first is not None and rule.klass != "list":
                continue
            if rule.fires(mail):
                first = first or rule
                if rule.klass == "list":
                    listed = rule
                    break
        klass = first.klass if first else ("notification" if autogen_rule else None)
        return Classification(klass, first, listed)

    def before(self, shipped: Classifier) -> Classifier:
        """An admin's rules tried first, then the shipped ones (so the shipped list rules
        keep protecting lists from acknowledgements, see :meth:`classify`)."""
        return Classifier(self.version, self.rules + shipped.rules)


def load_rules(text: str, source: str = "mail_classes.toml", *,
               origin: str = "classes") -> Classifier:
    """Parse and check a rule file; every mistake is a RulesError naming the rule.
    Each rule's ``origin`` (for the trace) is ``origin`` and the file's version."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: {exc}") from None
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise RulesError(f"{source}: write version = 1 (a whole number, raised on every change)")
    unknown = set(data) - {"version", "rule"}
    if unknown:
        raise RulesError(f"{source}: unknown top-level key(s) {sorted(unknown)}: only version "
                         "and [[rule]] tables")
    rules, names = [], set()
    for number, entry in enumerate(data.get("rule", []), start=1):
        where = f"{source}: rule {number} ({entry.get('name', 'no name')!r})"
        rules.append(_rule(entry, where, f"{origin} v{version}"))
        if rules[-1].name in names:
            raise RulesError(f"{where}: the name is used twice; rule names are the trace's words")
        names.add(rules[-1].name)
    return Classifier(version, tuple(rules))


def _rule(entry: dict, where: str, origin: str) -> ClassRule:
    name, klass = entry.get("name"), entry.get("class")
    if not isinstance(name, str) or not name:
        raise RulesError(f"{where}: give it a name = \"...\" (the trace shows it)")
    if klass not in CLASSES:
        raise RulesError(f"{where}: class = {klass!r}: use one of {', '.join(CLASSES)}")
    unknown = set(entry) - _CONDITIONS - {"name", "class"}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {sorted(unknown)}: conditions are "
                         f"{', '.join(sorted(_CONDITIONS))}")
    if not set(entry) & _CONDITIONS:
        raise RulesError(f"{where}: a rule with no condition would class every mail")
    if "matches" in entry and "header" not in entry:
        raise RulesError(f"{where}: matches needs the header it applies to (header = \"...\")")
    return ClassRule(
        name=name, klass=klass, origin=origin,
        header=_text(entry, "header", where).lower() if "header" in entry else None,
        matches=_regex(entry, "matches", where), subject=_regex(entry, "subject", where),
        content_type=_lowered(entry, "content_type", where),
        child_type=_lowered(entry, "child_type", where),
        from_local=_lowered(entry, "from_local", where))


def _text(entry: dict, key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise RulesError(f"{where}: {key} must be a non-empty string")
    return value


def _regex(entry: dict, key: str, where: str) -> re.Pattern | None:
    if key not in entry:
        return None
    try:
        return re.compile(_text(entry, key, where), re.IGNORECASE)
    except re.error as exc:
        raise RulesError(f"{where}: {key} is not a regular expression: {exc}") from None


def _lowered(entry: dict, key: str, where: str) -> frozenset[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RulesError(f"{where}: {key} must be a list of strings, e.g. [\"multipart/report\"]")
    return frozenset(v.lower() for v in value)


def bounce_of(mail: Mail) -> str | None:
    """The Message-ID of the mail a bounce returns: from the enclosed message or its quoted
    headers (RFC 3464 / RFC 6522), else from ``Message-ID:`` lines quoted in the text, as
    qmail and others write them. None when the bounce does not say."""
    for message_id in (*mail.embedded_message_ids, *quoted_message_ids(mail.text_body)):
        if message_id != mail.message_id:
            return message_id
    return None


CLASSIFIER = load_rules(resources.files("gateway").joinpath("mail_classes.toml")
                        .read_text(encoding="utf-8"))


def read_classifier(path: str) -> Classifier:
    """An admin's own rules (``[autogen] classes_file``) ahead of the shipped ones;
    raises OSError or RulesError."""
    local = load_rules(Path(path).read_text(encoding="utf-8"), path,
                       origin=Path(path).name)
    return local.before(CLASSIFIER)
