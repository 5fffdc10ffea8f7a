"""Work-item rules: refs (R-W1), states and parents (R-W2), host operations (R-W3),
applying an email (R-E1..R-E3, R-E6) and resolving a matched item (R-M5)."""
from __future__ import annotations

import copy
import random

import pytest

from gateway.model import STATES, WorkItem
from gateway.workitems.rules import (REF_IN_TEXT, REF_PATTERN, Resolution, RuleViolation,
                                     StateChange, apply_email, canonical_ref, check_new, convert,
                                     create, format_ref, link, merge, parse_ref, resolve_target,
                                     set_parent, split, transition)

KINDS = {"T": "Ticket", "C": "Case", "A": "Action"}


def wi(ref: str, state: str = "TO_DO", **kw) -> WorkItem:
    """A work item whose kind follows its ref; WAITING defaults to ``more_info``."""
    if state == "WAITING":
        kw.setdefault("wait_type", "more_info")
    return WorkItem(ref=ref, kind=KINDS[ref[-1]], uuid=f"uuid-{ref}", connector="support",
                    state=state, **kw)


def lookup_of(*items: WorkItem):
    by_ref = {i.ref: i for i in items}
    return by_ref.get


def targets(resolutions: list[Resolution]) -> list[tuple]:
    return [(r.ref, r.copy_from, r.reason) for r in resolutions]


# -- R-W1 refs ----------------------------------------------------------------------------

@pytest.mark.parametrize("number, kind, ref", [(123, "Ticket", "123-T"), (45, "Case", "45-C"),
                                               (7, "Action", "7-A")])
def test_r_w1_ref_is_number_and_kind_letter(number, kind, ref):
    assert format_ref(number, kind) == ref
    assert parse_ref(ref) == (number, kind)


@pytest.mark.parametrize("number, kind", [(0, "Ticket"), (-1, "Case"), (True, "Ticket"),
                                          ("12", "Ticket"), (1, "Task"), (1, "T")])
def test_r_w1_format_ref_refuses_what_is_not_a_ref(number, kind):
    with pytest.raises(RuleViolation) as err:
        format_ref(number, kind)
    assert err.value.rule == "R-W1"


@pytest.mark.parametrize("text", ["123-t", "123-X", "-T", "123T", "123-T\n", " 123-T", "123-TC",
                                  "١٢٣-T", "1" * 19 + "-T", "", "12-T-3", "0-T", "000-C"])
def test_r_w1_parse_ref_refuses_non_refs(text):
    assert parse_ref(text) is None


def test_r_w1_parse_ref_reads_leading_zeros_as_the_number():
    assert parse_ref("007-T") == (7, "Ticket")
    assert parse_ref("9" * 18 + "-C") == (int("9" * 18), "Case")


@pytest.mark.parametrize("text, ref", [("007-T", "7-T"), ("45-C", "45-C"), ("0-A", None),
                                       ("45-c", None), ("x", None)])
def test_r_w1_canonical_ref_is_the_stored_form(text, ref):
    assert canonical_ref(text) == ref


def test_r_p1_ref_pattern_is_anchored_even_with_search():
    assert REF_PATTERN.search("see 12-T") is None
    assert REF_PATTERN.match("12-T")["letter"] == "T"


@pytest.mark.parametrize("text, refs", [
    ("Re: [123-T] printer, see also 45-C.", ["123-T", "45-C"]),
    ("7-A", ["7-A"]),
    ("abc123-T 123-TX 123-t", []),
    ("x١123-T", []),
    ("order 2024-12-01-T", ["01-T"]),      # \b rule as specified; matching checks existence
])
def test_r_m2_ref_in_text_finds_whole_word_refs(text, refs):
    assert [m.group(0) for m in REF_IN_TEXT.finditer(text)] == refs


# -- R-W2 states and parents --------------------------------------------------------------

@pytest.mark.parametrize("kind, parent_kind, allowed", [
    ("Ticket", None, True), ("Ticket", "Ticket", True),
    ("Ticket", "Case", False), ("Ticket", "Action", False),
    ("Case", None, True), ("Case", "Ticket", True), ("Case", "Case", True),
    ("Case", "Action", False),
    ("Action", None, False), ("Action", "Case", True),
    ("Action", "Ticket", False), ("Action", "Action", False),
])
def test_r_w2_parent_kinds(kind, parent_kind, allowed):
    letter = {"Ticket": "T", "Case": "C", "Action": "A"}
    parent = wi(f"9-{letter[parent_kind]}") if parent_kind else None
    if allowed:
        check_new(kind, "TO_DO", parent)
    else:
        with pytest.raises(RuleViolation) as err:
            check_new(kind, "TO_DO", parent)
        assert (err.value.rule, err.value.field) == ("R-W2", "parent")


def test_r_w2_action_needs_a_parent_case():
    with pytest.raises(RuleViolation, match="an Action needs a parent Case"):
        check_new("Action", "TO_DO", None)


