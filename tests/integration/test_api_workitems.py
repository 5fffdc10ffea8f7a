"""HTTP: the work-item endpoints (SPEC §5.3, R-W1..R-W3) and agent mail (R-O6)."""
from __future__ import annotations

import re
from datetime import datetime

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.wire import WireClient, message

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
R_W1_FIELDS = {"ref", "kind", "uuid", "connector", "mode", "state", "wait_type", "new_info",
               "parent", "split_into", "merged_into", "converted_to", "linked", "copied_from",
               "contacts", "custom_data", "send_automated_emails", "created_at", "updated_at"}


@pytest.fixture
async def http(gateway):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}",
                                     headers=AUTH) as session:
        yield session


async def call(http, method: str, path: str, body=None, **kwargs) -> tuple[int, dict]:
    async with http.request(method, f"/api/v1{path}", json=body, **kwargs) as r:
        return r.status, await r.json()


async def create(http, **fields) -> dict:
    fields.setdefault("kind", "Ticket")
    fields.setdefault("connector", "support")
    status, body = await call(http, "POST", "/workitems", fields)
    assert status == 201, body
    return body


def refused(status: int, body: dict, rule: str, field: str | None) -> None:
    """A refused change: 422, the rule id leading the message, the field named."""
    assert status == 422, body
    error = body["error"]
    assert error["code"] == "rule_violation"
    assert error["message"].startswith(f"{rule}: "), error
    assert error["field"] == field, error


async def deliver(gateway, raw: bytes, rcpt: str = "support@example.test") -> None:
    client = await WireClient.connect(gateway.listeners["lmtp"].port)
    await client.command("LHLO test")
    _, replies = await client.transaction("alice@customer.test", [rcpt], raw)
    await client.close()
    assert [r.code for r in replies] == [250]
    await gateway.pipeline.drain()


# -- create, read, list (R-W1, R-W3) ------------------------------------------------------

async def test_r_w3_create_answers_every_r_w1_field_with_the_ref(http):
    item = await create(http, contacts=["Carol@Customer.test"], custom_data={"contract": "C-1"},
                        send_automated_emails=True)
    assert set(item) == R_W1_FIELDS
    assert re.fullmatch(r"[1-9][0-9]*-T", item["ref"]) and len(item["uuid"]) == 36
    assert (item["kind"], item["connector"], item["mode"], item["state"]) == \
        ("Ticket", "support", "live", "TO_DO")
    assert item["contacts"] == ["Carol@Customer.test"]
    assert item["custom_data"] == {"contract": "C-1"} and item["send_automated_emails"] is True
    assert datetime.fromisoformat(item["created_at"]).utcoffset().total_seconds() == 0
    status, again = await call(http, "GET", f"/workitems/{item['ref']}")
    assert status == 200 and again == item
    number = item["ref"].split("-")[0]
    status, padded = await call(http, "GET", f"/workitems/00{number}-T")   # R-W1 canonical
    assert status == 200 and padded["ref"] == item["ref"]


async def test_r_w1_numbers_come_from_one_sequence_for_every_kind(http):
    ticket = await create(http)
    case = await create(http, kind="Case", state="WAITING", wait_type="other")
    action = await create(http, kind="Action", parent=case["ref"], mode="live")
    numbers = [int(i["ref"].split("-")[0]) for i in (ticket, case, action)]
    assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2]
    assert case["ref"].endswith("-C") and case["wait_type"] == "other"
    assert action["ref"].endswith("-A") and action["parent"] == case["ref"]


