"""HTTP: connectors, routes, contacts and their activity history (SPEC §1, §3.6, §5.3).

Every refusal is checked for its status, the rule id leading the message and the
field; mail is delivered over LMTP to show a change through the API is live at once.
"""
from __future__ import annotations

import json

import aiohttp
import pytest

from gateway.config import BootstrapConnector
from tests.conftest import ADMIN_TOKEN
from tests.e2e.helpers import WIRE, deliver, mail
from tests.wire import WireClient

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRET = "s3cret-Passw0rd"
SUPPORT = [BootstrapConnector(name="support", primary_address="support@corp.test",
                              aliases=("help@corp.test", "billing@corp.test"))]


@pytest.fixture
async def gw(start_gateway):
    return await start_gateway(connectors=SUPPORT)


@pytest.fixture
async def http(gw):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}",
                                     headers=AUTH) as session:
        yield session


async def call(http, method: str, path: str, body=None, **kwargs) -> tuple[int, dict]:
    async with http.request(method, f"/api/v1{path}", json=body, **kwargs) as r:
        return r.status, (await r.json() if r.status != 204 else {})


def refused(status: int, body: dict, rule: str, field: str | None, status_code: int = 422,
            code: str = "rule_violation") -> str:
    """A refused change: the status, the rule id leading the message, the field named."""
    assert status == status_code, body
    error = body["error"]
    assert error["code"] == code, error
    assert error["message"].startswith(f"{rule}: "), error
    assert error["field"] == field, error
    return error["message"]


async def add_route(http, address: str, connector: str = "support", **fields) -> dict:
    fields.setdefault("name", address)
    status, body = await call(http, "POST", f"/connectors/{connector}/routes",
                              {"email_address": address, **fields})
    assert status == 201, body
    return body


async def routes(http, connector: str = "support", q: str | None = None) -> list[dict]:
    status, body = await call(http, "GET", f"/connectors/{connector}/routes",
                              params={"q": q} if q is not None else None)
    assert status == 200, body
    return body["routes"]


async def fallback(http, connector: str = "support") -> dict:
    [found] = [r for r in await routes(http, connector) if r["fallback"]]
    return found


async def history(http, entity: str) -> list[dict]:
    status, body = await call(http, "GET", "/activity", params={"entity": entity})
    assert status == 200, body
    return body["activity"]


def wildcard(name: str, senders: str = "*@vip.test") -> dict:
    return {"name": name, "rules": {"sender_list_includes": senders}}


async def rcpt_code(gw, address: str) -> int:
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO t")
    await client.command("MAIL FROM:<a@customer.test>")
    code = (await client.command(f"RCPT TO:<{address}>")).code
    await client.close()
    return code


# -- connectors (R-C1, R-C2, R-C3) --------------------------------------------------------

async def test_r_c1_connector_created_over_http_receives_mail_over_lmtp_at_once(gw, http):
    status, body = await call(http, "POST", "/connectors", {
        "name": "billing", "primary_address": "billing@other.test",
        "aliases": ["invoices@other.test"], "username": "billing", "password": SECRET})
    assert status == 201, body
    client = await WireClient.connect(gw.listeners["lmtp"].port)
    await client.command("LHLO t")
    _, replies = await client.transaction("carol@customer.test", ["invoices+7@other.test"],
                                          mail(to=["billing@other.test"]).as_bytes(policy=WIRE))
    await client.close()
    assert [r.code for r in replies] == [250]
    [copy] = await deliver(gw, mail(to=["billing@other.test"], subject="Second question"))
    assert (copy.connector, copy.outcome) == ("billing", "created")   # by its fallback