@pytest.mark.parametrize("kind", ["Ticket", "Case", "Action"])
@pytest.mark.parametrize("state", STATES)
def test_r_w2_only_tickets_and_cases_can_be_resolved(kind, state):
    parent = wi("9-C") if kind == "Action" else None
    wait = "other" if state == "WAITING" else None
    if kind == "Action" and state == "RESOLVED":
        with pytest.raises(RuleViolation) as err:
            check_new(kind, state, parent, wait_type=wait)
        assert (err.value.rule, err.value.field) == ("R-W2", "state")
    else:
        check_new(kind, state, parent, wait_type=wait)


@pytest.mark.parametrize("state, wait_type, ok", [
    ("WAITING", "more_info", True), ("WAITING", "other", True),
    ("WAITING", None, False), ("WAITING", "forever", False),
    ("TO_DO", "more_info", False), ("RESOLVED", "other", False), ("TO_DO", None, True),
])
def test_r_w2_wait_type_only_and_always_with_waiting(state, wait_type, ok):
    if ok:
        check_new("Ticket", state, wait_type=wait_type)
    else:
        with pytest.raises(RuleViolation) as err:
            check_new("Ticket", state, wait_type=wait_type)
        assert (err.value.rule, err.value.field) == ("R-W2", "wait_type")


@pytest.mark.parametrize("args, rule, field", [
    (("Task", "TO_DO"), "R-W1", "kind"),
    (("Ticket", "OPEN"), "R-W2", "state"),
])
def test_r_w2_unknown_kind_or_state_is_refused(args, rule, field):
    with pytest.raises(RuleViolation) as err:
        check_new(*args)
    assert (err.value.rule, err.value.field) == (rule, field)
    assert isinstance(err.value, ValueError) and str(err.value).startswith(rule)


def test_r_w1_unknown_mode_is_refused():
    with pytest.raises(RuleViolation) as err:
        check_new("Ticket", mode="staging")
    assert (err.value.rule, err.value.field) == ("R-W1", "mode")


def test_r_w2_child_has_its_parents_mode():
    with pytest.raises(RuleViolation, match="test item cannot have the live parent 9-C"):
        check_new("Action", "TO_DO", wi("9-C"), mode="test")
    check_new("Action", "TO_DO", wi("9-C", mode="test"), mode="test")


# -- R-W3 create and transition -----------------------------------------------------------

def test_r_w3_create_makes_a_valid_item():
    effects = create("5-A", "Action", "u5", "support", parent=wi("4-C"),
                     contacts=["a@x.test"], custom_data={"k": 1})
    [item] = effects.created
    assert (item.ref, item.kind, item.parent, item.state, item.contacts, item.custom_data) == (
        "5-A", "Action", "4-C", "TO_DO", ["a@x.test"], {"k": 1})
    assert effects.updated == () and effects.changes == ()


@pytest.mark.parametrize("ref", ["5-T", "5", "x-A", "05-A", "0-A"])
def test_r_w1_create_refuses_a_ref_of_another_kind(ref):
    with pytest.raises(RuleViolation) as err:
        create(ref, "Action", "u5", "support", parent=wi("4-C"))
    assert err.value.rule == "R-W1"


def test_r_m5_create_copy_of_a_closed_item_copies_contacts_and_data():
    closed = wi("3-T", "CLOSED", contacts=["Ann@x.test", "bob@y.test"],
                custom_data={"order": {"id": 7}, "prio": 1})
    [item] = create("8-T", "Ticket", "u8", "support", contacts=["ann@x.test", "cy@z.test"],
                    custom_data={"prio": 2}, copy_of=closed).created
    assert item.copied_from == "3-T"
    assert item.contacts == ["Ann@x.test", "bob@y.test", "cy@z.test"]
    assert item.custom_data == {"order": {"id": 7}, "prio": 2}
    item.custom_data["order"]["id"] = 0
    assert closed.custom_data["order"]["id"] == 7


@pytest.mark.parametrize("old, old_wait, new, new_wait", [
    ("TO_DO", None, "IN_PROGRESS", None),
    ("IN_PROGRESS", None, "WAITING", "more_info"),
    ("WAITING", "more_info", "WAITING", "other"),
    ("WAITING", "other", "TO_DO", None),
    ("RESOLVED", None, "CLOSED", None),
    ("CLOSED", None, "TO_DO", None),
])
def test_r_w3_transition_records_the_state_change(old, old_wait, new, new_wait):
    item = wi("1-T", old, wait_type=old_wait)
    effects = transition(item, new, new_wait)
    moved = effects.item("1-T")
    assert (moved.state, moved.wait_type) == (new, new_wait)
    assert effects.changes == (StateChange("1-T", old, new, old_wait, new_wait, "R-W3"),)
    assert (item.state, item.wait_type) == (old, old_wait)


