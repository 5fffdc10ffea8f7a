"""Work-item rules (R-W1..R-W3, R-M5, R-E1..R-E6) as small pure functions.

Nothing here does I/O or mutates its inputs. Every operation returns
``Effects``: new copies of the items it changed, the items it created, and
the state changes the caller turns into ``workitem.state_changed`` events
(R-E6). The caller makes refs and UUIDs, persists, and sets timestamps.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

from gateway.model import (KIND_LETTERS, LETTER_KINDS, MODES, STATES, WAIT_TYPES, RuleViolation,
                           WorkItem)

REF_PATTERN = re.compile(r"^(?P<number>[0-9]+)-(?P<letter>[TCA])\Z")
REF_IN_TEXT = re.compile(r"\b(?P<number>[0-9]+)-(?P<letter>[TCA])\b")
MAX_REF_DIGITS = 18                 # a 64-bit sequence; longer digit runs name nothing
ALLOWED_PARENTS = {"Ticket": ("Ticket",), "Case": ("Case", "Ticket"), "Action": ("Case",)}
OPEN_STATES = ("DRAFT", "TO_DO", "IN_PROGRESS", "WAITING")

Lookup = Callable[[str], "WorkItem | None"]


@dataclass(frozen=True, slots=True)
class StateChange:
    """One ``workitem.state_changed`` event to emit (R-E6); ``rule`` says which rule moved it."""
    ref: str
    old: str
    new: str
    old_wait_type: str | None
    new_wait_type: str | None
    rule: str


@dataclass(frozen=True, slots=True)
class Effects:
    """What an operation changed: items to update, items to create, events to emit."""
    updated: tuple[WorkItem, ...] = ()
    created: tuple[WorkItem, ...] = ()
    changes: tuple[StateChange, ...] = ()

    @property
    def items(self) -> tuple[WorkItem, ...]:
        """Every item to save: the updated ones, then the new ones."""
        return (*self.updated, *self.created)

    def item(self, ref: str) -> WorkItem:
        for item in self.items:
            if item.ref == ref:
                return item
        raise KeyError(ref)


@dataclass(frozen=True, slots=True)
class Resolution:
    """R-M5: where a matched item's mail goes. ``ref`` None → new item via routing."""
    ref: str | None
    copy_from: str | None
    path: tuple[str, ...]          # refs walked, matched item first (for the trace)
    reason: str                    # open | closed_split_child | no_open_parent | cycle


# -- refs (R-W1) --------------------------------------------------------------------------

def _check_kind(kind: str) -> None:
    if kind not in KIND_LETTERS:
        raise RuleViolation("R-W1", f"kind must be one of {', '.join(KIND_LETTERS)}", "kind")


def format_ref(number: int, kind: str) -> str:
    """R-W1: ``<number>-<kind letter>``; numbers come from one sequence, so from 1 up."""
    _check_kind(kind)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise RuleViolation("R-W1", f"a ref number is a positive integer, not {number!r}")
    return f"{number}-{KIND_LETTERS[kind]}"


def parse_ref(text: str) -> tuple[int, str] | None:
    """R-W1/R-P1: ``"123-T"`` → ``(123, "Ticket")``; anything else → None.

    ASCII digits only (``\\d`` would take Arabic-Indic digits too), and at most
    ``MAX_REF_DIGITS`` of them so a hostile tag cannot hit int()'s digit limit.
    Leading zeros are read as the number; 0 names nothing (the sequence starts at 1).
    """
    m = REF_PATTERN.match(text)
    if m is None or len(m["number"]) > MAX_REF_DIGITS or not int(m["number"]):
        return None
    return int(m["number"]), LETTER_KINDS[m["letter"]]


def canonical_ref(text: str) -> str | None:
    """``"007-T"`` → ``"7-T"``: the form refs are stored under, for plus tags and
    subject refs (R-P1, R-M2) before they are looked up; None when not a ref."""
    parsed = parse_ref(text)
    return format_ref(*parsed) if parsed else None


# -- validation (R-W2) --------------------------------------------------------------------

def check_state(kind: str, state: str, wait_type: str | None = None) -> None:
    """R-W2: a known state; RESOLVED only for Tickets and Cases; a wait type iff WAITING."""
    _check_kind(kind)
    if state not in STATES:
        raise RuleViolation("R-W2", f"state must be one of {', '.join(STATES)}", "state")
    if state == "RESOLVED" and kind == "Action":
        raise RuleViolation("R-W2", "only Tickets and Cases can be RESOLVED", "state")
    if state == "WAITING" and wait_type not in WAIT_TYPES:
        raise RuleViolation("R-W2", f"WAITING needs wait_type {' or '.join(WAIT_TYPES)}",
                            "wait_type")
    if state != "WAITING" and wait_type is not None:
        raise RuleViolation("R-W2", "wait_type is only given with WAITING", "wait_type")