@pytest.mark.parametrize("body,code,field", [
    ({"kind": "Ticket"}, "missing_field", "connector"),
    ({"connector": "support"}, "missing_field", "kind"),
    ({"kind": "Ticket", "connector": "nope"}, "invalid", "connector"),
    ({"kind": "Ticket", "connector": 7}, "invalid", "connector"),
    ({"kind": 1, "connector": "support"}, "invalid", "kind"),
    ({"kind": "Ticket", "connector": "support", "colour": "red"}, "unknown_field", "colour"),
    ({"kind": "Ticket", "connector": "support", "custom_data": [1]}, "invalid", "custom_data"),
    ({"kind": "Ticket", "connector": "support", "contacts": "a@b.test"}, "invalid", "contacts"),
    ({"kind": "Ticket", "connector": "support", "contacts": ["a@b.test, c@d.test"]},
     "invalid", "contacts"),
    ({"kind": "Ticket", "connector": "support", "send_automated_emails": "yes"},
     "invalid", "send_automated_emails"),
    ({"kind": "Ticket", "connector": "support", "parent": 12}, "invalid", "parent"),
    ({"kind": "Ticket", "connector": "support", "parent": "999999-T"}, "unknown_ref", "parent"),
])
async def test_r_w1_create_validates_the_body_naming_the_field(http, body, code, field):
    status, answer = await call(http, "POST", "/workitems", body)
    assert status == 422, answer
    assert answer["error"]["code"] == code and answer["error"]["field"] == field
    assert answer["error"]["message"].startswith("R-W1: ")


@pytest.mark.parametrize("fields,rule,field", [
    ({"kind": "Bug"}, "R-W1", "kind"),
    ({"mode": "staging"}, "R-W1", "mode"),
    ({"state": "OPEN"}, "R-W2", "state"),
    ({"state": "WAITING"}, "R-W2", "wait_type"),
    ({"state": "TO_DO", "wait_type": "other"}, "R-W2", "wait_type"),
])
async def test_r_w1_r_w2_create_refuses_unknown_values_with_the_rule_id(http, fields, rule, field):
    status, body = await call(http, "POST", "/workitems", {"kind": "Ticket",
                                                           "connector": "support", **fields})
    refused(status, body, rule, field)


async def test_malformed_json_and_non_objects_are_400(http):
    for data in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        async with http.post("/api/v1/workitems", data=data,
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] in (
                "invalid_json", "invalid_body")


async def test_workitems_need_the_bearer_token(gateway):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as anonymous:
        async with anonymous.get("/api/v1/workitems") as r:
            assert r.status == 401


async def test_list_filters_by_connector_state_and_mode(http):
    a = await create(http)
    b = await create(http, connector="sales", state="IN_PROGRESS")
    c = await create(http, connector="sales", mode="test")

    async def refs(**query) -> list[str]:
        status, body = await call(http, "GET", "/workitems", params=query)
        assert status == 200, body
        return [i["ref"] for i in body["workitems"]]

    assert await refs() == [a["ref"], b["ref"], c["ref"]]
    assert await refs(connector="sales") == [b["ref"], c["ref"]]
    assert await refs(connector="sales", state="IN_PROGRESS") == [b["ref"]]
    assert await refs(mode="test") == [c["ref"]]
    assert await refs(limit="1") == [a["ref"]]
    for query, field in (({"limit": "1001"}, "limit"), ({"limit": "0"}, "limit"),
                         ({"limit": "x"}, "limit"), ({"state": "OPEN"}, "state"),
                         ({"mode": "prod"}, "mode"), ({"kind": "Ticket"}, "kind")):
        status, body = await call(http, "GET", "/workitems", params=query)
        assert status == 422 and body["error"]["field"] == field, (query, body)


# -- R-W2: parents and RESOLVED -------------------------------------------------------------

async def test_r_w2_action_without_parent_case_is_refused_with_the_rule_id(http):
    refused(*await call(http, "POST", "/workitems", {"kind": "Action", "connector": "support"}),
            "R-W2", "parent")
    ticket = await create(http)
    refused(*await call(http, "POST", "/workitems", {"kind": "Action", "connector": "support",
                                                     "parent": ticket["ref"]}), "R-W2", "parent")


async def test_r_w2_parent_kinds_and_modes_over_http(http):
    ticket, case = await create(http), await create(http, kind="Case")
    assert (await create(http, parent=ticket["ref"]))["parent"] == ticket["ref"]
    assert (await create(http, kind="Case", parent=ticket["ref"]))["parent"] == ticket["ref"]
    assert (await create(http, kind="Case", parent=case["ref"]))["parent"] == case["ref"]
    refused(*await call(http, "POST", "/workitems", {"kind": "Ticket", "connector": "support",
                                                     "parent": case["ref"]}), "R-W2", "parent")
    refused(*await call(http, "POST", "/workitems", {"kind": "Ticket", "connector": "support",
                                                     "parent": ticket["ref"], "mode": "test"}),
            "R-W2", "parent")