def test_r_w3_transition_to_the_same_state_changes_nothing():
    assert transition(wi("1-T", "IN_PROGRESS"), "IN_PROGRESS").changes == ()


@pytest.mark.parametrize("item, state, wait", [
    (wi("1-A", parent="2-C"), "RESOLVED", None),
    (wi("1-T"), "WAITING", None),
    (wi("1-T"), "DONE", None),
])
def test_r_w2_transition_refuses_what_r_w2_forbids(item, state, wait):
    with pytest.raises(RuleViolation) as err:
        transition(item, state, wait)
    assert err.value.rule == "R-W2"


# -- R-W3 split, merge, convert, link, set parent -----------------------------------------

def test_r_w3_split_makes_child_tickets_and_resolves_the_original():
    original = wi("10-T", "IN_PROGRESS", contacts=["a@x.test"], custom_data={"k": [1]},
                  send_automated_emails=True, mode="test")
    effects = split(original, ["11-T", "12-T"], ["u11", "u12"])
    assert [c.ref for c in effects.created] == ["11-T", "12-T"]
    assert [i.ref for i in effects.items] == ["10-T", "11-T", "12-T"]
    for child, uuid in zip(effects.created, ["u11", "u12"]):
        assert (child.kind, child.parent, child.state, child.uuid, child.connector, child.mode,
                child.contacts, child.custom_data, child.send_automated_emails, child.new_info) == (
            "Ticket", "10-T", "TO_DO", uuid, "support", "test", ["a@x.test"], {"k": [1]}, True,
            False)
    after = effects.item("10-T")
    assert (after.state, after.split_into) == ("RESOLVED", ["11-T", "12-T"])
    assert effects.changes == (StateChange("10-T", "IN_PROGRESS", "RESOLVED", None, None, "R-W3"),)
    effects.created[0].custom_data["k"].append(2)
    assert original.custom_data == {"k": [1]} and original.split_into == []


def test_r_w3_splitting_again_adds_children():
    effects = split(wi("10-T", "RESOLVED", split_into=["11-T"]), ["13-T"], ["u13"])
    assert effects.item("10-T").split_into == ["11-T", "13-T"]
    assert effects.changes == ()


@pytest.mark.parametrize("item, refs, uuids, match", [
    (wi("1-C"), ["2-T"], ["u"], "only Tickets can be split"),
    (wi("1-T", merged_into="5-T"), ["2-T"], ["u"], "merged_into"),
    (wi("1-T", converted_to="5-C"), ["2-T"], ["u"], "converted_to"),
    (wi("1-T"), [], [], "at least one child"),
    (wi("1-T"), ["2-T", "3-T"], ["u"], "at least one child"),
    (wi("1-T"), ["2-C"], ["u"], "not a Ticket ref"),
    (wi("1-T"), ["2-T", "2-T"], ["u", "v"], "new and distinct"),
    (wi("1-T"), ["1-T"], ["u"], "new and distinct"),
    (wi("1-T", split_into=["2-T"]), ["2-T"], ["u"], "new and distinct"),
])
def test_r_w3_split_refuses(item, refs, uuids, match):
    with pytest.raises(RuleViolation, match=match):
        split(item, refs, uuids)


def test_r_w3_merge_resolves_sources_into_the_target():
    a = wi("1-T", "WAITING", wait_type="other", contacts=["A@x.test"])
    b = wi("2-T", "CLOSED", contacts=["b@x.test"])
    target = wi("3-T", "IN_PROGRESS", contacts=["a@x.test"])
    effects = merge([a, b], target)
    assert [(effects.item(r).state, effects.item(r).merged_into) for r in ("1-T", "2-T")] == [
        ("RESOLVED", "3-T"), ("RESOLVED", "3-T")]
    assert effects.item("1-T").wait_type is None
    assert effects.item("3-T").contacts == ["a@x.test", "b@x.test"]
    assert effects.item("3-T").state == "IN_PROGRESS"
    assert [(c.ref, c.old, c.new) for c in effects.changes] == [
        ("1-T", "WAITING", "RESOLVED"), ("2-T", "CLOSED", "RESOLVED")]
    assert a.merged_into is None and target.contacts == ["a@x.test"]


@pytest.mark.parametrize("sources, target, match", [
    ([], wi("3-T"), "distinct sources"),
    ([wi("1-T"), wi("1-T")], wi("3-T"), "distinct sources"),
    ([wi("3-T")], wi("3-T"), "distinct sources"),
    ([wi("1-C")], wi("3-T"), "only Tickets can be merged"),
    ([wi("1-T")], wi("3-C"), "only Tickets can be merged"),
    ([wi("1-T", mode="test")], wi("3-T"), "1-T is test, 3-T is live"),
    ([wi("1-T", merged_into="4-T")], wi("3-T"), "merged_into"),
    ([wi("1-T", split_into=["5-T"])], wi("3-T"), "split_into"),
    ([wi("1-T")], wi("3-T", merged_into="4-T"), "merge into|merged_into"),
    ([wi("1-T")], wi("3-T", split_into=["5-T"]), "split_into"),
    ([wi("1-T")], wi("3-T", converted_to="6-C"), "converted_to"),
])
def test_r_w3_merge_refuses(sources, target, match):
    with pytest.raises(RuleViolation, match=match) as err:
        merge(sources, target)
    assert err.value.rule == "R-W3"