async def test_r_c1_password_is_stored_but_never_returned(http):
    status, body = await call(http, "POST", "/connectors", {
        "name": "billing", "primary_address": "billing@other.test", "username": "bill",
        "password": SECRET})
    assert status == 201 and body["password_set"] is True and "password" not in body
    assert body == {"name": "billing", "service": "lmtp", "direction": "incoming",
                    "protocol": "lmtp", "primary_address": "billing@other.test", "aliases": [],
                    "enabled": True, "route_on_envelope": False, "smtp_host": "",
                    "smtp_port": 587, "smtp_tls": "starttls", "username": "bill",
                    "password_set": True}
    for path in ("/connectors", "/connectors/billing", "/activity"):
        async with http.get(f"/api/v1{path}") as r:
            assert SECRET not in await r.text()
    status, body = await call(http, "PATCH", "/connectors/billing", {"password": None})
    assert status == 200 and body["password_set"] is False


@pytest.mark.parametrize("method,path", [("POST", "/connectors"),
                                         ("PATCH", "/connectors/support")])
async def test_r_c1_password_longer_than_50_characters_is_refused(http, method, path):
    body = {"password": "p" * 51}
    if method == "POST":
        body.update(name="billing", primary_address="billing@other.test")
    message = refused(*await call(http, method, path, body), "R-C1", "password")
    assert "50" in message
    body["password"] = "p" * 50
    status, answer = await call(http, method, path, body)
    assert status in (200, 201) and answer["password_set"] is True


@pytest.mark.parametrize("body,field,code", [
    ({"service": "gmail_imap"}, "service", "invalid"),
    ({"direction": "sideways"}, "direction", "invalid"),
    ({"aliases": ["x+tag@corp.test"]}, "aliases", "invalid"),
    ({"color": "blue"}, "color", "unknown_field"),
    ({"name": "renamed"}, "name", "rule_violation"),
    ({"aliases": ["support@corp.test"]}, "aliases", "rule_violation"),
])
async def test_r_c1_invalid_connector_changes_are_refused_naming_the_field(http, body, field,
                                                                           code):
    refused(*await call(http, "PATCH", "/connectors/support", body), "R-C1", field, code=code)


async def test_r_c1_an_address_belongs_to_one_connector_only(http):
    await call(http, "POST", "/connectors", {"name": "sales",
                                             "primary_address": "sales@corp.test"})
    refused(*await call(http, "PATCH", "/connectors/sales",
                        {"aliases": ["HELP@Corp.test"]}), "R-C1", "aliases", 409, "conflict")
    refused(*await call(http, "POST", "/connectors", {"name": "sales", "primary_address":
                                                      "s2@corp.test"}), "R-C1", "name", 409,
            "conflict")


async def test_r_c2_enabling_a_connector_without_fallback_is_refused(gw, http):
    status, body = await call(http, "PATCH", "/connectors/support", {"enabled": False})
    assert status == 200 and body["enabled"] is False
    await gw.store.write(lambda db: db.execute(
        "DELETE FROM routes WHERE connector = 'support' AND fallback = 1"))
    refused(*await call(http, "PATCH", "/connectors/support", {"enabled": True}),
            "R-C2", "enabled")
    restored = await add_route(http, "support@corp.test", name="fallback again", fallback=True)
    assert restored["order"] == len(await routes(http))
    status, body = await call(http, "PATCH", "/connectors/support", {"enabled": True})
    assert status == 200 and body["enabled"] is True


async def test_r_c3_testing_an_lmtp_connector_has_nothing_to_connect_to(http):
    status, body = await call(http, "POST", "/connectors/support/test")
    assert (status, body) == (200, {"ok": True,
                                    "detail": "lmtp: mail is pushed; nothing to connect to"})
    status, body = await call(http, "POST", "/connectors/nobody/test")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_r_r7_the_fallback_follows_a_new_primary_address(gw, http):
    await add_route(http, "help@corp.test")
    status, body = await call(http, "PATCH", "/connectors/support",
                              {"primary_address": "desk@corp.test"})
    assert status == 200, body
    assert (await fallback(http))["email_address"] == "desk@corp.test"
    assert await rcpt_code(gw, "support@corp.test") == 550
    [copy] = await deliver(gw, mail(to=["desk@corp.test"]))
    assert copy.outcome == "created"
    refused(*await call(http, "PATCH", "/connectors/support", {"aliases": []}),
            "R-R1", "aliases")          # help@ has a route of its own


