"""R-R5, R-R6, R-R8 and R-C2 through the Python API, with mail delivered over LMTP."""
from __future__ import annotations

import pytest

from gateway.config import BootstrapConnector
from gateway.model import Route, RouteRules, RouteTarget
from gateway.model import RuleViolation
from tests.e2e.helpers import deliver, mail

SUPPORT = [BootstrapConnector(name="support", primary_address="support@corp.test",
                              aliases=("help@corp.test", "billing@corp.test"))]


def route(address: str, **fields) -> Route:
    return Route(id=0, name=fields.pop("name", address), connector="support",
                 email_address=address, order=0, **fields)


async def test_r_c2_every_connector_gets_its_fallback_route(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    [fallback] = [r for r in gw.directory.routes["support"].candidates("support@corp.test")
                  if r.fallback]
    assert fallback.email_address == "support@corp.test" and fallback.enabled


async def test_r_r5_new_routes_go_to_the_end_of_their_band(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    await gw.add_route(route("*", name="vip",
                             rules=RouteRules(sender_list_includes="*@vip.test")))
    await gw.add_route(route("help@corp.test"))   # added later, still before the wildcard band
    routes = {r.name: order for r, order in await gw.directory_ops.routes("support")}
    assert routes["help@corp.test"] < routes["vip"] < routes["support fallback"]


async def test_r_r4_wildcard_without_sender_list_is_refused_naming_the_rule(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    with pytest.raises(RuleViolation) as info:
        await gw.add_route(route("*"))
    assert info.value.rule == "R-R4"


async def test_r_r6_route_search_is_starts_with(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    await gw.add_route(route("help@corp.test", target=RouteTarget(process="Helpdesk")))
    await gw.add_route(route("billing@corp.test",
                             target=RouteTarget(process="Finance", ticket_category="Invoices")))
    async def names(q: str) -> list[str]:
        return sorted(r.name for r, _ in await gw.directory_ops.routes("support", q))
    assert await names("help") == ["help@corp.test"]
    assert await names("inv") == ["billing@corp.test"]
    assert await names("fin") == ["billing@corp.test"]
    assert await names("elp") == []


async def test_r_r8_route_to_a_vanished_process_keeps_working_and_is_flagged(start_gateway):
    gw = await start_gateway(connectors=SUPPORT)
    await gw.add_route(route("help@corp.test", target=RouteTarget(process="Old process")))
    await gw.directory_ops.set_processes(["Helpdesk"])
    [(flagged, why)] = await gw.directory_ops.flagged_routes()
    assert flagged.name == "help@corp.test" and why.startswith("R-R8")
    [copy] = await deliver(gw, mail(to=["help@corp.test"]))
    assert copy.outcome == "created"
    item = await gw.workitem(copy.targets[0]["ref"])
    assert item.custom_data["process"] == "Old process"