@pytest.mark.parametrize("state, wait, case_state, case_wait", [
    ("DRAFT", None, "DRAFT", None), ("TO_DO", None, "TO_DO", None),
    ("IN_PROGRESS", None, "IN_PROGRESS", None), ("WAITING", "other", "WAITING", "other"),
    ("RESOLVED", None, "TO_DO", None), ("CLOSED", None, "TO_DO", None),
])
def test_r_w3_convert_resolves_the_ticket_and_makes_a_case(state, wait, case_state, case_wait):
    ticket = wi("1-T", state, wait_type=wait, parent="9-T", new_info=True,
                contacts=["a@x.test"], custom_data={"k": 1}, send_automated_emails=True)
    effects = convert(ticket, "2-C", "u2")
    after = effects.item("1-T")
    assert (after.state, after.wait_type, after.converted_to, after.parent) == (
        "RESOLVED", None, "2-C", "9-T")
    [case] = effects.created
    assert (case.ref, case.kind, case.uuid, case.state, case.wait_type, case.parent, case.new_info,
            case.contacts, case.custom_data, case.send_automated_emails, case.connector) == (
        "2-C", "Case", "u2", case_state, case_wait, None, True, ["a@x.test"], {"k": 1}, True,
        "support")
    assert [(c.old, c.new) for c in effects.changes] == (
        [] if state == "RESOLVED" else [(state, "RESOLVED")])


@pytest.mark.parametrize("item, case_ref, match", [
    (wi("1-C"), "2-C", "only Tickets can be converted"),
    (wi("1-T", converted_to="5-C"), "2-C", "converted_to"),
    (wi("1-T", merged_into="5-T"), "2-C", "merged_into"),
    (wi("1-T", split_into=["5-T"]), "2-C", "split_into"),
    (wi("1-T"), "2-T", "not a Case ref"),
])
def test_r_w3_convert_refuses(item, case_ref, match):
    with pytest.raises(RuleViolation, match=match):
        convert(item, case_ref, "u")


def test_r_w3_link_is_symmetric_and_idempotent():
    a, b = wi("1-T", linked=["7-C"]), wi("2-C", linked=["1-T"])
    effects = link(a, b)
    assert effects.item("1-T").linked == ["7-C", "2-C"]
    assert effects.item("2-C").linked == ["1-T"]
    again = link(effects.item("1-T"), effects.item("2-C"))
    assert again.item("1-T").linked == ["7-C", "2-C"] and a.linked == ["7-C"]
    with pytest.raises(RuleViolation, match="itself"):
        link(a, wi("1-T"))


@pytest.mark.parametrize("child, parent, ok", [
    (wi("1-T"), wi("2-T"), True), (wi("1-T"), wi("2-C"), False), (wi("1-T"), None, True),
    (wi("1-C"), wi("2-T"), True), (wi("1-C"), wi("2-C"), True), (wi("1-C"), wi("2-A"), False),
    (wi("1-A", parent="3-C"), wi("2-C"), True), (wi("1-A", parent="3-C"), wi("2-T"), False),
    (wi("1-A", parent="3-C"), None, False),
])
def test_r_w2_set_parent_follows_the_parent_kinds(child, parent, ok):
    if ok:
        assert set_parent(child, parent, lookup_of()).item("1-" + child.ref[-1]).parent == (
            parent.ref if parent else None)
    else:
        with pytest.raises(RuleViolation) as err:
            set_parent(child, parent, lookup_of())
        assert err.value.rule == "R-W2"


def test_r_w2_set_parent_refuses_a_cycle():
    t1, t2, t3 = wi("1-T"), wi("2-T", parent="1-T"), wi("3-T", parent="2-T")
    lookup = lookup_of(t1, t2, t3)
    for parent in (t3, t2, t1):
        with pytest.raises(RuleViolation, match="cycle"):
            set_parent(t1, parent, lookup)
    assert set_parent(t3, t1, lookup).item("3-T").parent == "1-T"


def test_r_w2_set_parent_stops_on_an_existing_cycle_above():
    a, b = wi("1-T", parent="2-T"), wi("2-T", parent="1-T")
    assert set_parent(wi("3-T"), a, lookup_of(a, b)).item("3-T").parent == "1-T"


