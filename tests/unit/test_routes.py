"""Route evaluation (SPEC §3.6, R-R1 … R-R9; R-M4's wildcard-only case)."""
from __future__ import annotations

import dataclasses

import pytest

from gateway.directory.routing import (RouteIndex, RoutingFacts, choose_routes, choose_wildcard,
                                       company_of, folder_matches, important_flag, rules_match,
                                       validate_route)
from gateway.model import Connector, Route, RouteRules

PRIMARY = "support@example.test"
ALIAS = "help@example.test"
ALIAS2 = "service@example.test"
CONNECTOR = Connector(name="support", service="lmtp", primary_address=PRIMARY,
                      aliases=(ALIAS, ALIAS2))
VENDOR = "*@vendor.test"


def route(id: int, address: str = PRIMARY, *, order: int | None = None, **fields) -> Route:
    """A route of CONNECTOR; ``order`` defaults to the id."""
    rules = fields.pop("rules", None) or RouteRules()
    return Route(id=id, name=f"r{id}", connector="support", email_address=address,
                 order=id if order is None else order, rules=rules, **fields)


def wildcard(id: int, senders: str = VENDOR, **fields) -> Route:
    return route(id, "*", rules=RouteRules(sender_list_includes=senders), **fields)


def fallback(id: int = 999, address: str = PRIMARY, *, order: int = 10_000, **fields) -> Route:
    return route(id, address, order=order, fallback=True, **fields)


def choose(routes, visible, **facts):
    return choose_routes(RouteIndex(routes), CONNECTOR, visible, RoutingFacts(**facts))


def winner_ids(result) -> list[tuple[str, int]]:
    return [(target, r.id) for target, r in result.winners]


# -- R-R1 --------------------------------------------------------------------------------

def test_r_r1_first_matching_route_wins():
    routes = [route(1, rules=RouteRules(subject_keywords="invoice")), route(2), route(3),
              fallback()]
    result = choose(routes, [PRIMARY], subject="printer broken")
    assert winner_ids(result) == [(PRIMARY, 2)]
    assert result.reason is None
    assert any("route 1" in n and "subject_keywords" in n for n in result.notes)


def test_r_r1_routes_are_tried_by_order_not_list_position():
    routes = [route(1, order=20), route(2, order=10)]
    assert winner_ids(choose(routes, [PRIMARY])) == [(PRIMARY, 2)]


def test_r_r1_disabled_routes_are_skipped():
    routes = [route(1, enabled=False), route(2), fallback()]
    result = choose(routes, [PRIMARY])
    assert winner_ids(result) == [(PRIMARY, 2)]
    assert any("route 1" in n and "disabled" in n for n in result.notes)


def test_r_r1_route_only_takes_its_own_address():
    result = choose([route(1, ALIAS)], [PRIMARY])
    assert result.winners == [] and result.reason == "no_route"


def test_r_r1_addresses_compared_without_case_or_plus_tag():
    result = choose([route(1)], ["Support+12-T@Example.TEST"])
    assert winner_ids(result) == [(PRIMARY, 1)]


def test_r_r1_one_item_per_distinct_winning_route():
    routes = [route(1, PRIMARY), route(2, ALIAS), fallback()]
    result = choose(routes, [PRIMARY, ALIAS])
    assert winner_ids(result) == [(PRIMARY, 1), (ALIAS, 2)]


def test_r_r1_two_addresses_hitting_the_same_wildcard_route_make_one_item():
    result = choose([wildcard(5), fallback()], [PRIMARY, ALIAS], sender="bob@vendor.test")
    assert winner_ids(result) == [("*", 5)]


def test_r_r1_every_address_reaching_the_band_gets_the_same_wildcard_route():
    """Distinct winners have distinct targets (R-D2): the band sees only the message."""
    routes = [wildcard(5), wildcard(6), fallback(address="*")]
    result = choose(routes, [ALIAS, PRIMARY, ALIAS2], sender="bob@vendor.test")
    assert winner_ids(result) == [("*", 5)]
    result = choose(routes, [ALIAS, PRIMARY], sender="eve@elsewhere.test")
    assert winner_ids(result) == [("*", 999)]


