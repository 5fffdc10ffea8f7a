"""R-R5 bands and R-C5 history diffs: the pure parts of the directory's write door."""
from __future__ import annotations

import pytest

from gateway.directory import activity
from gateway.directory import rules as route_bands
from gateway.model import Route, RuleViolation


def route(rid: int, address: str, order: int, fallback: bool = False) -> Route:
    return Route(id=rid, name=f"r{rid}", connector="c", email_address=address, order=order,
                 fallback=fallback)


# old data: sparse orders, the fallback at 1 000 000, a wildcard stored before an address
ROUTES = [route(1, "a@x.test", 1), route(2, "*", 2), route(3, "b@x.test", 3),
          route(4, "*", 4), route(5, "a@x.test", 1_000_000, fallback=True)]


def test_r_r5_orders_are_1_to_n_bands_first():
    assert route_bands.positions(ROUTES) == {1: 1, 3: 2, 2: 3, 4: 4, 5: 5}
    assert route_bands.renumbered(ROUTES) == [(1, 1), (2, 3), (3, 2), (4, 4), (5, 5)]


def test_r_r5_band_orders_are_min_to_max():
    assert [route_bands.band_orders(ROUTES, b) for b in (0, 1, 2)] == [(1, 2), (3, 4), (5, 5)]


def test_r_r5_move_within_the_band_shifts_the_others():
    assert route_bands.moved(ROUTES, 4, 3) == [(1, 1), (2, 3), (3, 4), (4, 2), (5, 5)]


@pytest.mark.parametrize("rid,order,text", [(1, 3, "non-wildcard routes occupy orders 1–2"),
                                             (2, 2, "wildcard routes occupy orders 3–4")])
def test_r_r5_move_outside_the_band_names_its_orders(rid, order, text):
    with pytest.raises(RuleViolation) as info:
        route_bands.moved(ROUTES, rid, order)
    assert info.value.rule == "R-R5" and text in str(info.value)


def test_r_r7_the_fallback_never_moves():
    with pytest.raises(RuleViolation) as info:
        route_bands.moved(ROUTES, 5, 5)
    assert info.value.rule == "R-R7"


def test_r_c5_diff_is_old_to_new_per_field_and_masks_the_password():
    old = {"enabled": True, "password": "hunter2", "rules": {"important": None, "x": ""}}
    new = {"enabled": False, "password": "hunter3", "rules": {"important": True, "x": ""}}
    assert activity.diff(old, new) == {"enabled": [True, False], "password": ["***", "***"],
                                       "rules.important": [None, True]}
    assert activity.diff(None, {"password": "p", "name": "n"}) == {
        "password": ["***", "***"], "name": [None, "n"]}
    assert activity.action_for(old, new) == "disable"
    assert activity.action_for(new, old) == "enable"
    assert activity.action_for(None, new) == "create" and activity.action_for(old, None) == \
        "delete"