def test_r_w3_operations_never_mutate_their_inputs():
    items = [wi("1-T", contacts=["a@x.test"], custom_data={"k": [1]}), wi("2-T"),
             wi("3-A", "WAITING", parent="4-C"), wi("4-C", "WAITING")]
    before = copy.deepcopy(items)
    t1, t2, a3, c4 = items
    transition(t1, "IN_PROGRESS")
    split(t1, ["5-T"], ["u5"])
    merge([t1], t2)
    convert(t1, "6-C", "u6")
    link(t1, t2)
    set_parent(t1, t2, lookup_of(*items))
    apply_email(a3, c4)
    resolve_target(t1, lookup_of(*items))
    assert items == before


def test_r_w3_results_share_no_lists_or_dicts_with_the_inputs():
    item = wi("1-T", contacts=["a@x.test"], custom_data={"k": [1]}, linked=["2-T"],
              split_into=["3-T"])
    after = transition(item, "IN_PROGRESS").item("1-T")
    after.contacts.append("b@x.test")
    after.custom_data["k"].append(2)
    after.linked.append("4-T")
    after.split_into.append("5-T")
    assert (item.contacts, item.custom_data, item.linked, item.split_into) == (
        ["a@x.test"], {"k": [1]}, ["2-T"], ["3-T"])


# -- R-E1..R-E3, R-E6 apply ---------------------------------------------------------------

APPLY_TABLE = [
    ("DRAFT", None, "DRAFT", None, None),                       # R-E1
    ("TO_DO", None, "TO_DO", None, None),                       # R-E1
    ("IN_PROGRESS", None, "IN_PROGRESS", None, None),           # R-E1
    ("WAITING", "other", "WAITING", "other", None),             # R-E2
    ("WAITING", "more_info", "TO_DO", None, "R-E2"),            # R-E2
    ("RESOLVED", None, "TO_DO", None, "R-E3"),                  # R-E3
]


@pytest.mark.parametrize("kind, state, wait, new_state, new_wait, rule", [
    (kind, *row) for kind in "TCA" for row in APPLY_TABLE
    if not (kind == "A" and row[0] == "RESOLVED")])             # R-W2: never a RESOLVED Action
def test_r_e1_to_r_e3_email_sets_new_info_and_moves_the_state(kind, state, wait, new_state,
                                                               new_wait, rule):
    parent = wi("9-C") if kind == "A" else None
    item = wi(f"1-{kind}", state, wait_type=wait, parent=parent.ref if parent else None)
    effects = apply_email(item, parent)
    after = effects.item(item.ref)
    assert (after.state, after.wait_type, after.new_info) == (new_state, new_wait, True)
    assert [u.ref for u in effects.updated] == [item.ref]
    expected = [StateChange(item.ref, state, new_state, wait, new_wait, rule)] if rule else []
    assert list(effects.changes) == expected
    assert item.new_info is False


def test_r_e2_waiting_more_info_goes_to_to_do():
    after = apply_email(wi("1-T", "WAITING", wait_type="more_info")).item("1-T")
    assert (after.state, after.wait_type, after.new_info) == ("TO_DO", None, True)


def test_r_e2_action_answer_moves_a_case_waiting_for_more_info_to_in_progress():
    case = wi("2-C", "WAITING", wait_type="more_info")
    action = wi("1-A", "WAITING", wait_type="more_info", parent="2-C")
    effects = apply_email(action, case)
    assert effects.item("2-C").state == "IN_PROGRESS" and effects.item("2-C").wait_type is None
    assert effects.item("2-C").new_info is False
    assert [(c.ref, c.old, c.new, c.rule) for c in effects.changes] == [
        ("1-A", "WAITING", "TO_DO", "R-E2"), ("2-C", "WAITING", "IN_PROGRESS", "R-E2")]


@pytest.mark.parametrize("action_state, action_wait, case_state, case_wait", [
    ("WAITING", "more_info", "WAITING", "other"),
    ("WAITING", "more_info", "IN_PROGRESS", None),
    ("WAITING", "other", "WAITING", "more_info"),
    ("TO_DO", None, "WAITING", "more_info"),
])
def test_r_e2_parent_case_moves_only_when_both_wait_for_more_info(action_state, action_wait,
                                                                  case_state, case_wait):
    case = wi("2-C", case_state, wait_type=case_wait)
    action = wi("1-A", action_state, wait_type=action_wait, parent="2-C")
    effects = apply_email(action, case)
    assert [u.ref for u in effects.updated] == ["1-A"]
    assert all(c.ref == "1-A" for c in effects.changes)


def test_r_e2_apply_needs_the_parent_of_an_action_waiting_for_more_info():
    action = wi("1-A", "WAITING", wait_type="more_info", parent="2-C")
    with pytest.raises(ValueError, match="needs the parent"):
        apply_email(action)
    with pytest.raises(ValueError, match="not the parent"):
        apply_email(action, wi("3-C"))