def check_parent(kind: str, parent: WorkItem | None, mode: str = "live") -> None:
    """R-W2: Actions have a parent Case; Cases a Case or Ticket; Tickets a Ticket.

    A child has its parent's mode, so a test item never walks up (R-M5) into live work.
    """
    _check_kind(kind)
    if parent is None:
        if kind == "Action":
            raise RuleViolation("R-W2", "an Action needs a parent Case", "parent")
        return
    if parent.kind not in ALLOWED_PARENTS[kind]:
        raise RuleViolation("R-W2", f"a {kind}'s parent must be a "
                            f"{' or '.join(ALLOWED_PARENTS[kind])}, not a {parent.kind}", "parent")
    if parent.mode != mode:
        raise RuleViolation("R-W2", f"a {mode} item cannot have the {parent.mode} "
                            f"parent {parent.ref}", "parent")


def check_new(kind: str, state: str = "TO_DO", parent: WorkItem | None = None, *,
              wait_type: str | None = None, mode: str = "live") -> None:
    """R-W1/R-W2: everything a new item must satisfy before it gets a ref."""
    check_state(kind, state, wait_type)
    if mode not in MODES:
        raise RuleViolation("R-W1", f"mode must be one of {', '.join(MODES)}", "mode")
    check_parent(kind, parent, mode)


# -- operations (R-W3) --------------------------------------------------------------------

def _copy(item: WorkItem, **changes) -> WorkItem:
    """A copy sharing no list or dict with ``item``, so callers can't mutate the input."""
    fresh = dict(split_into=list(item.split_into), linked=list(item.linked),
                 contacts=list(item.contacts), custom_data=copy.deepcopy(item.custom_data))
    return replace(item, **{**fresh, **changes})


def _with_state(item: WorkItem, state: str, wait_type: str | None, rule: str,
                **changes) -> tuple[WorkItem, StateChange | None]:
    new = _copy(item, state=state, wait_type=wait_type, **changes)
    if (item.state, item.wait_type) == (state, wait_type):
        return new, None
    return new, StateChange(item.ref, item.state, state, item.wait_type, wait_type, rule)


def _effects(pairs: Iterable[tuple[WorkItem, StateChange | None]],
             created: Iterable[WorkItem] = ()) -> Effects:
    pairs = list(pairs)
    return Effects(tuple(i for i, _ in pairs), tuple(created),
                   tuple(c for _, c in pairs if c is not None))


def _union(*lists: Iterable[str], key: Callable[[str], str] = str) -> list[str]:
    """The lists joined in order, each value once (first spelling kept). Contacts
    pass ``key=str.lower``: addresses compare case-insensitively (SPEC §1)."""
    seen: dict[str, str] = {}
    for value in (v for values in lists for v in values):
        seen.setdefault(key(value), value)
    return list(seen.values())


def _require_ref(ref: str, kind: str) -> None:
    """R-W1: a new item's ref is in stored form, with its kind's letter."""
    if canonical_ref(ref) != ref or LETTER_KINDS[ref[-1]] != kind:
        raise RuleViolation("R-W1", f"{ref!r} is not a {kind} ref", "ref")


def _require_plain_ticket(item: WorkItem, what: str) -> None:
    """R-W3: split, merge and convert are for Tickets; and an item whose mail already
    goes elsewhere (R-M5) takes no second redirect. Splitting again only adds children."""
    if item.kind != "Ticket":
        raise RuleViolation("R-W3", f"only Tickets can be {what}, {item.ref} is a {item.kind}")
    for name in ("split_into", "merged_into", "converted_to"):
        if getattr(item, name) and not (name == "split_into" and what == "split"):
            raise RuleViolation("R-W3", f"{item.ref} has {name} set and cannot be {what}")


def _descendant(ticket: WorkItem, ref: str, kind: str, uuid: str, **fields) -> WorkItem:
    """A new item carrying on a Ticket's work: same connector, mode, contacts, data."""
    return WorkItem(ref=ref, kind=kind, uuid=uuid, connector=ticket.connector, mode=ticket.mode,
                    contacts=list(ticket.contacts), custom_data=copy.deepcopy(ticket.custom_data),
                    send_automated_emails=ticket.send_automated_emails, **fields)