async def test_deleting_a_connector_removes_its_routes_and_its_addresses(gw, http):
    route = await add_route(http, "help@corp.test")
    status, _ = await call(http, "DELETE", "/connectors/support", headers={
        "X-Mailgate-Actor": "alice"})
    assert status == 204
    assert (await call(http, "GET", f"/routes/{route['id']}"))[0] == 404
    assert (await call(http, "GET", "/connectors/support/routes"))[0] == 404
    assert await rcpt_code(gw, "help@corp.test") == 550
    [line] = [a for a in await history(http, "connector:support") if a["action"] == "delete"]
    assert line["actor"] == "alice" and line["changes"]["name"] == ["support", None]
    assert [a["action"] for a in await history(http, f"route:{route['id']}")] == \
        ["create", "delete"]


# -- routes (R-R1..R-R8) ------------------------------------------------------------------

async def test_r_r1_a_route_created_over_http_routes_mail_at_once(gw, http):
    route = await add_route(http, "help@corp.test", rules={"subject_keywords": "invoice"},
                            target={"kind": "Case", "process": "Billing"})
    assert route["target"]["kind"] == "Case" and route["flags"] == []
    [copy] = await deliver(gw, mail(to=["help@corp.test"], subject="Invoice 12 is wrong"))
    assert copy.outcome == "created" and copy.targets[0]["ref"].endswith("-C")
    item = await gw.workitem(copy.targets[0]["ref"])
    assert item.custom_data["process"] == "Billing"
    await call(http, "PATCH", f"/routes/{route['id']}", {"enabled": False})
    [copy] = await deliver(gw, mail(to=["help@corp.test"], subject="Invoice 13"))
    assert (copy.outcome, copy.reason) == ("unprocessed", "alias_without_route")


async def test_r_r1_a_route_address_must_be_its_connectors(http):
    refused(*await call(http, "POST", "/connectors/support/routes",
                        {"name": "x", "email_address": "other@corp.test"}),
            "R-R1", "email_address")
    refused(*await call(http, "POST", "/connectors/support/routes",
                        {"name": "x", "email_address": "help@corp.test",
                         "target": {"kind": "Action"}}), "R-R1", "target.kind", code="invalid")


@pytest.mark.parametrize("senders,field", [("", "rules.sender_list_includes"),
                                           ("*", "rules.sender_list_includes")])
async def test_r_r4_a_wildcard_route_needs_a_real_sender_list(http, senders, field):
    refused(*await call(http, "POST", "/connectors/support/routes",
                        {"email_address": "*", **wildcard("vip", senders)}), "R-R4", field)
    route = await add_route(http, "*", **wildcard("vip"))
    refused(*await call(http, "PATCH", f"/routes/{route['id']}",
                        {"rules": {"sender_list_includes": senders}}), "R-R4", field)


async def test_r_r5_new_routes_go_to_the_end_of_their_band_orders_1_to_n(http):
    await add_route(http, "*", **wildcard("vip"))
    await add_route(http, "help@corp.test")
    await add_route(http, "*", **wildcard("partners", "*partner.test"))
    await add_route(http, "billing@corp.test")
    assert [(r["name"], r["order"]) for r in await routes(http)] == [
        ("help@corp.test", 1), ("billing@corp.test", 2), ("vip", 3), ("partners", 4),
        ("support fallback", 5)]
    refused(*await call(http, "POST", "/connectors/support/routes",
                        {"name": "x", "email_address": "help@corp.test", "order": 1}),
            "R-R5", "order")


@pytest.mark.parametrize("start,change", [("help@corp.test", {"email_address": "*"}),
                                          ("*", {"email_address": "help@corp.test"})])
async def test_r_r5_a_route_cannot_change_between_wildcard_and_address(http, start, change):
    route = await add_route(http, start, **wildcard("r"))
    message = refused(*await call(http, "PATCH", f"/routes/{route['id']}", change),
                      "R-R5", "email_address")
    assert "delete" in message
    refused(*await call(http, "PATCH", f"/routes/{route['id']}", {"order": 2}),
            "R-R5", "order")                # orders change by move only