@pytest.mark.parametrize("ref", ["1-T", "1-C"])
def test_r_b3_a_spent_reopen_budget_appends_to_a_resolved_item_without_reopening_it(ref):
    effects = apply_email(wi(ref, "RESOLVED"), reopen=False)
    assert (effects.item(ref).state, effects.item(ref).new_info) == ("RESOLVED", True)
    assert effects.changes == ()
    reopened = apply_email(wi(ref, "RESOLVED"))
    assert reopened.item(ref).state == "TO_DO"


def test_r_m5_apply_refuses_a_closed_item():
    with pytest.raises(RuleViolation) as err:
        apply_email(wi("1-T", "CLOSED"))
    assert err.value.rule == "R-M5"


# -- R-M5 resolve -------------------------------------------------------------------------

def resolve(ref: str, *items: WorkItem) -> list[Resolution]:
    lookup = lookup_of(*items)
    return resolve_target(lookup(ref), lookup)


@pytest.mark.parametrize("state", ["DRAFT", "TO_DO", "IN_PROGRESS", "WAITING", "RESOLVED"])
def test_r_m5_an_item_that_is_not_closed_is_its_own_target(state):
    assert resolve("1-T", wi("1-T", state)) == [Resolution("1-T", None, ("1-T",), "open")]


def test_r_m5_split_resolves_to_every_child():
    items = [wi("1-T", "RESOLVED", split_into=["2-T", "3-T"]),
             wi("2-T", parent="1-T"), wi("3-T", "IN_PROGRESS", parent="1-T")]
    assert resolve("1-T", *items) == [Resolution("2-T", None, ("1-T", "2-T"), "open"),
                                      Resolution("3-T", None, ("1-T", "3-T"), "open")]


def test_r_m5_a_split_child_that_is_open_gets_its_own_mail_only():
    items = [wi("1-T", "RESOLVED", split_into=["2-T", "3-T"]),
             wi("2-T", parent="1-T"), wi("3-T", parent="1-T")]
    assert targets(resolve("2-T", *items)) == [("2-T", None, "open")]


def test_r_m5_a_split_child_split_again_resolves_to_its_children():
    items = [wi("1-T", "RESOLVED", split_into=["2-T", "3-T"]),
             wi("2-T", "RESOLVED", parent="1-T", split_into=["4-T", "5-T"]),
             wi("3-T", parent="1-T"), wi("4-T", parent="2-T"), wi("5-T", parent="2-T")]
    assert targets(resolve("1-T", *items)) == [
        ("4-T", None, "open"), ("5-T", None, "open"), ("3-T", None, "open")]
    assert [r.path for r in resolve("2-T", *items)] == [("2-T", "4-T"), ("2-T", "5-T")]


def test_r_m5_a_closed_child_of_a_split_gets_a_new_item():
    items = [wi("1-T", "RESOLVED", split_into=["2-T", "3-T"]),
             wi("2-T", "CLOSED", parent="1-T"), wi("3-T", parent="1-T")]
    assert resolve("2-T", *items) == [
        Resolution(None, "2-T", ("2-T",), "closed_split_child")]
    assert targets(resolve("1-T", *items)) == [
        (None, "2-T", "closed_split_child"), ("3-T", None, "open")]


@pytest.mark.parametrize("chain, expected", [
    ([wi("1-T", "RESOLVED", merged_into="2-T"), wi("2-T")], [("2-T", None, "open")]),
    ([wi("1-T", "RESOLVED", merged_into="2-T"), wi("2-T", "RESOLVED", merged_into="3-T"),
      wi("3-T", "WAITING")], [("3-T", None, "open")]),
    ([wi("1-T", "CLOSED", merged_into="2-T"), wi("2-T")], [("2-T", None, "open")]),
    ([wi("1-T", "RESOLVED", merged_into="2-T"), wi("2-T", "CLOSED")],
     [(None, "2-T", "no_open_parent")]),
])
def test_r_m5_merged_resolves_to_the_merge_target(chain, expected):
    assert targets(resolve("1-T", *chain)) == expected


def test_r_m5_merged_into_a_split_ticket_resolves_to_every_child():
    items = [wi("1-T", "RESOLVED", merged_into="2-T"),
             wi("2-T", "RESOLVED", split_into=["3-T", "4-T"]),
             wi("3-T", parent="2-T"), wi("4-T", "CLOSED", parent="2-T")]
    assert resolve("1-T", *items) == [
        Resolution("3-T", None, ("1-T", "2-T", "3-T"), "open"),
        Resolution(None, "4-T", ("1-T", "2-T", "4-T"), "closed_split_child")]


@pytest.mark.parametrize("ticket_state", ["RESOLVED", "CLOSED"])
def test_r_m5_converted_resolves_to_the_case(ticket_state):
    items = [wi("1-T", ticket_state, converted_to="2-C"), wi("2-C", "IN_PROGRESS")]
    assert resolve("1-T", *items) == [Resolution("2-C", None, ("1-T", "2-C"), "open")]