def test_r_r1_address_no_route_accepts_is_skipped():
    result = choose([route(1), fallback()], [ALIAS, PRIMARY])
    assert winner_ids(result) == [(PRIMARY, 1)]
    assert f"{ALIAS}: no route accepts it" in result.notes


def test_r_r1_repeated_visible_address_counts_once():
    result = choose([route(1)], [PRIMARY, PRIMARY.upper()])
    assert winner_ids(result) == [(PRIMARY, 1)]


@pytest.mark.parametrize("routes, visible, reason", [
    ([fallback()], [ALIAS], "alias_without_route"),
    ([fallback()], [ALIAS, ALIAS2], "alias_without_route"),
    ([route(1, ALIAS, enabled=False), fallback()], [ALIAS], "alias_without_route"),
    ([route(1, rules=RouteRules(important=True))], [PRIMARY], "no_route"),
    ([route(1, rules=RouteRules(important=True))], [PRIMARY, ALIAS], "no_route"),
    ([], [PRIMARY], "no_route"),
    ([fallback()], [], "no_visible_address"),
])
def test_r_r1_unprocessed_reason(routes, visible, reason):
    result = choose(routes, visible)
    assert result.winners == [] and result.reason == reason


# -- R-R2 --------------------------------------------------------------------------------

R_R2_CASES = [
    # important flag
    (RouteRules(important=True), dict(important=True), True),
    (RouteRules(important=True), dict(important=False), False),
    (RouteRules(important=False), dict(important=False), True),
    (RouteRules(important=False), dict(important=True), False),
    (RouteRules(important=None), dict(important=True), True),
    # attachment types
    (RouteRules(attachment_types=".pdf; .docx"), dict(attachment_names=["Report.PDF"]), True),
    (RouteRules(attachment_types=".pdf; .docx"), dict(attachment_names=["a.txt", "b.docx"]), True),
    (RouteRules(attachment_types=".pdf; .docx"), dict(attachment_names=["a.txt"]), False),
    (RouteRules(attachment_types=".pdf; .docx"), dict(attachment_names=[]), False),
    (RouteRules(attachment_types=".pdf"), dict(attachment_names=["pdf", "mypdf"]), False),
    (RouteRules(attachment_types=" pdf ;DOCX"), dict(attachment_names=["x.docx"]), True),
    (RouteRules(attachment_types="*.xlsx"), dict(attachment_names=["b.XLSX"]), True),
    (RouteRules(attachment_types=".tar.gz"), dict(attachment_names=["a.tar.gz"]), True),
    (RouteRules(attachment_types="*"), dict(attachment_names=["a"]), True),
    (RouteRules(attachment_types="*"), dict(attachment_names=[]), False),
    # subject keywords: any, case-insensitive, whole word
    (RouteRules(subject_keywords="urgent; support"), dict(subject="URGENT: printer"), True),
    (RouteRules(subject_keywords="urgent; support"), dict(subject="Need Support!"), True),
    (RouteRules(subject_keywords="urgent; support"), dict(subject="urgently needed"), False),
    (RouteRules(subject_keywords="urgent; support"), dict(subject="supporting docs"), False),
    (RouteRules(subject_keywords="urgent; support"), dict(subject=""), False),
    (RouteRules(subject_keywords="on hold"), dict(subject="Order on\r\n hold again"), True),
    (RouteRules(subject_keywords="on hold"), dict(subject="hold on"), False),
    (RouteRules(subject_keywords="C++"), dict(subject="question about c++ code"), True),
    (RouteRules(subject_keywords="C++"), dict(subject="question about abc++"), False),
    (RouteRules(subject_keywords="über"), dict(subject="Alles ÜBER uns"), True),
    (RouteRules(subject_keywords="über"), dict(subject="überall"), False),
    # sender companies
    (RouteRules(sender_companies="ACME; Initech"), dict(sender_company="acme"), True),
    (RouteRules(sender_companies="ACME; Initech"), dict(sender_company=" Initech "), True),
    (RouteRules(sender_companies="ACME; Initech"), dict(sender_company="Globex"), False),
    (RouteRules(sender_companies="ACME; Initech"), dict(sender_company=None), False),
    (RouteRules(sender_companies="ACME, Inc."), dict(sender_company="acme, inc."), True),
    # sender list includes
    (RouteRules(sender_list_includes="boss@acme.test"), dict(sender="boss+x@acme.test"), True),
    (RouteRules(sender_list_includes="Boss@ACME.test"), dict(sender="boss@acme.test"), True),
    (RouteRules(sender_list_includes="boss@acme.test"), dict(sender="clerk@acme.test"), False),
    (RouteRules(sender_list_includes="*@acme.test"), dict(sender="a@acme.test"), True),
    (RouteRules(sender_list_includes="*@acme.test"), dict(sender="a@sub.acme.test"), False),
    (RouteRules(sender_list_includes="@acme.test"), dict(sender="a@acme.test"), True),
    (RouteRules(sender_list_includes="*acme.test"), dict(sender="a@acme.test"), True),
    (RouteRules(sender_list_includes="*acme.test"), dict(sender="a@sub.acme.test"), True),
    (RouteRules(sender_list_includes="*acme.test"), dict(sender="a@badacme.test"), False),
    (RouteRules(sender_list_includes="*.acme.test"), dict(sender="a@sub.acme.test"), True),
    (RouteRules(sender_list_includes="*.acme.test"), dict(sender="a@acme.test"), False),
    (RouteRules(sender_list_includes="x@y.test; *@acme.test"), dict(sender="a@acme.test"), True),
    (RouteRules(sender_list_includes="*"), dict(sender="anyone@any.test"), True),
    (RouteRules(sender_list_includes="*"), dict(sender=None), False),
    (RouteRules(sender_list_includes="*@acme.test"), dict(sender=None), False),
    # recipient list includes: any To/Cc recipient, any entry
    (RouteRules(recipient_list_includes="*@partner.test"),
     dict(recipients=[PRIMARY, "x@partner.test"]), True),
    (RouteRules(recipient_list_includes="*@partner.test; boss@acme.test"),
     dict(recipients=["boss@acme.test"]), True),
    (RouteRules(recipient_list_includes="*@partner.test"), dict(recipients=[PRIMARY]), False),
    (RouteRules(recipient_list_includes="*@partner.test"), dict(recipients=[]), False),
    # a rule with no entries is not given
    (RouteRules(subject_keywords=" ; ", attachment_types=";"), dict(), True),
    (RouteRules(), dict(), True),
]


