"""Microsoft Graph mailboxes end to end (R-I4..R-I6, R-B5) against a local fake Graph.

The fake speaks the real endpoints over HTTPS with a test CA; msal gets its
tokens from the fake's token endpoint. The gateway polls it through its
configured authority and Graph base URL, exactly as it would Microsoft's.
"""
from __future__ import annotations

import time

import pytest

from gateway.model import Route, RouteTarget
from tests.e2e.helpers import WIRE, copies, mail, poll
from tests.graph_fake import MAILBOX, SECRET, GraphFake

pytestmark = pytest.mark.timeout(120)


async def graph_gateway(start_gateway, fake: GraphFake, **fields):
    gw = await start_gateway(connectors=[])
    fields.setdefault("poll_interval", 3600)
    await gw.add_connector(fake.connector(**fields), secrets={"client_secret": SECRET})
    return gw


def put(fake: GraphFake, message, folder: str = "Inbox") -> str:
    return fake.add_message(message.as_bytes(policy=WIRE), folder=folder)


async def test_r_i5_graph_folders_by_path_are_routed_and_deleted_after_commit(
        start_gateway, graph_fake):
    graph_fake.add_folder("Inbox/Billing")
    gw = await graph_gateway(start_gateway, graph_fake, folders=("Inbox", "Inbox/Billing"))
    await gw.add_route(Route(id=0, name="billing", connector="o365", email_address=MAILBOX,
                             order=0, folder_path="Inbox/Billing",
                             target=RouteTarget(kind="Case")))
    question, invoice = mail(to=(MAILBOX,), subject="Hello"), mail(to=(MAILBOX,),
                                                                  subject="Invoice")
    put(graph_fake, question)
    put(graph_fake, invoice, "Inbox/Billing")

    status = await poll(gw, "o365")

    assert status.state == "ok", status.last_error
    [q], [i] = await copies(gw, question), await copies(gw, invoice)
    assert (q.source, q.folder_path, q.targets[0]["ref"][-1]) == ("graph", "Inbox", "T")
    assert (i.folder_path, i.targets[0]["ref"][-1]) == ("Inbox/Billing", "C")
    assert await gw.store.raw(q.id) == question.as_bytes(policy=WIRE)
    assert graph_fake.ids("Inbox") == [] and graph_fake.ids("Inbox/Billing") == []
    fetched = {r.path.rsplit("/", 2)[1]: r.answered for r in graph_fake.graph_requests
               if r.method == "GET" and r.path.endswith("/$value")}
    deleted = {r.path.rsplit("/", 1)[1]: r.time for r in graph_fake.graph_requests
               if r.method == "DELETE"}
    assert len(deleted) == 2 and set(deleted) == set(fetched)
    assert all(deleted[m] > fetched[m] for m in deleted)   # each removed after its fetch


async def test_r_i6_paging_throttling_and_at_most_four_requests_in_flight(
        start_gateway, graph_fake):
    graph_fake.max_page_size = 3
    graph_fake.latency = 0.05
    messages = [mail(to=(MAILBOX,), subject=f"Paged {n}") for n in range(10)]
    for message in messages:
        put(graph_fake, message)
    graph_fake.fail_next(2, 429, retry_after="1", path_contains="$value")
    started = time.monotonic()
    gw = await graph_gateway(start_gateway, graph_fake)

    status = await poll(gw, "o365")

    assert status.state == "ok", status.last_error
    assert status.fetched_total == 10
    for message in messages:
        [copy] = await copies(gw, message)
        assert copy.outcome == "created"
    assert time.monotonic() - started >= 1.0                # Retry-After honoured
    throttled = [r for r in graph_fake.graph_requests if r.status == 429]
    assert len(throttled) == 2
    assert 1 < graph_fake.max_in_flight <= 4
    lists = [r for r in graph_fake.graph_requests if r.path.endswith("/messages")]
    assert len(lists) >= 4                                   # 10 messages, 3 per page


async def test_r_i6_an_expired_token_is_refreshed_and_the_round_succeeds(
        start_gateway, graph_fake):
    gw = await graph_gateway(start_gateway, graph_fake)
    await poll(gw, "o365")
    tokens_before = len(graph_fake.token_requests)
    graph_fake.revoke_tokens()                               # Graph now answers 401
    message = mail(to=(MAILBOX,), subject="After the token expired")
    put(graph_fake, message)

    status = await poll(gw, "o365")

    assert status.state == "ok", status.last_error
    [copy] = await copies(gw, message)
    assert copy.outcome == "created"
    assert len(graph_fake.token_requests) == tokens_before + 1
    assert any(r.status == 401 for r in graph_fake.graph_requests)


async def test_r_b5_graph_start_from_now_and_keep_on_server(start_gateway, graph_fake):
    old = mail(to=(MAILBOX,), subject="Old news")
    old_id = put(graph_fake, old)
    gw = await graph_gateway(start_gateway, graph_fake, start_from="now", keep_on_server=True)
    await poll(gw, "o365")
    new = mail(to=(MAILBOX,), subject="New question")
    new_id = put(graph_fake, new)

    await poll(gw, "o365")
    await poll(gw, "o365")

    assert await copies(gw, old) == []
    [copy] = await copies(gw, new)
    assert copy.outcome == "created"
    assert sorted(graph_fake.ids("Inbox")) == sorted([old_id, new_id])
    assert graph_fake.message(new_id).is_read and not graph_fake.message(old_id).is_read


async def test_r_c4_graph_with_an_untrusted_certificate_fails_and_reports(start_gateway,
                                                                          graph_fake):
    message = mail(to=(MAILBOX,), subject="Stays")
    put(graph_fake, message)
    gw = await graph_gateway(start_gateway, graph_fake, ca_file=graph_fake.stranger_ca_file)

    status = await gw.pollers.poll("o365")

    assert status.state == "failing"
    assert "certificate verify failed" in status.last_error.lower()
    assert len(graph_fake.ids("Inbox")) == 1
    assert await copies(gw, message) == []