async def test_r_w2_only_tickets_and_cases_can_be_resolved(http):
    case = await create(http, kind="Case")
    action = await create(http, kind="Action", parent=case["ref"])
    refused(*await call(http, "POST", f"/workitems/{action['ref']}/transition",
                        {"state": "RESOLVED"}), "R-W2", "state")
    for item in (case, await create(http)):
        status, body = await call(http, "POST", f"/workitems/{item['ref']}/transition",
                                  {"state": "RESOLVED"})
        assert status == 200 and body["state"] == "RESOLVED"


async def test_r_w3_transition_with_wait_type(http):
    ref = (await create(http))["ref"]
    refused(*await call(http, "POST", f"/workitems/{ref}/transition", {"state": "WAITING"}),
            "R-W2", "wait_type")
    status, body = await call(http, "POST", f"/workitems/{ref}/transition",
                              {"state": "WAITING", "wait_type": "more_info"})
    assert status == 200 and (body["state"], body["wait_type"]) == ("WAITING", "more_info")
    status, body = await call(http, "POST", f"/workitems/{ref}/transition", {"wait_type": None})
    assert status == 422 and body["error"]["field"] == "state"


async def test_r_w3_set_parent_and_clear_it_refusing_cycles(http):
    parent, child = await create(http), await create(http)
    status, body = await call(http, "POST", f"/workitems/{child['ref']}/parent",
                              {"parent": parent["ref"]})
    assert status == 200 and body["parent"] == parent["ref"]
    refused(*await call(http, "POST", f"/workitems/{parent['ref']}/parent",
                        {"parent": child["ref"]}), "R-W2", "parent")
    status, body = await call(http, "POST", f"/workitems/{child['ref']}/parent", {"parent": None})
    assert status == 200 and body["parent"] is None
    case = await create(http, kind="Case")
    action = await create(http, kind="Action", parent=case["ref"])
    refused(*await call(http, "POST", f"/workitems/{action['ref']}/parent", {"parent": None}),
            "R-W2", "parent")


# -- R-W3: split, merge, convert, link --------------------------------------------------------

async def test_r_w3_split_over_http_answers_the_children_and_resolves_the_ticket(http):
    ticket = await create(http, contacts=["carol@customer.test"])
    status, body = await call(http, "POST", f"/workitems/{ticket['ref']}/split", {"children": 2})
    assert status == 201, body
    children = body["children"]
    assert [c["kind"] for c in children] == ["Ticket", "Ticket"]
    assert all(c["parent"] == ticket["ref"] and c["contacts"] == ["carol@customer.test"]
               for c in children)
    _, original = await call(http, "GET", f"/workitems/{ticket['ref']}")
    assert original["state"] == "RESOLVED"
    assert original["split_into"] == [c["ref"] for c in children]


async def test_r_w3_split_of_a_non_ticket_or_a_bad_count_is_refused(http):
    case = await create(http, kind="Case")
    refused(*await call(http, "POST", f"/workitems/{case['ref']}/split", {"children": 2}),
            "R-W3", None)
    ticket = await create(http)
    refused(*await call(http, "POST", f"/workitems/{ticket['ref']}/split", {"children": 0}),
            "R-W3", "children")
    for bad in ("2", True, 1.5, None):
        status, body = await call(http, "POST", f"/workitems/{ticket['ref']}/split",
                                  {"children": bad})
        assert status == 422 and body["error"]["field"] == "children", bad


async def test_r_w3_merge_resolves_the_source_into_the_target(http):
    source = await create(http, contacts=["carol@customer.test"])
    target = await create(http, contacts=["dave@customer.test"])
    status, body = await call(http, "POST", f"/workitems/{source['ref']}/merge",
                              {"into": target["ref"]})
    assert status == 200 and body["ref"] == target["ref"]
    assert body["contacts"] == ["dave@customer.test", "carol@customer.test"]
    _, merged = await call(http, "GET", f"/workitems/{source['ref']}")
    assert (merged["state"], merged["merged_into"]) == ("RESOLVED", target["ref"])