def create(ref: str, kind: str, uuid: str, connector: str, *, state: str = "TO_DO",
           wait_type: str | None = None, mode: str = "live", parent: WorkItem | None = None,
           contacts: Sequence[str] = (), custom_data: dict | None = None,
           send_automated_emails: bool = False, copy_of: WorkItem | None = None) -> Effects:
    """R-W3 create; R-E4 new item; R-M5 ``copy_of`` a closed item (its contacts and data)."""
    check_new(kind, state, parent, wait_type=wait_type, mode=mode)
    _require_ref(ref, kind)
    base = copy_of.custom_data if copy_of else {}
    item = WorkItem(ref=ref, kind=kind, uuid=uuid, connector=connector, mode=mode, state=state,
                    wait_type=wait_type, parent=parent.ref if parent else None,
                    contacts=_union(copy_of.contacts if copy_of else (), contacts, key=str.lower),
                    custom_data=copy.deepcopy({**base, **(custom_data or {})}),
                    send_automated_emails=send_automated_emails,
                    copied_from=copy_of.ref if copy_of else None)
    return Effects(created=(item,))


def transition(item: WorkItem, state: str, wait_type: str | None = None) -> Effects:
    """R-W3: the host moves an item; R-W2 decides what is allowed."""
    check_state(item.kind, state, wait_type)
    return _effects([_with_state(item, state, wait_type, "R-W3")])


def split(ticket: WorkItem, new_refs: Sequence[str], new_uuids: Sequence[str]) -> Effects:
    """R-W3: a Ticket becomes the parent of N new child Tickets and is RESOLVED.

    Children start TO_DO with the original's connector, mode, contacts, custom data
    and automated-mail setting; the original's ``split_into`` lists them, so R-M5
    sends the original's mail to every child. Splitting again adds children.
    """
    _require_plain_ticket(ticket, "split")
    if not new_refs or len(new_refs) != len(new_uuids):
        raise RuleViolation("R-W3", "a split needs at least one child, each with a ref and a UUID",
                            "children")
    for ref in new_refs:
        _require_ref(ref, "Ticket")
    if len(set(new_refs)) != len(new_refs) or {ticket.ref, *ticket.split_into} & set(new_refs):
        raise RuleViolation("R-W3", "child refs must be new and distinct", "children")
    children = [_descendant(ticket, ref, "Ticket", uuid, parent=ticket.ref)
                for ref, uuid in zip(new_refs, new_uuids)]
    original = _with_state(ticket, "RESOLVED", None, "R-W3",
                           split_into=[*ticket.split_into, *new_refs])
    return _effects([original], children)


def merge(sources: Sequence[WorkItem], target: WorkItem) -> Effects:
    """R-W3: Tickets merged into a target Ticket; sources are RESOLVED, ``merged_into`` set.

    The target gains the sources' contacts so its replies reach everyone. A target
    whose own mail goes elsewhere is refused: merge into the final item instead.
    """
    refs = [s.ref for s in sources]
    if not sources or len(set(refs)) != len(refs) or target.ref in refs:
        raise RuleViolation("R-W3", "merge needs distinct sources other than the target", "into")
    for item in (*sources, target):
        _require_plain_ticket(item, "merged")
        if item.mode != target.mode:
            raise RuleViolation("R-W3", f"{item.ref} is {item.mode}, {target.ref} is {target.mode}")
    merged = [_with_state(s, "RESOLVED", None, "R-W3", merged_into=target.ref) for s in sources]
    contacts = _union(target.contacts, *(s.contacts for s in sources), key=str.lower)
    return _effects([(_copy(target, contacts=contacts), None), *merged])


def convert(ticket: WorkItem, case_ref: str, case_uuid: str) -> Effects:
    """R-W3: the Ticket becomes RESOLVED with ``converted_to``; a new Case carries on.

    The Case keeps the Ticket's working state (DRAFT..WAITING, with wait type and
    new_info; TO_DO if the Ticket was RESOLVED or CLOSED), contacts and data. It gets
    no parent: a closed Case walking up (R-M5) must not lead back through the Ticket.
    """
    _require_plain_ticket(ticket, "converted")
    _require_ref(case_ref, "Case")
    working = ticket.state in OPEN_STATES
    case = _descendant(ticket, case_ref, "Case", case_uuid, new_info=ticket.new_info,
                       state=ticket.state if working else "TO_DO",
                       wait_type=ticket.wait_type if working else None)
    resolved = _with_state(ticket, "RESOLVED", None, "R-W3", converted_to=case_ref)
    return _effects([resolved], [case])


def link(a: WorkItem, b: WorkItem) -> Effects:
    """R-W3: a symmetric relation; linking twice changes nothing."""
    if a.ref == b.ref:
        raise RuleViolation("R-W3", f"{a.ref} cannot be linked to itself", "ref")
    return Effects(updated=(_copy(a, linked=_union(a.linked, [b.ref])),
                            _copy(b, linked=_union(b.linked, [a.ref]))))


