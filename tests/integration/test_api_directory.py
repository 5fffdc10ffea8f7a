"""HTTP: connectors, routes, contacts and their activity history (SPEC §1, §3.6, §5.3).

Every refusal is checked for its status, the rule id leading the message and the
field; mail is delivered over LMTP to show a change through the API is live at once.
"""
from __future__ import annotations

import json
import time

import aiohttp
import pytest

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from gateway import probe as connector_test
from gateway.config import BootstrapConnector
from gateway.protocols.mailbox import MailboxError
from tests.conftest import ADMIN_TOKEN, free_port, run_sql
from tests.e2e.helpers import WIRE, deliver, mail
from tests.wire import WireClient

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The test relay takes AUTH over plain TCP on loopback on purpose; aiosmtpd warns each time.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
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


@pytest.mark.parametrize("change", [{"smtp_host": "mx.attacker.test"},
                                    {"smtp_tls": "none"}])
async def test_r_c1_re_pointing_a_connector_needs_its_password_again(http, change):
    """The stored password goes where the connector points: moving it elsewhere without
    giving the password again would hand it to whoever runs the new server."""
    status, _ = await call(http, "POST", "/connectors", {
        "name": "billing", "primary_address": "billing@other.test", "direction": "both",
        "smtp_host": "smtp.other.test", "username": "bill", "password": SECRET})
    assert status == 201
    message = refused(*await call(http, "PATCH", "/connectors/billing", change),
                      "R-C1", "password")
    assert "would send the stored password to another server" in message
    status, body = await call(http, "PATCH", "/connectors/billing",
                              {**change, "password": SECRET})
    assert status == 200, body
    status, body = await call(http, "PATCH", "/connectors/billing", {"aliases": ["b@other.test"]})
    assert status == 200, body                                # other changes need nothing


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
    ({"service": "hotmail"}, "service", "invalid"),
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
    await run_sql(gw.settings.sqlite_path,        # a fallback lost to an old release's bug
                  "DELETE FROM routes WHERE connector = 'support' AND fallback = 1")
    refused(*await call(http, "PATCH", "/connectors/support", {"enabled": True}),
            "R-C2", "enabled")
    restored = await add_route(http, "support@corp.test", name="fallback again", fallback=True)
    assert restored["order"] == len(await routes(http))
    status, body = await call(http, "PATCH", "/connectors/support", {"enabled": True})
    assert status == 200 and body["enabled"] is True


async def test_r_c3_testing_an_lmtp_connector_has_nothing_to_connect_to(http):
    before = time.time()
    status, body = await call(http, "POST", "/connectors/support/test")
    assert status == 200 and body.pop("tested_at") >= before
    assert body == {"ok": True, "detail": "lmtp: mail is pushed; nothing to connect to"}
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



# -- polled connectors (R-C1 presets, R-I6, R-B5, R-C4, R-C3) -----------------------------

LOGIN = {"username": "desk@corp.test", "password": SECRET}
GRAPH = {"tenant_id": "contoso.onmicrosoft.com",
         "application_id": "11111111-2222-3333-4444-555555555555"}
CLIENT_SECRET = "graph-Cl13nt-s3cret~value"
CERT_PASSWORD = "pfx-Passw0rd-value"


async def create(http, service: str, **fields) -> tuple[int, dict]:
    """Disabled unless said: an enabled polled connector starts polling its real server."""
    return await call(http, "POST", "/connectors", {
        "name": "desk", "service": service, "primary_address": "desk@corp.test",
        "enabled": False, **fields})