async def test_r_w3_merge_across_modes_or_into_itself_is_refused(http):
    live, test = await create(http), await create(http, mode="test")
    refused(*await call(http, "POST", f"/workitems/{live['ref']}/merge", {"into": test["ref"]}),
            "R-W3", None)
    refused(*await call(http, "POST", f"/workitems/{live['ref']}/merge", {"into": live["ref"]}),
            "R-W3", "into")
    status, body = await call(http, "POST", f"/workitems/{live['ref']}/merge",
                              {"into": "999999-T"})
    assert status == 422 and body["error"] == {**body["error"], "code": "unknown_ref",
                                               "field": "into"}


async def test_r_w3_convert_answers_the_case(http):
    ticket = await create(http, state="IN_PROGRESS", custom_data={"k": 1})
    status, case = await call(http, "POST", f"/workitems/{ticket['ref']}/convert")
    assert status == 201 and case["kind"] == "Case" and case["ref"].endswith("-C")
    assert (case["state"], case["custom_data"]) == ("IN_PROGRESS", {"k": 1})
    _, converted = await call(http, "GET", f"/workitems/{ticket['ref']}")
    assert (converted["state"], converted["converted_to"]) == ("RESOLVED", case["ref"])
    refused(*await call(http, "POST", f"/workitems/{case['ref']}/convert", {}), "R-W3", None)
    status, body = await call(http, "POST", f"/workitems/{ticket['ref']}/convert", {"x": 1})
    assert status == 422 and body["error"]["field"] == "x"


async def test_r_w3_link_is_symmetric_and_refuses_itself(http):
    a, b = await create(http), await create(http, kind="Case")
    status, body = await call(http, "POST", f"/workitems/{a['ref']}/link", {"ref": b["ref"]})
    assert status == 200 and body["linked"] == [b["ref"]]
    _, other = await call(http, "GET", f"/workitems/{b['ref']}")
    assert other["linked"] == [a["ref"]]
    refused(*await call(http, "POST", f"/workitems/{a['ref']}/link", {"ref": a["ref"]}),
            "R-W3", "ref")
    status, body = await call(http, "POST", f"/workitems/{a['ref']}/link", {"ref": "0-X"})
    assert status == 422 and body["error"]["code"] == "unknown_ref"


@pytest.mark.parametrize("method,path,body", [
    ("GET", "", None),
    ("POST", "/transition", {"state": "TO_DO"}),
    ("POST", "/split", {"children": 1}),
    ("POST", "/merge", {"into": "1-T"}),
    ("POST", "/convert", None),
    ("POST", "/link", {"ref": "1-T"}),
    ("POST", "/parent", {"parent": None}),
    ("GET", "/emails", None),
    ("POST", "/emails", {"to": ["a@b.test"], "subject": "s", "body": "b"}),
])
async def test_unknown_ref_in_the_path_is_404(http, method, path, body):
    await create(http)          # 1-T exists, so only the path's ref is unknown
    for ref in ("999999-T", "not-a-ref"):
        status, answer = await call(http, method, f"/workitems/{ref}{path}", body)
        assert status == 404 and answer["error"]["field"] == "ref", (ref, answer)


# -- R-O6 and the item's communications ----------------------------------------------------

async def test_r_o6_agent_send_appends_outgoing_mail(http):
    ref = (await create(http))["ref"]
    status, sent = await call(http, "POST", f"/workitems/{ref}/emails",
                              {"to": ["carol@customer.test"], "cc": ["dave@customer.test"],
                               "subject": "Which printer?", "body": "Tell us the model."})
    assert status == 202, sent
    assert isinstance(sent["id"], int) and sent["message_id"].startswith("<")
    status, body = await call(http, "GET", f"/workitems/{ref}/emails")
    assert status == 200
    [mail] = body["emails"]
    assert (mail["id"], mail["message_id"]) == (sent["id"], sent["message_id"])
    assert (mail["direction"], mail["subject"]) == ("outgoing", "Which printer?")
    assert mail["envelope"]["rcpt_to"] == ["carol@customer.test", "dave@customer.test"]