def set_parent(child: WorkItem, parent: WorkItem | None, lookup: Lookup) -> Effects:
    """R-W3 set parent, under R-W2's kinds; refuses a cycle, which R-M5 could not walk."""
    check_parent(child.kind, parent, child.mode)
    ref, seen = parent.ref if parent else None, set()
    while ref is not None and ref not in seen:
        if ref == child.ref:
            raise RuleViolation("R-W2", f"{parent.ref} is {child.ref} or one of its "
                                "descendants: parents would form a cycle", "parent")
        seen.add(ref)
        above = lookup(ref) if ref != parent.ref else parent
        ref = above.parent if above else None
    return Effects(updated=(_copy(child, parent=parent.ref if parent else None),))


# -- apply (R-E1..R-E6) -------------------------------------------------------------------

def apply_email(item: WorkItem, parent: WorkItem | None = None, *,
                reopen: bool = True) -> Effects:
    """R-E1..R-E3 (and R-E5: auto-generated mail alike): the item after an email lands.

    ``item`` is a resolved target (R-M5), never CLOSED. ``parent`` is its parent,
    needed when an Action waiting for more info may move its parent Case (R-E2).
    ``reopen=False`` (R-B3: the item's reopen budget is spent) appends to a RESOLVED
    item with ``new_info`` but leaves it RESOLVED.
    """
    if item.state == "CLOSED":
        raise RuleViolation("R-M5", f"{item.ref} is CLOSED; resolve_target() decides its mail")
    if parent is not None and parent.ref != item.parent:
        raise ValueError(f"{parent.ref} is not the parent of {item.ref}")
    answered = item.state == "WAITING" and item.wait_type == "more_info"
    if answered and item.kind == "Action" and item.parent and parent is None:
        raise ValueError(f"R-E2 needs the parent of {item.ref}")
    if answered:
        pairs = [_with_state(item, "TO_DO", None, "R-E2", new_info=True)]
        if (item.kind == "Action" and parent is not None and parent.kind == "Case"
                and parent.state == "WAITING" and parent.wait_type == "more_info"):
            pairs.append(_with_state(parent, "IN_PROGRESS", None, "R-E2"))
    elif item.state == "RESOLVED" and reopen:
        pairs = [_with_state(item, "TO_DO", None, "R-E3", new_info=True)]
    else:
        pairs = [(_copy(item, new_info=True), None)]
    return _effects(pairs)


# -- resolve (R-M5) -----------------------------------------------------------------------

def resolve_target(item: WorkItem, lookup: Lookup) -> list[Resolution]:
    """R-M5: the items a matched item's mail really goes to, each resolved on its own.

    Relations come before state: split → every child, merged → target, converted →
    the Case. A CLOSED item walks up its parents, each treated like a matched item;
    a CLOSED child of a split, no open parent, or a cycle in the relations gives a
    new item via routing, copying the CLOSED item the walk started from. Refs that
    name nothing are ignored. At least one Resolution, no ref twice.
    """
    found: list[Resolution] = []
    done: set[str] = set()
    stack: list[tuple[WorkItem, tuple[str, ...], str | None]] = [(item, (), None)]
    while stack:
        node, path, origin = stack.pop()
        path = (*path, node.ref)
        if node.ref in path[:-1]:
            found.append(Resolution(None, origin or node.ref, path, "cycle"))
            continue
        if node.ref in done:
            continue                # a diamond: already resolved through another branch
        done.add(node.ref)
        children = [c for c in map(lookup, node.split_into) if c is not None]
        if children:
            stack.extend((c, path, None) for c in reversed(children))
            continue
        redirect = _find(lookup, node.merged_into) or _find(lookup, node.converted_to)
        if redirect:
            stack.append((redirect, path, None))
            continue
        if node.state != "CLOSED":
            found.append(Resolution(node.ref, None, path, "open"))
            continue
        origin = origin or node.ref
        parent = _find(lookup, node.parent)
        if parent is None:
            found.append(Resolution(None, origin, path, "no_open_parent"))
        elif node.ref in parent.split_into:
            found.append(Resolution(None, origin, path, "closed_split_child"))
        else:
            stack.append((parent, path, origin))
    unique: dict[tuple, Resolution] = {}
    for r in found:
        unique.setdefault((r.ref, r.copy_from), r)
    return list(unique.values())


def _find(lookup: Lookup, ref: str | None) -> WorkItem | None:
    return lookup(ref) if ref else None