@pytest.mark.parametrize("service,fields,expected", [
    ("gmail_imap", LOGIN, {"protocol": "imap", "host": "imap.gmail.com", "port": 993,
                           "tls": "implicit", "smtp_host": ""}),
    ("gmail_pop3", LOGIN, {"protocol": "pop3", "host": "pop.gmail.com", "port": 995}),
    ("o365_imap", {**LOGIN, "direction": "both"},
     {"protocol": "imap", "host": "outlook.office365.com", "port": 993,
      "smtp_host": "smtp.office365.com"}),
    ("o365_pop3", LOGIN, {"protocol": "pop3", "host": "outlook.office365.com",
                          "tls": "implicit", "port": 995}),
    ("o365_imap", {**LOGIN, "tls": "starttls"},             # a given tls is kept
     {"protocol": "imap", "host": "outlook.office365.com", "tls": "starttls", "port": 143}),
    ("o365_graph", {**GRAPH, "client_secret": CLIENT_SECRET},
     {"protocol": "graph", "host": "", "client_secret_set": True,
      "authority_host": "https://login.microsoftonline.com",
      "graph_base_url": "https://graph.microsoft.com/v1.0"}),
    ("other", {**LOGIN, "protocol": "imap", "host": "mail.corp.test", "tls": "starttls"},
     {"protocol": "imap", "host": "mail.corp.test", "port": 143, "tls": "starttls"}),
    ("other", {**LOGIN, "protocol": "pop3", "host": "mail.corp.test", "port": 1995},
     {"protocol": "pop3", "port": 1995, "tls": "implicit"}),
])
async def test_r_c1_each_service_is_created_with_its_preset(http, service, fields, expected):
    status, body = await create(http, service, **fields)
    assert status == 201, body
    assert {k: body[k] for k in expected} == expected
    assert body["folders"] == ["INBOX"] and body["poll_interval"] == 60
    assert body["start_from"] == "all" and body["keep_on_server"] is False
    assert body["tls_verify"] is True and body["warnings"] == []
    assert body == (await call(http, "GET", "/connectors/desk"))[1]


async def test_r_c1_an_lmtp_connector_has_no_poll_settings(http):
    status, body = await create(http, "lmtp")
    assert status == 201 and "host" not in body and "folders" not in body
    assert "client_secret_set" not in body and "warnings" not in body
    message = refused(*await create(http, "lmtp", name="other", primary_address="o@corp.test",
                                    host="mail.corp.test"), "R-C1", "host")
    assert "poll setting" in message
    refused(*await call(http, "PATCH", "/connectors/desk", {"folders": ["INBOX"]}),
            "R-C1", "folders")


@pytest.mark.parametrize("service,fields,rule,field", [
    ("other", {**LOGIN, "protocol": "imap"}, "R-C1", "host"),
    ("other", {**LOGIN, "host": "mail.corp.test"}, "R-C1", "protocol"),
    ("gmail_imap", {**LOGIN, "protocol": "pop3"}, "R-C1", "protocol"),
    ("lmtp", {"protocol": "imap"}, "R-C1", "protocol"),
    ("o365_graph", {"application_id": GRAPH["application_id"]}, "R-I6", "tenant_id"),
    ("o365_graph", {"tenant_id": GRAPH["tenant_id"]}, "R-I6", "application_id"),
    ("o365_graph", GRAPH, "R-I6", "client_secret"),
    ("o365_graph", {**GRAPH, "client_secret": "x", "certificate_file": "/etc/a.pfx"},
     "R-I6", "certificate_file"),
    ("o365_graph", {**GRAPH, "certificate_file": "/etc/key.pem"}, "R-I6",
     "certificate_thumbprint"),
    ("gmail_imap", {"username": "desk@corp.test"}, "R-C1", "password"),
    ("gmail_imap", {}, "R-C1", "username"),
    ("gmail_imap", {**LOGIN, "client_secret": "x"}, "R-I6", "client_secret"),
    ("gmail_pop3", {**LOGIN, "folders": ["INBOX", "Support"]}, "R-I5", "folders"),
    ("o365_graph", {**GRAPH, "client_secret": "x", "host": "graph.test"}, "R-C1", "host"),
    ("gmail_imap", {**LOGIN, **GRAPH}, "R-C1", "application_id"),
])
async def test_r_c1_r_i6_a_connector_that_cannot_work_is_refused(http, service, fields, rule,
                                                                 field):
    refused(*await create(http, service, enabled=True, **fields), rule, field)
    assert (await call(http, "GET", "/connectors/desk"))[0] == 404


async def test_r_c1_a_disabled_polled_connector_may_wait_for_its_credentials(http):
    nowhere = f"https://127.0.0.1:{free_port()}"           # the poller it starts fails fast
    status, body = await create(http, "o365_graph", **GRAPH, authority_host=nowhere,
                                graph_base_url=nowhere)
    assert status == 201 and body["client_secret_set"] is False
    refused(*await call(http, "PATCH", "/connectors/desk", {"enabled": True}),
            "R-I6", "client_secret")
    status, body = await call(http, "PATCH", "/connectors/desk",
                              {"enabled": True, "client_secret": CLIENT_SECRET})
    assert status == 200 and body["enabled"] and body["client_secret_set"], body