async def test_r_r5_move_outside_the_band_names_its_orders(http):
    exact = [await add_route(http, a) for a in ("help@corp.test", "billing@corp.test")]
    wild = [await add_route(http, "*", **wildcard(f"w{n}")) for n in range(3)]
    message = refused(*await call(http, "POST", f"/routes/{wild[0]['id']}/move", {"order": 2}),
                      "R-R5", "order")
    assert "wildcard routes occupy orders 3–5" in message
    message = refused(*await call(http, "POST", f"/routes/{exact[0]['id']}/move", {"order": 6}),
                      "R-R5", "order")
    assert "non-wildcard routes occupy orders 1–2" in message


async def test_r_r5_move_within_the_band_shifts_the_others(http):
    wild = [await add_route(http, "*", **wildcard(f"w{n}")) for n in range(3)]
    await add_route(http, "help@corp.test")
    status, body = await call(http, "POST", f"/routes/{wild[2]['id']}/move", {"order": 2})
    assert status == 200 and body["order"] == 2
    assert [(r["name"], r["order"]) for r in await routes(http)] == [
        ("help@corp.test", 1), ("w2", 2), ("w0", 3), ("w1", 4), ("support fallback", 5)]


async def test_r_r6_search_is_starts_with_over_address_process_and_category(http):
    await add_route(http, "help@corp.test", target={"process": "Helpdesk"})
    await add_route(http, "billing@corp.test",
                    target={"process": "Finance", "ticket_category": "Invoices"})
    names = lambda found: sorted(r["name"] for r in found)  # noqa: E731
    assert names(await routes(http, q="help")) == ["help@corp.test"]
    assert names(await routes(http, q="INV")) == ["billing@corp.test"]
    assert names(await routes(http, q="fin")) == ["billing@corp.test"]
    assert names(await routes(http, q="support")) == ["support fallback"]
    assert names(await routes(http, q="elp")) == []


async def test_r_r7_the_fallback_cannot_be_deleted_disabled_given_rules_or_moved(http):
    fb = await fallback(http)
    path = f"/routes/{fb['id']}"
    refused(*await call(http, "DELETE", path), "R-R7", "fallback")
    refused(*await call(http, "PATCH", path, {"enabled": False}), "R-R7", "enabled")
    refused(*await call(http, "PATCH", path, {"rules": {"subject_keywords": "x"}}),
            "R-R7", "rules")
    refused(*await call(http, "POST", f"{path}/move", {"order": 1}), "R-R7", "order")
    refused(*await call(http, "PATCH", path, {"fallback": False}), "R-R7", "fallback")
    refused(*await call(http, "PATCH", path, {"connector": "sales"}), "R-R7", "connector")
    refused(*await call(http, "PATCH", path, {"email_address": "help@corp.test"}),
            "R-R7", "email_address")
    assert await fallback(http) == fb


async def test_r_r7_one_fallback_per_connector_addressed_primary_or_star(http):
    refused(*await call(http, "POST", "/connectors/support/routes",
                        {"name": "second", "email_address": "*", "fallback": True}),
            "R-R7", "fallback")
    route = await add_route(http, "help@corp.test")
    refused(*await call(http, "PATCH", f"/routes/{route['id']}", {"fallback": True}),
            "R-R7", "fallback")
    fb = await fallback(http)
    status, body = await call(http, "PATCH", f"/routes/{fb['id']}",
                              {"email_address": "*", "target": {"kind": "Case"}})
    assert status == 200 and body["email_address"] == "*" and body["order"] == 2


async def test_r_r8_a_route_to_a_vanished_process_is_flagged(gw, http):
    route = await add_route(http, "help@corp.test", target={"process": "Old"})
    await gw.ops.set_processes(["Helpdesk"])
    status, body = await call(http, "GET", f"/routes/{route['id']}")
    assert status == 200 and len(body["flags"]) == 1 and body["flags"][0].startswith("R-R8")


