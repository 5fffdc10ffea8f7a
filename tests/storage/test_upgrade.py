"""Upgrade in place: a database written by the previous release opens, reads and works.

``fixtures/release-0.1.0.sql`` was produced by the release before the storage
move (aiosqlite, ``storage/sqlite.py``), through the gateway's own API: two LMTP
connectors ``fr``/``ma`` with acknowledging fallbacks, a disabled IMAP connector
``mbox`` with credentials added by actor ``alice``, a route ``billing`` on ``fr``
(subject keyword ``invoice`` → Case), a contact ``*@customer.test``, four LMTP
mails (a request, its reply, an invoice, an auto-reply), an agent mail on the
first ticket, that ticket resolved, one polled copy journaled with a poll key,
and ``matching_mode=mixed``. It is ``sqlite3``'s ``iterdump()`` of that database
with a leading ``PRAGMA user_version``.

It is a record of what an installed release wrote. Never regenerate it with the
current code: a fixture written by the code under test proves nothing about
upgrading. A later release adds a fixture of its own beside it.
"""
from __future__ import annotations

import dataclasses
import email
import sqlite3
from email import policy
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import StorageSection
from gateway.model import Copy, RouteRules, RouteTarget
from storage.base import Contact, PolledKeys
from storage.sqlite.store import migrations
from tests.conftest import make_settings
from tests.e2e.helpers import deliver, mail

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1.0.sql"
CAROL = "carol@customer.test"


@pytest.fixture(scope="module")
def dump() -> sqlite3.Connection:
    """The old release's database in memory: where the tests read what to expect."""
    db = sqlite3.connect(":memory:")
    db.executescript(FIXTURE.read_text(encoding="utf-8"))
    yield db
    db.close()


@pytest.fixture
def upgraded(tmp_path) -> Path:
    """The old release's database, loaded into a fresh file as its installation had it."""
    path = tmp_path / "mailgate.db"
    db = sqlite3.connect(path)
    db.executescript(FIXTURE.read_text(encoding="utf-8"))
    db.close()
    return path


@pytest.fixture
async def store(upgraded, open_at):
    return await open_at(f"sqlite:///{upgraded}")


def one(dump: sqlite3.Connection, sql: str, *params):
    return dump.execute(sql, params).fetchone()


async def test_the_schema_version_is_kept_or_migrated_forward(upgraded, dump, store):
    (old,) = one(dump, "PRAGMA user_version")
    await store.close()
    db = sqlite3.connect(upgraded)
    (now,) = db.execute("PRAGMA user_version").fetchone()
    db.close()
    assert now >= old and now == migrations()[-1][0]