@pytest.mark.parametrize("rules, facts, expected", R_R2_CASES)
def test_r_r2_each_rule_matches_and_misses(rules, facts, expected):
    ok, _ = rules_match(rules, RoutingFacts(**facts))
    assert ok is expected


def test_r_r2_subject_keyword_is_whole_word():
    rules = RouteRules(subject_keywords="urgent")
    assert rules_match(rules, RoutingFacts(subject="Re: [urgent] help"))[0]
    assert rules_match(rules, RoutingFacts(subject="not-urgent-really"))[0]
    assert not rules_match(rules, RoutingFacts(subject="nonurgent"))[0]
    assert not rules_match(rules, RoutingFacts(subject="urgent_fix"))[0]


def test_r_r2_all_given_rules_must_match_and_reason_names_first_failure():
    rules = RouteRules(subject_keywords="urgent", sender_list_includes=VENDOR,
                       recipient_list_includes="boss@acme.test")
    facts = RoutingFacts(subject="urgent", sender="eve@elsewhere.test",
                         recipients=["boss@acme.test"])
    ok, reason = rules_match(rules, facts)
    assert not ok and reason.startswith("sender_list_includes")
    ok, reason = rules_match(rules, dataclasses.replace(facts, sender="bob@vendor.test"))
    assert ok and reason == "rules: subject_keywords, sender_list_includes, recipient_list_includes"


def test_r_r2_body_is_never_used():
    assert "body" not in {f.name for f in dataclasses.fields(RoutingFacts)}