@pytest.mark.parametrize("body,field", [
    ({"subject": "s", "body": "b"}, "to"),
    ({"to": [], "subject": "s", "body": "b"}, "to"),
    ({"to": ["carol@customer.test\r\nBcc: x@evil.test"], "subject": "s", "body": "b"}, "to"),
    ({"to": ["jösé@b.test"], "subject": "s", "body": "b"}, "to"),
    ({"to": ["Carol <carol@customer.test>"], "subject": "s", "body": "b"}, "to"),
    ({"to": ["a@b.test"], "cc": "c@d.test", "subject": "s", "body": "b"}, "cc"),
    ({"to": ["a@b.test"], "subject": "s", "body": "b", "in_reply_to": "<x>\r\nBcc: y@z"},
     "in_reply_to"),
    ({"to": ["a@b.test"], "body": "b"}, "subject"),
    ({"to": ["a@b.test"], "subject": "s", "body": 5}, "body"),
    ({"to": ["a@b.test"], "subject": "s", "body": "b", "attachments": "invoice.pdf"}, "attachments"),
])
async def test_r_o6_agent_send_validates_the_body(http, body, field):
    ref = (await create(http))["ref"]
    status, answer = await call(http, "POST", f"/workitems/{ref}/emails", body)
    assert status == 422 and answer["error"]["field"] == field, answer
    assert answer["error"]["message"].startswith("R-O6: ")


async def test_r_o6_send_for_an_item_whose_connector_was_deleted_is_a_conflict(http):
    ref = (await create(http, connector="sales"))["ref"]
    async with http.delete("/api/v1/connectors/sales") as r:
        assert r.status == 204
    status, body = await call(http, "POST", f"/workitems/{ref}/emails",
                              {"to": ["a@b.test"], "subject": "s", "body": "b"})
    assert status == 409 and body["error"]["field"] == "connector", body
    status, _ = await call(http, "GET", f"/workitems/{ref}")
    assert status == 200                  # its work items stay (delete_connector)


async def test_r_o6_mail_over_lmtp_and_the_reply_show_up_on_the_item(gateway, http):
    await deliver(gateway, message(subject="Printer on fire", message_id="<wi-1@customer.test>"))
    _, found = await call(http, "GET", "/emails", params={"message_id": "<wi-1@customer.test>"})
    [incoming] = found["emails"]
    [target] = incoming["targets"]
    assert target["action"] == "created"
    ref = target["ref"]
    _, sent = await call(http, "POST", f"/workitems/{ref}/emails",
                         {"to": ["alice@customer.test"], "subject": "Re: Printer on fire",
                          "body": "Unplug it.", "in_reply_to": "<wi-1@customer.test>"})
    reply = message(subject="Re: Printer on fire", message_id="<wi-2@customer.test>",
                    body="Done, thanks.\r\n").replace(
        b"Message-ID:", f"In-Reply-To: {sent['message_id']}\r\nMessage-ID:".encode())
    await deliver(gateway, reply)
    status, body = await call(http, "GET", f"/workitems/{ref}/emails")
    assert status == 200
    assert [(e["direction"], e["message_id"]) for e in body["emails"]] == [
        ("incoming", "<wi-1@customer.test>"), ("outgoing", sent["message_id"]),
        ("incoming", "<wi-2@customer.test>")]
    assert body["emails"][2]["targets"] == [{"ref": ref, "action": "appended"}]
    _, item = await call(http, "GET", f"/workitems/{ref}")
    assert item["new_info"] is True


async def test_r_o6_agent_send_with_an_attachment_over_http(gateway):
    import base64
    import email
    from email import policy

    import aiohttp
    from tests.conftest import ADMIN_TOKEN
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    item = await gateway.create_workitem(kind="Ticket", connector="support")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        async with http.post(f"/api/v1/workitems/{item.ref}/emails", headers=auth, json={
                "to": ["carol@customer.test"], "subject": "The invoice", "body": "Attached.",
                "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf",
                                 "content_base64": base64.b64encode(b"%PDF-1.4 x").decode()}]}
                             ) as r:
            sent = await r.json()
        assert r.status == 202
        async with http.post(f"/api/v1/workitems/{item.ref}/emails", headers=auth, json={
                "to": ["carol@customer.test"], "subject": "x", "body": "y",
                "attachments": [{"filename": "a", "content_type": "text/plain",
                                 "content_base64": "not base64!"}]}) as r:
            assert r.status == 422 and (await r.json())["error"]["field"] == "attachments"
    message = email.message_from_bytes(await gateway.store.raw(sent["id"]),
                                       policy=policy.default)
    [part] = list(message.iter_attachments())
    assert part.get_filename() == "invoice.pdf" and part.get_content() == b"%PDF-1.4 x"