async def test_the_upgraded_schema_is_the_schema_of_a_fresh_installation(
        upgraded, store, tmp_path, open_at):
    """A released migration edited afterwards would leave upgraded installations behind."""
    fresh = await open_at(f"sqlite:///{tmp_path / 'fresh.db'}")
    await fresh.close()
    await store.close()

    def schema(path: Path) -> set[tuple]:
        db = sqlite3.connect(path)
        try:
            return set(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        finally:
            db.close()
    assert schema(upgraded) == schema(tmp_path / "fresh.db")


async def test_connectors_keep_their_settings_and_credentials(store):
    entries = {e.connector.name: e for e in await store.read(lambda t: t.connector_entries())}
    assert sorted(entries) == ["fr", "ma", "mbox"]
    for name in ("fr", "ma"):
        c = entries[name].connector
        assert (c.service, c.protocol, c.primary_address, c.enabled) == (
            "lmtp", "lmtp", f"{name}@corp.test", True)
        assert entries[name].password is None
    mbox = entries["mbox"]
    c = mbox.connector
    assert (c.service, c.protocol, c.primary_address, c.enabled, c.host, c.port, c.folders) == (
        "imap", "imap", "mbox@corp.test", False, "127.0.0.1", 993, ("INBOX",))
    assert (mbox.username, mbox.password, mbox.secrets) == ("mbox", "s3cret-pass", {})


async def test_routes_and_contacts_are_kept(store):
    routes = {(r.connector, r.name): r for r in await store.read(lambda t: t.routes())}
    assert sorted(routes) == [("fr", "billing"), ("fr", "fr@corp.test"),
                              ("ma", "ma@corp.test"), ("mbox", "mbox fallback")]
    billing = routes[("fr", "billing")]
    assert (billing.email_address, billing.order, billing.fallback, billing.rules,
            billing.target) == ("fr@corp.test", 1, False, RouteRules(subject_keywords="invoice"),
                                RouteTarget(kind="Case", process="billing"))
    fallback = routes[("fr", "fr@corp.test")]
    assert (fallback.order, fallback.fallback, fallback.send_automated_emails,
            fallback.rules.empty()) == (2, True, True, True)
    assert not routes[("mbox", "mbox fallback")].send_automated_emails
    assert await store.read(lambda t: t.contacts()) == [
        Contact(1, "*@customer.test", "Customer Ltd")]


async def test_the_activity_history_is_kept_without_the_password(store):
    lines = await store.read(lambda t: t.activity(entity=None, after=0, limit=100))
    assert [(a.entity, a.action, a.actor) for a in lines] == [
        ("connector:mbox", "create", "alice"), ("route:3", "create", "alice"),
        ("route:4", "create", "alice")]
    assert lines[0].changes["username"] == [None, "mbox"]
    assert lines[0].changes["password"] == ["***", "***"]
    assert "s3cret" not in repr([a.changes for a in lines])
    assert lines[2].changes["rules.subject_keywords"] == [None, "invoice"]


async def test_work_items_keep_their_states_refs_and_emails(store):
    items = {i.ref: i for i in await store.read(lambda t: t.workitems())}
    assert {ref: (i.kind, i.state, i.connector) for ref, i in items.items()} == {
        "1-T": ("Ticket", "RESOLVED", "fr"), "2-C": ("Case", "TO_DO", "fr"),
        "3-T": ("Ticket", "TO_DO", "fr")}
    assert items["1-T"].contacts == [CAROL] and items["1-T"].send_automated_emails
    assert items["2-C"].custom_data == {"process": "billing"}
    assert await store.read(lambda t: t.workitem_by_uuid(items["2-C"].uuid)) == items["2-C"]
    assert await store.read(lambda t: t.item_email_ids("1-T")) == [1, 2, 3, 6]
    assert await store.read(lambda t: t.item_email_ids("2-C")) == [4]


async def test_emails_keep_their_outcomes_and_raw_bytes(store, dump):
    assert await store.count_emails() == 7 and await store.backlog() == 0
    expected = {1: ("incoming", "created", "1-T"), 2: ("outgoing", None, None),
                3: ("incoming", "appended", "1-T"), 4: ("incoming", "created", "2-C"),
                5: ("incoming", "created", "3-T"), 6: ("outgoing", None, None),
                7: ("incoming", "unprocessed", None)}
    for email_id, (direction, outcome, ref) in expected.items():
        record = await store.email(email_id)
        assert (record.direction, record.outcome) == (direction, outcome), email_id
        assert [t["ref"] for t in record.targets] == ([ref] if ref else [])
        (raw,) = one(dump, "SELECT m.raw FROM emails e JOIN messages m ON m.id = e.message"
                           " WHERE e.id = ?", email_id)
        assert await store.raw(email_id) == raw and record.size == len(raw)
        parsed = email.message_from_bytes(raw, policy=policy.default)
        assert parsed["Message-ID"] == record.message_id
    subjects = [email.message_from_bytes(await store.raw(i), policy=policy.default)["Subject"]
                for i in (1, 3, 4, 5)]
    assert subjects == ["Printer broken", "Re: Printer broken", "Invoice 42", "Out of office"]
    polled = await store.email(7)
    assert (polled.connector, polled.source, polled.folder_path, polled.reason) == (
        "mbox", "imap", "INBOX", "no_visible_address")
    assert [e.id for e in await store.unprocessed()] == [7]
    outgoing = await store.email(2)
    assert (outgoing.mail_from, outgoing.rcpt_to) == ("fr@corp.test", [CAROL])

    async def sent(txn) -> list:
        return [await txn.sent_message((await txn.email_record(i)).message_id) for i in (2, 6)]
    assert await store.read(sent) == [(True, True), (True, False)]   # the ack, the agent's


async def test_dedup_remembers_what_the_old_release_decided(store, dump):
    (f1,) = one(dump, "SELECT f1 FROM emails WHERE id = 1")
    assert await store.read(lambda t: t.f1_seen("fr", f1, 0)) == 1
    (value,) = one(dump, "SELECT value FROM fingerprints WHERE target = '1-T' LIMIT 1")
    assert await store.read(lambda t: t.target_received("1-T", [value]))


async def test_events_are_kept_in_order(store):
    events = await store.events()
    assert [(e["id"], e["type"], e["ref"]) for e in events] == [
        (1, "workitem.created", "1-T"), (2, "outbound.queued", "1-T"),
        (3, "email.appended", "1-T"), (4, "workitem.created", "2-C"),
        (5, "workitem.created", "3-T"), (6, "outbound.queued", "1-T"),
        (7, "workitem.state_changed", "1-T"), (8, "email.unprocessed", None)]
    assert events[6]["data"] == {"old": "TO_DO", "new": "RESOLVED", "wait_type": None}
    assert await store.last_event_id() == 8


async def test_the_outbound_queue_is_kept(store, dump):
    assert await store.outbound.queued() == 2
    due = await store.outbound.due(float("inf"), 10)
    assert [(m.email_id, m.ref, m.rcpt_to, m.attempts, m.connector) for m in due] == [
        (2, "1-T", (CAROL,), 0, "fr"), (6, "1-T", (CAROL,), 0, "fr")]
    assert [m.raw for m in due] == [await store.raw(2), await store.raw(6)]
    assert (await store.queue_depths())["outbound"][0] == 2


async def test_the_polled_key_and_the_settings_are_kept(store, dump):
    connector, folder, key, email_id = one(
        dump, "SELECT connector, folder, key, email_id FROM polled")
    scope, _, local = key.partition(":")
    assert await store.polls.known(connector, folder, scope + ":") == PolledKeys(
        {local: email_id}, False, ())
    assert await store.settings() == {"matching_mode": "mixed"}


async def test_new_work_continues_after_the_old_ids(store):
    [email_id] = await store.journal([Copy(raw=b"Subject: new\r\n\r\nnew\r\n",
                                           connector="fr", source="lmtp")])
    assert email_id == 8
    assert await store.transaction(lambda t: t.next_number()) == 4
    await store.emit("poller.ok", connector="mbox")
    assert await store.last_event_id() == 9
    contact, created = await store.transaction(lambda t: t.save_contact("*@x.test", "X"))
    assert created and contact > 1

    async def history(txn) -> int:
        await txn.add_activity("connector:fr", "update", "bob", txn.now, {})
        return (await txn.activity(entity=None, after=3, limit=5))[0].id
    assert await store.transaction(history) > 3


async def test_a_gateway_on_the_upgraded_database_reopens_the_old_ticket(upgraded, dump,
                                                                         tmp_path):
    """End to end: an installation upgraded in place keeps working — a customer's reply
    to the request the old release turned into ticket 1-T (since resolved) reopens it."""
    (request_id,) = one(dump, "SELECT message_id FROM emails WHERE id = 1")
    settings = dataclasses.replace(make_settings(tmp_path, connectors=[]),
                                   storage=StorageSection(url=f"sqlite:///{upgraded}"))
    gw = Gateway(settings)
    await gw.start()
    try:
        assert gw.runtime_settings()["matching_mode"] == "mixed"
        reply = mail(subject="Re: Printer broken", body="It jams again.",
                     in_reply_to=request_id)
        [stored] = await deliver(gw, reply)
        assert stored.id == 8
        assert (stored.connector, stored.outcome) == ("fr", "appended")
        assert [t["ref"] for t in stored.targets] == ["1-T"]
        ticket = await gw.workitem("1-T")
        assert (ticket.state, ticket.new_info) == ("TO_DO", True)
        assert await gw.store.read(lambda t: t.item_email_ids("1-T")) == [1, 2, 3, 6, 8]
        events = await gw.store.events(after=8)
        assert [(e["type"], e["ref"]) for e in events] == [
            ("workitem.state_changed", "1-T"), ("email.appended", "1-T")]
        assert events[0]["data"]["old"] == "RESOLVED" and events[0]["data"]["new"] == "TO_DO"
        assert await gw.store.backlog() == 0
    finally:
        await gw.stop()