def test_r_m5_converted_to_a_closed_case_gets_a_new_item_copied_from_the_case():
    items = [wi("1-T", "RESOLVED", converted_to="2-C"), wi("2-C", "CLOSED")]
    assert targets(resolve("1-T", *items)) == [(None, "2-C", "no_open_parent")]


@pytest.mark.parametrize("items, start, expected_ref, expected_path", [
    ([wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "WAITING")], "1-A", "2-C", ("1-A", "2-C")),
    ([wi("1-C", "CLOSED", parent="2-C"), wi("2-C")], "1-C", "2-C", ("1-C", "2-C")),
    ([wi("1-C", "CLOSED", parent="2-T"), wi("2-T", "RESOLVED")], "1-C", "2-T", ("1-C", "2-T")),
    ([wi("1-T", "CLOSED", parent="2-T"), wi("2-T")], "1-T", "2-T", ("1-T", "2-T")),
    ([wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "CLOSED", parent="3-T"), wi("3-T")],
     "1-A", "3-T", ("1-A", "2-C", "3-T")),
    ([wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "CLOSED", parent="3-C"),
      wi("3-C", "CLOSED", parent="4-T"), wi("4-T", "CLOSED", parent="5-T"), wi("5-T")],
     "1-A", "5-T", ("1-A", "2-C", "3-C", "4-T", "5-T")),
])
def test_r_m5_closed_walks_up_to_the_nearest_open_parent(items, start, expected_ref,
                                                         expected_path):
    assert resolve(start, *items) == [Resolution(expected_ref, None, expected_path, "open")]


@pytest.mark.parametrize("items, start, copy_from", [
    ([wi("1-T", "CLOSED")], "1-T", "1-T"),
    ([wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "CLOSED")], "1-A", "1-A"),
    ([wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "CLOSED", parent="3-T"),
      wi("3-T", "CLOSED")], "1-A", "1-A"),
    ([wi("1-A", "CLOSED", parent="2-C")], "1-A", "1-A"),        # parent ref names nothing
])
def test_r_m5_closed_with_no_open_parent_gets_a_new_item(items, start, copy_from):
    [r] = resolve(start, *items)
    assert (r.ref, r.copy_from, r.reason) == (None, copy_from, "no_open_parent")


def test_r_m5_closed_action_under_a_converted_ticket_goes_to_the_new_case():
    items = [wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "CLOSED", parent="3-T"),
             wi("3-T", "CLOSED", converted_to="4-C"), wi("4-C")]
    assert resolve("1-A", *items) == [
        Resolution("4-C", None, ("1-A", "2-C", "3-T", "4-C"), "open")]


def test_r_m5_closed_case_under_a_split_ticket_goes_to_every_child():
    items = [wi("1-C", "CLOSED", parent="2-T"),
             wi("2-T", "RESOLVED", split_into=["3-T", "4-T"]),
             wi("3-T", parent="2-T"), wi("4-T", parent="2-T")]
    assert targets(resolve("1-C", *items)) == [("3-T", None, "open"), ("4-T", None, "open")]


def test_r_m5_walk_up_stops_at_a_closed_split_child_and_copies_the_matched_item():
    items = [wi("1-A", "CLOSED", parent="2-C"), wi("2-C", "CLOSED", parent="3-T"),
             wi("3-T", "CLOSED", parent="4-T"),
             wi("4-T", "RESOLVED", split_into=["3-T", "5-T"]), wi("5-T", parent="4-T")]
    assert resolve("1-A", *items) == [
        Resolution(None, "1-A", ("1-A", "2-C", "3-T"), "closed_split_child")]


def test_r_m5_redirect_reached_from_a_walk_copies_the_item_it_leads_to():
    items = [wi("1-C", "CLOSED", parent="2-T"), wi("2-T", "CLOSED", merged_into="3-T"),
             wi("3-T", "CLOSED")]
    assert targets(resolve("1-C", *items)) == [(None, "3-T", "no_open_parent")]


@pytest.mark.parametrize("items, start, path, copy_from", [
    ([wi("1-T", "RESOLVED", merged_into="2-T"), wi("2-T", "RESOLVED", merged_into="1-T")],
     "1-T", ("1-T", "2-T", "1-T"), "1-T"),
    ([wi("1-T", "RESOLVED", split_into=["2-T"]),
      wi("2-T", "RESOLVED", parent="1-T", merged_into="1-T")],
     "1-T", ("1-T", "2-T", "1-T"), "1-T"),
    ([wi("1-T", "CLOSED", parent="2-T"), wi("2-T", "CLOSED", parent="1-T")],
     "1-T", ("1-T", "2-T", "1-T"), "1-T"),
    ([wi("1-T", "RESOLVED", converted_to="2-C"), wi("2-C", "CLOSED", parent="1-T")],
     "1-T", ("1-T", "2-C", "1-T"), "2-C"),
    ([wi("1-T", "RESOLVED", split_into=["1-T"])], "1-T", ("1-T", "1-T"), "1-T"),
])
def test_r_m5_a_cycle_ends_in_a_new_item(items, start, path, copy_from):
    assert resolve(start, *items) == [Resolution(None, copy_from, path, "cycle")]