@pytest.mark.parametrize("importance, x_priority, expected", [
    ("high", None, True), ("High", None, True), ("normal", None, False),
    (None, "1 (Highest)", True), (None, "2", True), (None, "3 (Normal)", False),
    (None, "12", False), (None, None, False), ("low", "5", False),
])
def test_r_r2_important_flag(importance, x_priority, expected):
    assert important_flag(importance, x_priority) is expected


@pytest.mark.parametrize("sender, expected", [
    ("boss@acme.test", "ACME Board"),          # exact address wins over its domain
    ("Boss+x@ACME.test", "ACME Board"),
    ("clerk@acme.test", "ACME"),
    ("a@sub.acme.test", None),                 # *@domain covers that domain only
    ("a@other.test", None),
    (None, None),
])
def test_r_r2_sender_company_from_contacts(sender, expected):
    contacts = {"*@acme.test": "ACME", "boss@acme.test": "ACME Board"}
    assert company_of(sender, contacts) == expected


# -- R-R3 --------------------------------------------------------------------------------

@pytest.mark.parametrize("route_folder, message_folder, expected", [
    ("", None, True), ("", "Inbox", True), ("*", "Archive", True), (" * ", None, True),
    ("Support", "support", True), ("Inbox/Support/", "INBOX/Support", True),
    ("Support", "Sales", False), ("Support", None, False), ("Inbox/Support", "Support", False),
])
def test_r_r3_folder_blank_or_star_matches_any(route_folder, message_folder, expected):
    assert folder_matches(route(1, folder_path=route_folder), message_folder) is expected


def test_r_r3_folder_is_checked_when_choosing():
    routes = [route(1, folder_path="Support"), route(2)]
    assert winner_ids(choose(routes, [PRIMARY], folder_path="Support")) == [(PRIMARY, 1)]
    assert winner_ids(choose(routes, [PRIMARY], folder_path="Inbox")) == [(PRIMARY, 2)]


# -- R-R4 and R-M4 ------------------------------------------------------------------------

@pytest.mark.parametrize("senders, ok", [
    ("", False), (" ; ", False), ("*", False), ("*@vendor.test; *", False),
    ("*@vendor.test", True), ("boss@acme.test; *acme.test", True),
])
def test_r_r4_wildcard_needs_sender_list(senders, ok):
    problems = validate_route(wildcard(5, senders), CONNECTOR, [])
    assert (problems == []) is ok
    assert all(rule == "R-R4" for rule, _, _ in problems)


def test_r_r4_wildcard_matches_any_visible_address():
    routes = [route(1, PRIMARY, rules=RouteRules(important=True)), wildcard(5), fallback()]
    result = choose(routes, [ALIAS2], sender="bob@vendor.test")
    assert winner_ids(result) == [("*", 5)]
    result = choose(routes, [PRIMARY], sender="eve@elsewhere.test")
    assert winner_ids(result) == [(PRIMARY, 999)]


def test_r_m4_no_visible_address_only_wildcard_routes_place_it():
    routes = [route(1), wildcard(5, enabled=False), wildcard(6), fallback(address="*")]
    index = RouteIndex(routes)
    notes: list[str] = []
    found = choose_wildcard(index, RoutingFacts(sender="bob@vendor.test"), notes)
    assert found is not None and found.id == 6
    assert any("route 5" in n and "disabled" in n for n in notes)
    assert choose_wildcard(index, RoutingFacts(sender="eve@elsewhere.test")) is None


# -- R-R7 --------------------------------------------------------------------------------

def test_r_r7_fallback_only_matches_primary():
    routes = [route(1, ALIAS, rules=RouteRules(important=True)), fallback()]
    assert winner_ids(choose(routes, [PRIMARY])) == [(PRIMARY, 999)]
    result = choose(routes, [ALIAS])
    assert result.winners == [] and result.reason == "alias_without_route"


def test_r_r7_star_fallback_matches_any_address():
    result = choose([fallback(address="*")], [ALIAS])
    assert winner_ids(result) == [("*", 999)]


def test_r_r7_fallback_naming_an_alias_is_not_used_for_it():
    result = choose([fallback(address=ALIAS)], [ALIAS])
    assert result.winners == [] and result.reason == "alias_without_route"