# -- contacts (R-R2 sender company) -----------------------------------------------------

async def test_r_r2_contacts_feed_the_sender_company_rule(gw, http):
    status, contact = await call(http, "POST", "/contacts",
                                 {"pattern": "*@Acme.test", "company": "ACME"})
    assert status == 201 and contact["pattern"] == "*@acme.test"
    await add_route(http, "help@corp.test", rules={"sender_companies": "ACME"},
                    target={"process": "Key accounts"})
    [copy] = await deliver(gw, mail(to=["help@corp.test"], sender="wile@acme.test"),
                           sender="wile@acme.test")
    assert copy.outcome == "created"
    refused(*await call(http, "POST", "/contacts", {"pattern": "acme.test", "company": "A"}),
            "R-R2", "pattern")
    assert (await call(http, "GET", "/contacts"))[1]["contacts"] == [contact]
    assert (await call(http, "DELETE", f"/contacts/{contact['id']}"))[0] == 204
    assert (await call(http, "DELETE", f"/contacts/{contact['id']}"))[0] == 404
    [copy] = await deliver(gw, mail(to=["help@corp.test"], sender="wile@acme.test"),
                           sender="wile@acme.test")
    assert (copy.outcome, copy.reason) == ("unprocessed", "alias_without_route")


# -- activity (R-C5) ------------------------------------------------------------------

async def test_r_c5_connector_update_is_recorded_old_to_new_without_the_password(http):
    await call(http, "PATCH", "/connectors/support",
               {"aliases": ["help@corp.test"], "password": SECRET},
               headers={"X-Mailgate-Actor": "alice@corp.test"})
    await call(http, "PATCH", "/connectors/support", {"enabled": False})
    *_, update, disable = await history(http, "connector:support")
    assert (update["action"], update["actor"]) == ("update", "alice@corp.test")
    assert update["changes"] == {"aliases": [["help@corp.test", "billing@corp.test"],
                                             ["help@corp.test"]],
                                 "password": ["***", "***"]}
    assert (disable["action"], disable["actor"], disable["changes"]) == \
        ("disable", "api", {"enabled": [True, False]})
    async with http.get("/api/v1/activity") as r:
        assert SECRET not in await r.text()


async def test_r_c5_route_update_and_move_are_recorded_old_to_new(http):
    first = await add_route(http, "*", **wildcard("w0"))
    second = await add_route(http, "*", **wildcard("w1"))
    await call(http, "PATCH", f"/routes/{first['id']}",
               {"rules": {"subject_keywords": "urgent"}, "target": {"process": "Ops"}})
    await call(http, "POST", f"/routes/{second['id']}/move", {"order": 1})
    create, update = await history(http, f"route:{first['id']}")
    assert create["action"] == "create" and create["changes"]["name"] == [None, "w0"]
    assert update["changes"] == {"rules.subject_keywords": ["", "urgent"],
                                 "target.process": ["", "Ops"]}
    *_, move = await history(http, f"route:{second['id']}")
    assert (move["action"], move["changes"]) == ("move", {"order": [2, 1]})
    assert (await call(http, "GET", f"/routes/{first['id']}"))[1]["order"] == 2


async def test_r_c5_activity_refuses_an_unknown_entity_and_a_bad_actor(http):
    status, body = await call(http, "GET", "/activity", params={"entity": "workitem:1-T"})
    assert status == 422 and body["error"]["field"] == "entity"
    status, body = await call(http, "PATCH", "/connectors/support", {"enabled": True},
                              headers={"X-Mailgate-Actor": "a" * 101})
    assert status == 422 and body["error"]["field"] == "X-Mailgate-Actor"


async def test_the_directory_api_needs_the_admin_token(gw):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}") as http:
        for path in ("/connectors/support/routes", "/contacts", "/activity", "/routes/1"):
            async with http.get(f"/api/v1{path}") as r:
                assert r.status == 401, path
                assert json.loads(await r.text())["error"]["code"] == "unauthorized"