@pytest.mark.parametrize("field,value", [
    ("port", 0), ("port", 65536), ("port", "993"), ("tls", "ssl"), ("folders", []),
    ("folders", [""]), ("folders", ["x" * 256]), ("folders", ["INBOX\r\nA1 DELETE INBOX"]),
    ("folders", ["INBOX", "INBOX"]), ("folders", "INBOX"), ("poll_interval", 9),
    ("poll_interval", 86401), ("poll_interval", 60.5), ("poll_interval", True),
    ("host", "mail corp.test"), ("host", "mail.corp.test/x"),
    ("authority_host", "http://login.microsoftonline.com"),
    ("graph_base_url", "ftp://graph.microsoft.com"), ("start_from", "yesterday"),
    ("tls_verify", "no"), ("keep_on_server", 1), ("application_id", "my-app"),
    ("tenant_id", "contoso tenant"), ("certificate_thumbprint", "abc123"),
    ("shared_mailbox", "x\ny"), ("client_secret", 42),
])
async def test_r_c1_poll_settings_are_checked_naming_the_field(http, field, value):
    message = refused(*await create(http, "gmail_imap", **LOGIN, **{field: value}), "R-C1",
                      field, code="invalid")
    assert f"{field} must be " in message


async def test_r_c1_secrets_are_never_returned_and_masked_in_the_history(http):
    status, body = await create(http, "o365_graph", **GRAPH, client_secret=CLIENT_SECRET)
    assert status == 201 and body["client_secret_set"] is True
    assert body["certificate_password_set"] is False
    status, body = await call(http, "PATCH", "/connectors/desk", {
        "client_secret": None, "certificate_file": "/etc/mailgate/graph.pfx",
        "certificate_password": CERT_PASSWORD})
    assert status == 200, body
    assert (body["client_secret_set"], body["certificate_password_set"]) == (False, True)
    for path in ("/connectors", "/connectors/desk", "/activity",
                 "/activity?entity=connector:desk"):
        async with http.get(f"/api/v1{path}") as r:
            text = await r.text()
            assert r.status == 200 and CLIENT_SECRET not in text and CERT_PASSWORD not in text
    create_line, update = await history(http, "connector:desk")
    assert create_line["changes"]["client_secret"] == ["***", "***"]
    assert update["changes"]["client_secret"] == ["***", "***"]        # changed, unsaid
    assert update["changes"]["certificate_password"] == ["***", "***"]


async def test_r_c4_turning_certificate_checks_off_is_accepted_and_said(http):
    status, body = await create(http, "gmail_imap", **LOGIN, tls_verify=False)
    assert status == 201 and body["tls_verify"] is False
    [warning] = body["warnings"]
    assert warning.startswith("R-C4: tls_verify is false")
    status, body = await call(http, "PATCH", "/connectors/desk", {"tls_verify": True})
    assert status == 200 and body["warnings"] == []


async def test_r_c1_a_new_service_refills_what_the_old_preset_filled(http):
    await create(http, "gmail_imap", **LOGIN, direction="both")
    again = {"password": LOGIN["password"]}         # moving servers: the password again
    status, body = await call(http, "PATCH", "/connectors/desk",
                              {"service": "o365_imap", **again})
    assert status == 200, body
    assert (body["host"], body["port"], body["smtp_host"]) == \
        ("outlook.office365.com", 993, "smtp.office365.com")
    status, body = await call(http, "PATCH", "/connectors/desk", {"tls": "starttls", **again})
    assert (body["tls"], body["port"]) == ("starttls", 143)        # the port follows tls
    status, body = await call(http, "PATCH", "/connectors/desk",
                              {"service": "other", "host": "imap.corp.test", "port": 1143,
                               **again})
    assert status == 200 and body["protocol"] == "imap", body      # 'other' keeps imap
    assert (body["host"], body["port"]) == ("imap.corp.test", 1143)
    status, body = await call(http, "PATCH", "/connectors/desk",
                              {"service": "gmail_imap", **again})
    assert (body["host"], body["port"]) == ("imap.corp.test", 1143)   # the admin's stay
    refused(*await call(http, "PATCH", "/connectors/desk", {"protocol": "pop3"}),
            "R-C1", "protocol")
    status, body = await call(http, "PATCH", "/connectors/desk", {"service": "lmtp"})
    assert status == 200 and body["protocol"] == "lmtp" and "host" not in body


# -- R-C3: test, and the refusal to enable after a failed test ------------------------------