def test_r_m5_each_target_once_when_branches_meet():
    items = [wi("1-T", "RESOLVED", split_into=["2-T", "3-T"]),
             wi("2-T", "RESOLVED", parent="1-T", merged_into="4-T"),
             wi("3-T", "RESOLVED", parent="1-T", merged_into="4-T"), wi("4-T")]
    assert resolve("1-T", *items) == [Resolution("4-T", None, ("1-T", "2-T", "4-T"), "open")]


def test_r_m5_a_cycle_reached_by_two_branches_gives_one_new_item():
    items = [wi("1-T", "RESOLVED", split_into=["2-T", "3-T"]),
             wi("2-T", "RESOLVED", parent="1-T", merged_into="1-T"),
             wi("3-T", "RESOLVED", parent="1-T", merged_into="1-T")]
    assert resolve("1-T", *items) == [Resolution(None, "1-T", ("1-T", "2-T", "1-T"), "cycle")]


def test_r_m5_resolving_visits_each_item_once():
    """A ladder of 12 diamonds would be 2**12 paths if branches were walked twice."""
    items = []
    for n in range(12):
        top, left, right = f"{3 * n + 1}-T", f"{3 * n + 2}-T", f"{3 * n + 3}-T"
        items += [wi(top, "RESOLVED", split_into=[left, right]),
                  wi(left, "RESOLVED", merged_into=f"{3 * n + 4}-T"),
                  wi(right, "RESOLVED", merged_into=f"{3 * n + 4}-T")]
    items.append(wi("37-T"))
    by_ref, calls = {i.ref: i for i in items}, []

    def lookup(ref):
        calls.append(ref)
        return by_ref.get(ref)

    assert targets(resolve_target(by_ref["1-T"], lookup)) == [("37-T", None, "open")]
    assert len(calls) < 10 * len(items)


@pytest.mark.parametrize("items, expected", [
    ([wi("1-T", "RESOLVED", merged_into="9-T")], [("1-T", None, "open")]),
    ([wi("1-T", "CLOSED", converted_to="9-C")], [(None, "1-T", "no_open_parent")]),
    ([wi("1-T", "RESOLVED", split_into=["8-T", "2-T"]), wi("2-T", parent="1-T")],
     [("2-T", None, "open")]),
    ([wi("1-T", "RESOLVED", split_into=["8-T"])], [("1-T", None, "open")]),
])
def test_r_m5_refs_that_name_nothing_are_ignored(items, expected):
    assert targets(resolve("1-T", *items)) == expected


@pytest.mark.parametrize("seed", range(200))
def test_r_m5_any_relation_graph_resolves_to_open_items_or_new_ones(seed):
    """Whatever the relations (cycles, diamonds, dangling refs), resolution ends,
    gives at least one target, each ref once, and only items apply_email accepts."""
    rng = random.Random(seed)
    refs = [f"{n}-T" for n in range(1, 8)]
    maybe = lambda: rng.choice([None, None, *refs, "99-T"])  # noqa: E731
    items = [wi(ref, rng.choice(["TO_DO", "RESOLVED", "CLOSED", "CLOSED"]), parent=maybe(),
                merged_into=maybe() if rng.random() < .3 else None,
                converted_to=maybe() if rng.random() < .2 else None,
                split_into=rng.sample(refs, rng.randint(0, 2)) if rng.random() < .3 else [])
             for ref in refs]
    lookup = lookup_of(*items)
    for item in items:
        found = resolve_target(item, lookup)
        assert found
        opened = [r.ref for r in found if r.ref is not None]
        assert len(opened) == len(set(opened))
        for r in found:
            assert r.path[0] == item.ref
            if r.ref is None:
                assert r.copy_from in r.path and r.reason != "open"
            else:
                target = lookup(r.ref)
                assert r.path[-1] == r.ref and target.state != "CLOSED"
                assert not target.merged_into or lookup(target.merged_into) is None
                apply_email(target, lookup(target.parent) if target.parent else None)


@pytest.mark.parametrize("text", [
    "Re: [12-T] help", "12-T", "x 12-T.", "ref 007-C and 3-A", "a12-T", "12-Tx", "12-T_",
    "-T", "1-t", "über 5-A", "٣-T", "1-T1-T", "(99-C)", "12-T-T", "", "x" * 50 + "4-A",
])
def test_r_m2_fast_ref_scan_finds_what_the_ref_pattern_finds(text):
    from gateway.pipeline.prepare import refs_in_text
    expected = [canonical_ref(m.group(0)) for m in REF_IN_TEXT.finditer(text)]
    assert refs_in_text(text) == [r for r in expected if r]