def test_r_r7_fallback_is_tried_last():
    routes = [fallback(order=0), wildcard(5, order=50), route(1, order=100)]
    assert [r.id for r in RouteIndex(routes).candidates(PRIMARY)] == [1, 5, 999]


@pytest.mark.parametrize("changes, field", [
    (dict(rules=RouteRules(subject_keywords="x")), "rules"),
    (dict(rules=RouteRules(important=False)), "rules"),
    (dict(enabled=False), "enabled"),
    (dict(email_address=ALIAS), "email_address"),
    (dict(folder_path="Support"), "folder_path"),
])
def test_r_r7_fallback_validation(changes, field):
    problems = validate_route(dataclasses.replace(fallback(), **changes), CONNECTOR, [])
    assert ("R-R7", field) in [(rule, f) for rule, f, _ in problems]


@pytest.mark.parametrize("address", [PRIMARY, "*", PRIMARY.upper()])
def test_r_r7_valid_fallback(address):
    assert validate_route(fallback(address=address), CONNECTOR, [route(1), fallback()]) == []


def test_r_r7_exactly_one_fallback_per_connector():
    problems = validate_route(fallback(id=1000), CONNECTOR, [route(1), fallback()])
    assert [(rule, f) for rule, f, _ in problems] == [("R-R7", "fallback")]


def test_r_r1_route_address_must_belong_to_connector():
    assert validate_route(route(1, ALIAS2), CONNECTOR, []) == []
    problems = validate_route(route(1, "other@example.test"), CONNECTOR, [])
    assert [(rule, f) for rule, f, _ in problems] == [("R-R1", "email_address")]
    problems = validate_route(dataclasses.replace(route(1), connector="sales"), CONNECTOR, [])
    assert [(rule, f) for rule, f, _ in problems] == [("R-R1", "connector")]


@pytest.mark.parametrize("entries, bad", [
    ("a@x.test; *@x.test; @x.test; *x.test; *.x.test; *", None),
    ("x.test", "x.test"), ("bob", "bob"), ("*@", "*@"), ("a@*", "a@*"),
])
def test_r_r2_address_list_entries_are_validated(entries, bad):
    problems = validate_route(route(1, rules=RouteRules(recipient_list_includes=entries)),
                              CONNECTOR, [])
    if bad is None:
        assert problems == []
    else:
        assert [(rule, f) for rule, f, _ in problems] == [("R-R2", "rules.recipient_list_includes")]
        assert bad in problems[0][2]


# -- R-R9 --------------------------------------------------------------------------------

def test_r_r9_lookup_cost_independent_of_route_count():
    """Structural, not timed: a lookup only ever sees its own routes, the band and the fallback."""
    band = [wildcard(200_000 + i, order=200_000 + i) for i in range(5)]
    many = [route(i, f"a{i}@example.test") for i in range(100_000)]
    few = many[:10]
    big, small = RouteIndex(many + band + [fallback()]), RouteIndex(few + band + [fallback()])
    assert len(big) == 100_006
    for index in (big, small):
        found = index.candidates("A7@Example.test")
        assert [r.id for r in found] == [7, 200_000, 200_001, 200_002, 200_003, 200_004]
        assert {r.email_address for r in found} <= {"a7@example.test", "*"}
        assert [r.id for r in index.candidates(PRIMARY)] == [r.id for r in band] + [999]
        assert [r.id for r in index.candidates("nobody@example.test")] == [r.id for r in band]
    assert len(big.candidates("a99999@example.test")) == len(small.candidates("a7@example.test"))


def test_r_r9_candidates_keep_band_order():
    routes = [route(3, order=3), route(1, order=1), wildcard(8, order=8), wildcard(7, order=7),
              route(2, ALIAS, order=2), fallback(address="*")]
    index = RouteIndex(routes)
    assert [r.id for r in index.candidates(PRIMARY)] == [1, 3, 7, 8, 999]
    assert [r.id for r in index.candidates(ALIAS)] == [2, 7, 8, 999]
    assert [r.id for r in index.candidates(ALIAS2)] == [7, 8, 999]