async def closed_imap(http, **fields) -> dict:
    status, body = await create(http, "other", protocol="imap", host="127.0.0.1",
                                port=free_port(), tls="none", **LOGIN, **fields)
    assert status == 201, body
    return body


async def test_r_c3_a_failed_test_reports_the_os_error_and_blocks_enabling(gw, http):
    await closed_imap(http)
    status, body = await call(http, "POST", "/connectors/desk/test")
    assert status == 200 and body["ok"] is False, body
    assert body["detail"].startswith("imap: ") and "Errno 111" in body["detail"], body
    assert SECRET not in body["detail"]
    message = refused(*await call(http, "PATCH", "/connectors/desk", {"enabled": True}),
                      "R-C3", "enabled")
    assert "Errno 111" in message and '"force": true' in message
    assert not (await call(http, "GET", "/connectors/desk"))[1]["enabled"]
    status, body = await call(http, "PATCH", "/connectors/desk", {"enabled": True,
                                                                  "force": True})
    assert status == 200 and body["enabled"] is True
    assert [a["action"] for a in await history(http, "connector:desk")] == ["create",
                                                                           "enable"]


async def test_r_c3_a_passing_test_lifts_the_refusal(gw, http, monkeypatch):
    await closed_imap(http)
    assert (await call(http, "POST", "/connectors/desk/test"))[1]["ok"] is False
    seen = []

    class Fine:
        async def test(self) -> str:
            return "imap: logged in; INBOX holds 3 message(s)"

    def fake(connector, credentials, **options):
        seen.append(credentials)
        return Fine()
    monkeypatch.setattr(connector_test, "open_mailbox", fake)
    status, body = await call(http, "POST", "/connectors/desk/test")
    assert (status, body["ok"], body["detail"]) == \
        (200, True, "imap: logged in; INBOX holds 3 message(s)")
    assert (seen[0].username, seen[0].password) == ("desk@corp.test", SECRET)
    status, body = await call(http, "PATCH", "/connectors/desk", {"enabled": True})
    assert status == 200 and body["enabled"] is True


async def test_r_c3_the_servers_own_words_are_the_detail(gw, http, monkeypatch):
    await closed_imap(http)

    class Refusing:
        async def test(self) -> str:
            raise MailboxError("NO [AUTHENTICATIONFAILED] Authentication failed.")
    monkeypatch.setattr(connector_test, "open_mailbox", lambda *a, **k: Refusing())
    status, body = await call(http, "POST", "/connectors/desk/test")
    assert (status, body["ok"], body["detail"]) == \
        (200, False, "imap: NO [AUTHENTICATIONFAILED] Authentication failed.")


async def test_r_c3_never_tested_may_be_enabled_and_a_deleted_namesakes_test_is_gone(http):
    await closed_imap(http)
    status, body = await call(http, "PATCH", "/connectors/desk", {"enabled": True})
    assert status == 200 and body["enabled"] is True           # never tested
    await call(http, "PATCH", "/connectors/desk", {"enabled": False})
    assert (await call(http, "POST", "/connectors/desk/test"))[1]["ok"] is False
    assert (await call(http, "DELETE", "/connectors/desk"))[0] == 204
    await closed_imap(http)
    status, body = await call(http, "PATCH", "/connectors/desk", {"enabled": True})
    assert status == 200 and body["enabled"] is True


async def test_r_c3_an_outgoing_connector_is_tested_with_ehlo_and_auth(http):
    def authenticate(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=auth_data.password == SECRET.encode(), handled=False)

    relay = Controller(object(), hostname="127.0.0.1", port=free_port(), auth_required=True,
                       auth_require_tls=False, authenticator=authenticate)
    relay.start()
    try:
        base = {"direction": "outgoing", "smtp_host": "127.0.0.1", "smtp_port": relay.port,
                "smtp_tls": "none", "username": "desk"}
        await create(http, "lmtp", **base, password=SECRET)
        status, body = await call(http, "POST", "/connectors/desk/test")
        assert (status, body["ok"]) == (200, True), body
        assert body["detail"] == (f"smtp: 127.0.0.1:{relay.port} answered EHLO; "
                                  "AUTH as desk accepted")
        await call(http, "PATCH", "/connectors/desk", {"password": "wrong"})
        status, body = await call(http, "POST", "/connectors/desk/test")
        assert (status, body["ok"]) == (200, False), body
        assert body["detail"].startswith("smtp: 535 "), body
    finally:
        relay.stop()

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
    await gw.directory_ops.set_processes(["Helpdesk"])
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
