"""Polled mailboxes end to end: a real Dovecot, the whole gateway (R-I4, R-I5, R-B5, R-C4).

Mail is put into Dovecot mailboxes the way a customer's mail lands there, the
gateway's poller fetches it over IMAP or POP3, and the tests check what a mail
admin would: the work items made, the folder routing, what is left on the
server, and that nothing is removed before it is committed.
"""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.model import Route, RouteTarget
from gateway.polling.mailboxes import open_mailbox
from storage.base import StoreError
from tests.dovecot import DovecotInstance
from tests.e2e.helpers import WIRE, copies, mail, poll, work_item_count

pytestmark = pytest.mark.timeout(120)


def raw(message) -> bytes:
    return message.as_bytes(policy=WIRE)


async def polled_gateway(start_gateway, dovecot: DovecotInstance, user: str, *,
                         name: str = "mbox", protocol: str = "imap", password: str | None = None,
                         factory=None, **fields):
    """A gateway with one polled connector for ``user``'s mailbox (no config seeds)."""
    gw = await start_gateway(connectors=[])
    if factory is not None:
        gw.pollers.mailbox_factory = factory
    fields.setdefault("poll_interval", 3600)    # rounds only when the test asks
    username = fields.pop("username", user)
    connector = dovecot.connector(user, protocol=protocol, name=name, **fields)
    await gw.add_connector(connector, username=username,
                           password=password if password is not None
                           else dovecot.password(user))
    return gw


async def count(dovecot: DovecotInstance, user: str, folder: str = "INBOX") -> int:
    return await asyncio.to_thread(dovecot.count, user, folder)


class CommitCheckingMailbox:
    """The real mailbox, but every ``remove`` first proves, from a separate database
    connection, that each message being removed is already committed with its key."""

    def __init__(self, inner, db_path: str, seen: list):
        self.inner, self.db_path, self.seen = inner, db_path, seen

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def __aenter__(self):
        await self.inner.open()
        return self

    async def __aexit__(self, *exc):
        await self.inner.close()

    async def remove(self, folder: str, keys: list[str]) -> None:
        def committed() -> dict:        # from another connection: what is on disk
            with sqlite3.connect(self.db_path) as db:
                return {key.split(":", 1)[1]: email_id for key, email_id in db.execute(
                    "SELECT p.key, e.id FROM polled p JOIN emails e ON e.id = p.email_id"
                    " WHERE p.folder = ?", (folder,)).fetchall()}    # without the scope
        found = await asyncio.to_thread(committed)
        self.seen.append((folder, list(keys), [k in found for k in keys]))
        await self.inner.remove(folder, keys)


class CrashBeforeRemove(CommitCheckingMailbox):
    """Dies where a kill -9 would hurt most: after the commit, before any delete."""

    async def remove(self, folder: str, keys: list[str]) -> None:
        raise ConnectionResetError("simulated crash between commit and delete")


# -- IMAP ----------------------------------------------------------------------------------

async def test_r_i4_r_i5_imap_folders_are_routed_by_folder_and_deleted_only_after_commit(
        start_gateway, dovecot, tmp_path):
    user = dovecot.new_user("desk")
    checks: list = []
    db_path = str(tmp_path / "mailgate.db")
    gw = await polled_gateway(
        start_gateway, dovecot, user, folders=("INBOX", "Billing"),
        factory=lambda c, creds: CommitCheckingMailbox(open_mailbox(c, creds), db_path, checks))
    await gw.add_route(Route(id=0, name="billing folder", connector="mbox", email_address=user,
                             order=0, folder_path="Billing", target=RouteTarget(kind="Case")))
    question = mail(to=(user,), subject="Where is my parcel?")
    invoice = mail(to=(user,), subject="Invoice 42 is wrong")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(question))
    await asyncio.to_thread(dovecot.append, user, "Billing", raw(invoice))

    status = await poll(gw, "mbox")

    assert status.state == "ok" and status.fetched_total == 2
    [q] = await copies(gw, question)
    [i] = await copies(gw, invoice)
    assert (q.source, q.folder_path, q.outcome) == ("imap", "INBOX", "created")
    assert (i.source, i.folder_path, i.outcome) == ("imap", "Billing", "created")
    assert q.targets[0]["ref"].endswith("-T")
    assert i.targets[0]["ref"].endswith("-C")                            # R-R3 folder route
    assert await gw.store.raw(q.id) == raw(question)                     # R-I7 bytes kept
    assert await count(dovecot, user, "INBOX") == 0
    assert await count(dovecot, user, "Billing") == 0
    assert {folder for folder, _, _ in checks} == {"Billing", "INBOX"}
    assert all(all(flags) for _, _, flags in checks), checks            # committed first


async def test_r_i4_many_messages_are_removed_together_and_only_once_all_are_committed(
        start_gateway, dovecot, tmp_path):
    """Removal waits for REMOVE_BATCH committed messages (or the folder's end): one
    EXPUNGE for 250 messages fetched and committed in batches of 100, never before
    every one of them is in the journal."""
    user = dovecot.new_user("many")
    checks: list = []
    db_path = str(tmp_path / "mailgate.db")
    messages = [mail(to=(user,), sender=f"customer{n}@example.org", subject=f"Parcel {n} is late")
                for n in range(250)]                                  # 250 customers (R-B3)
    await asyncio.to_thread(dovecot.seed, user, [raw(m) for m in messages])  # before the
    gw = await polled_gateway(                                   # poller's first round
        start_gateway, dovecot, user,
        factory=lambda c, creds: CommitCheckingMailbox(open_mailbox(c, creds), db_path, checks))

    status = await poll(gw, "mbox")
    await gw.pipeline.drain()

    assert status.state == "ok" and status.fetched_total == 250
    assert [(folder, len(keys)) for folder, keys, _ in checks] == [("INBOX", 250)]
    assert all(checks[0][2])                                            # committed first
    assert await count(dovecot, user) == 0
    assert await work_item_count(gw) == 250


async def test_r_i4_a_failed_commit_among_those_in_flight_loses_and_doubles_nothing(
        start_gateway, dovecot, tmp_path):
    """Commits overlap the next fetches, several at a time. When one of them fails, the
    round fails and removes nothing it has not seen committed; a commit that was in
    flight behind it still lands, and the next round only removes those messages while
    it journals the failed batch's: every message stored once, the mailbox empty."""
    user = dovecot.new_user("inflight")
    checks: list = []
    db_path = str(tmp_path / "mailgate.db")
    gw = await polled_gateway(
        start_gateway, dovecot, user, idle=False,       # rounds only when asked
        factory=lambda c, creds: CommitCheckingMailbox(open_mailbox(c, creds), db_path, checks))
    poller = gw.pollers.get("mbox")
    while poller.status.next_poll_at is None:           # the first round, on an empty box
        await asyncio.sleep(0.05)
    messages = [mail(to=(user,), sender=f"customer{n}@example.org", subject=f"Order {n}")
                for n in range(250)]                      # three batches of up to 100
    await asyncio.to_thread(dovecot.seed, user, [raw(m) for m in messages])
    journal, calls = poller.journal, []

    async def second_fails(*args):
        calls.append(len(args[3]))
        if len(calls) == 2:
            await asyncio.sleep(0.3)                    # the third is fetched meanwhile
            raise StoreError("the disk is full")
        return await journal(*args)

    poller.journal = second_fails
    failed = await poll(gw, "mbox")
    assert failed.state == "failing" and "disk is full" in failed.last_error
    assert calls == [100, 100, 50] and checks == []     # all three were under way
    assert await count(dovecot, user) == 250            # nothing removed

    poller.journal = journal
    status = await poll(gw, "mbox")
    assert status.state == "ok"
    assert await count(dovecot, user) == 0
    assert all(all(flags) for _, _, flags in checks), checks            # committed first
    assert sorted(len(keys) for _, keys, _ in checks) == [100, 150]     # left over, then new
    assert [len(await copies(gw, m)) for m in messages] == [1] * 250
    assert await work_item_count(gw) == 250


async def test_r_i4_imap_idle_takes_new_mail_at_once_instead_of_after_the_interval(
        start_gateway, dovecot):
    """With ``idle`` (the default for IMAP) a session waits in IDLE (RFC 2177) on the
    first folder, and new mail there starts a round at once (which reads every folder),
    although the interval here is an hour."""
    user = dovecot.new_user("idle")
    gw = await polled_gateway(start_gateway, dovecot, user, folders=("INBOX", "Billing"),
                              idle=True)
    poller = gw.pollers.get("mbox")
    while poller.status.rounds == 0:                  # the first round, at start
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)                          # the watchers' IDLE is under way
    rounds = poller.status.rounds
    question = mail(to=(user,), subject="Is anyone there?")
    invoice = mail(to=(user,), subject="Invoice 7")
    await asyncio.to_thread(dovecot.append, user, "Billing", raw(invoice))   # not watched
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(question))    # wakes it

    for _ in range(200):                              # no poll() call: only IDLE wakes it
        await gw.pipeline.drain()
        found = [await copies(gw, m) for m in (question, invoice)]
        if all(c and c[0].outcome for c in found):        # journaled and decided
            break
        await asyncio.sleep(0.05)
    assert [c[0].outcome for c in found] == ["created", "created"]
    assert poller.status.rounds > rounds
    assert await count(dovecot, user, "INBOX") == 0 == await count(dovecot, user, "Billing")


async def test_r_i4_with_idle_off_new_mail_waits_for_the_interval(start_gateway, dovecot):
    user = dovecot.new_user("noidle")
    gw = await polled_gateway(start_gateway, dovecot, user, idle=False)
    poller = gw.pollers.get("mbox")
    while poller.status.next_poll_at is None:   # the first round has ended, not just begun
        await asyncio.sleep(0.05)
    message = mail(to=(user,), subject="Anyone?")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    await asyncio.sleep(1.5)
    assert poller.status.rounds == 1 and await copies(gw, message) == []
    await poll(gw, "mbox")
    assert len(await copies(gw, message)) == 1


async def test_r_b5_move_to_keeps_processed_mail_in_a_folder_created_when_missing(
        start_gateway, dovecot):
    user = dovecot.new_user("archive")
    gw = await polled_gateway(start_gateway, dovecot, user, move_to="Processed", idle=False)
    first = mail(to=(user,), subject="Keep a copy of this")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(first))
    await poll(gw, "mbox")
    second = mail(to=(user,), subject="And of this")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(second))
    await poll(gw, "mbox")

    assert [c.outcome for m in (first, second) for c in await copies(gw, m)] == [
        "created", "created"]
    assert await count(dovecot, user, "INBOX") == 0
    kept = await asyncio.to_thread(dovecot.raw_messages, user, "Processed")
    assert kept == [raw(first), raw(second)]                 # moved byte for byte


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_r_i3_mail_over_the_size_limit_stays_on_the_server_and_is_reported_once(
        start_gateway, dovecot, protocol):
    """The gateway's size limit ([lmtp] max_message_size, R-I3) holds for polled mail too:
    a message over it is not fetched (it would sit in memory whole) nor lost: it stays
    in the mailbox, and the poller says so once."""
    user = dovecot.new_user(f"big{protocol}")
    small = mail(to=(user,), subject="A normal question")
    big = mail(to=(user,), subject="Scans attached", body="scan " * 500_000)   # ~2.5 MB
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(big))
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(small))
    gw = await start_gateway(connectors=[], lmtp={"max_message_size": 2_000_000})
    connector = dovecot.connector(user, protocol=protocol, name="mbox", poll_interval=3600,
                                  idle=False)
    await gw.add_connector(connector, username=user, password=dovecot.password(user))

    await poll(gw, "mbox")
    status = await poll(gw, "mbox")

    assert status.state == "ok" and status.too_large == 1
    assert [c.outcome for c in await copies(gw, small)] == ["created"]
    assert await copies(gw, big) == []
    assert await count(dovecot, user) == 1                          # the big one, kept
    events = [e for e in await gw.store.events(0, 100)
              if e["type"] == "connector.message_too_large"]
    assert len(events) == 1 and events[0]["data"]["limit"] == 2_000_000


async def test_r_i4_imap_message_found_large_in_a_batch_is_fetched_alone_and_whole(
        start_gateway, dovecot):
    """IMAP learns sizes with the bytes: a batch asks for at most 1 MiB + 1 byte of each
    message, and one that fills it is fetched again alone, whole, after the batch."""
    user = dovecot.new_user("large")
    first, last = (mail(to=(user,), subject=f"Small {n}") for n in (1, 2))
    big = mail(to=(user,), subject="Scans attached", body="scan " * 300_000)  # ~1.5 MB
    for message in (first, big, last):
        await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    gw = await polled_gateway(start_gateway, dovecot, user, idle=False)

    status = await poll(gw, "mbox")

    assert status.state == "ok" and status.fetched_total == 3 and status.too_large == 0
    for message in (first, big, last):
        [copy] = await copies(gw, message)
        assert await gw.store.raw(copy.id) == raw(message)
    assert await count(dovecot, user) == 0


async def test_r_i4_crash_between_commit_and_delete_creates_no_second_work_item(
        start_gateway, dovecot, tmp_path):
    user = dovecot.new_user("crash")
    db_path = str(tmp_path / "mailgate.db")
    gw = await polled_gateway(
        start_gateway, dovecot, user,
        factory=lambda c, creds: CrashBeforeRemove(open_mailbox(c, creds), db_path, []))
    messages = [mail(to=(user,), subject=f"Outage report {n}") for n in range(3)]
    for message in messages:
        await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))

    status = await poll(gw, "mbox")
    assert status.state == "failing" and "simulated crash" in status.last_error
    assert await count(dovecot, user) == 3                 # still on the server
    await gw.stop()

    restarted = await start_gateway(connectors=[])           # same database, real mailbox
    await restarted.pollers.poll("mbox")
    await restarted.pipeline.drain()

    assert await count(dovecot, user) == 0
    refs = []
    for message in messages:
        [copy] = await copies(restarted, message)           # journaled once, not twice
        assert copy.outcome == "created"
        refs.extend(t["ref"] for t in copy.targets)
    assert len(set(refs)) == 3
    assert await work_item_count(restarted) == 3


async def test_r_i4_shared_mailbox_is_polled_through_a_master_login(start_gateway, dovecot):
    owner = dovecot.new_user("shared")
    gw = await polled_gateway(start_gateway, dovecot, owner, username=dovecot.master_user,
                              password=dovecot.master_password, shared_mailbox=owner)
    message = mail(to=(owner,), subject="For the team mailbox")
    await asyncio.to_thread(dovecot.append, owner, "INBOX", raw(message))

    status = await poll(gw, "mbox")

    assert status.state == "ok", status.last_error
    [copy] = await copies(gw, message)
    assert copy.outcome == "created" and copy.connector == "mbox"
    assert await count(dovecot, owner) == 0


async def test_r_c4_a_server_certificate_from_another_ca_is_refused_and_nothing_is_touched(
        start_gateway, dovecot):
    user = dovecot.new_user("tls")
    gw = await polled_gateway(start_gateway, dovecot, user, ca_file=dovecot.stranger_ca_file)
    message = mail(to=(user,), subject="Must stay put")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))

    status = await gw.pollers.poll("mbox")

    assert status.state == "failing"
    assert "certificate verify failed" in status.last_error.lower()
    assert await copies(gw, message) == []
    assert await count(dovecot, user) == 1
    events = [e for e in await gw.store.events(0, 100) if e["type"] == "connector.poll_failed"]
    assert len(events) == 1 and events[0]["data"]["connector"] == "mbox"


async def test_r_i4_a_wrong_password_fails_the_poller_with_the_servers_words_and_it_recovers(
        start_gateway, dovecot):
    user = dovecot.new_user("pw")
    gw = await polled_gateway(start_gateway, dovecot, user, password="not-the-password")
    status = await gw.pollers.poll("mbox")
    assert status.state == "failing"
    assert "AUTHENTICATIONFAILED" in status.last_error or "Authentication failed" in \
        status.last_error
    metrics = gw.metrics.exposition().decode()
    assert 'mailgate_poller_up{connector="mbox",protocol="imap"} 0.0' in metrics
    import aiohttp
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{gw.http_port}/readyz") as response:
            ready = await response.json()
    assert response.status == 200 and ready["ready"] is True   # LMTP still serves
    detail = ready["checks"]["pollers"]["mbox"]
    assert detail["state"] == "failing" and "Authentication failed" in detail["last_error"]

    await gw.directory_ops.update_connector("mbox", {"password": dovecot.password(user)},
                                            "admin")
    message = mail(to=(user,), subject="After the fix")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    status = await poll(gw, "mbox")
    assert status.state == "ok"
    [copy] = await copies(gw, message)
    assert copy.outcome == "created"
    types = [e["type"] for e in await gw.store.events(0, 100)]
    assert types.count("connector.poll_failed") == 1 and "connector.poll_recovered" in types


async def test_r_b5_start_from_now_leaves_old_mail_and_keep_on_server_marks_it_seen(
        start_gateway, dovecot):
    user = dovecot.new_user("onboard")
    old = mail(to=(user,), subject="From last year")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(old))
    gw = await polled_gateway(start_gateway, dovecot, user, start_from="now",
                              keep_on_server=True)
    await poll(gw, "mbox")                   # the first round only sets the watermark
    new = mail(to=(user,), subject="Fresh question")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(new))

    await poll(gw, "mbox")
    await poll(gw, "mbox")                   # a second look changes nothing

    assert await copies(gw, old) == []
    [copy] = await copies(gw, new)
    assert copy.outcome == "created"
    stored = await asyncio.to_thread(dovecot.messages, user)
    assert len(stored) == 2                          # keep_on_server: nothing deleted
    flags = {s.raw: s.flags for s in stored}
    assert "\\Seen" in flags[raw(new)] and "\\Seen" not in flags[raw(old)]


# -- POP3 ----------------------------------------------------------------------------------

async def test_r_i4_pop3_mail_is_processed_and_deleted_at_quit(start_gateway, dovecot):
    user = dovecot.new_user("pop")
    gw = await polled_gateway(start_gateway, dovecot, user, protocol="pop3")
    messages = [mail(to=(user,), subject=f"POP question {n}") for n in range(3)]
    for message in messages:
        await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))

    status = await poll(gw, "mbox")

    assert status.state == "ok" and status.fetched_total == 3
    for message in messages:
        [copy] = await copies(gw, message)
        assert (copy.source, copy.outcome) == ("pop3", "created")
        assert await gw.store.raw(copy.id) == raw(message)
    assert await count(dovecot, user) == 0


async def test_r_i4_pop3_session_dropped_before_quit_refetches_and_dedup_absorbs_it(
        start_gateway, dovecot, tmp_path):
    """DELE only takes effect at QUIT: a crash after the commit leaves the mail on the
    server, the next round fetches it again (a UIDL may be reused), and R-D1 ends the
    second copy as a duplicate: one work item."""
    user = dovecot.new_user("popcrash")
    db_path = str(tmp_path / "mailgate.db")
    gw = await polled_gateway(
        start_gateway, dovecot, user, protocol="pop3",
        factory=lambda c, creds: CrashBeforeRemove(open_mailbox(c, creds), db_path, []))
    message = mail(to=(user,), subject="Dropped at QUIT")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    assert (await gw.pollers.poll("mbox")).state == "failing"
    await gw.stop()

    restarted = await start_gateway(connectors=[])
    await poll(restarted, "mbox")

    assert await count(dovecot, user) == 0
    outcomes = sorted(c.outcome for c in await copies(restarted, message))
    assert outcomes[0] == "created" and set(outcomes[1:]) == {"duplicate"}, outcomes
    assert len(outcomes) >= 2                        # it was fetched again, and absorbed
    assert await work_item_count(restarted) == 1


# -- R-C3 connector test, through the API ----------------------------------------------

async def test_r_c3_connector_test_reports_the_servers_error_then_success(start_gateway,
                                                                          dovecot):
    import aiohttp
    from tests.conftest import ADMIN_TOKEN
    user = dovecot.new_user("probe")
    gw = await polled_gateway(start_gateway, dovecot, user, password="wrong-password")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.post("/api/v1/connectors/mbox/test") as response:
            failed = await response.json()
        async with http.patch("/api/v1/connectors/mbox",
                              json={"password": dovecot.password(user)}) as response:
            assert response.status == 200, await response.text()
        async with http.post("/api/v1/connectors/mbox/test") as response:
            passed = await response.json()

    assert failed["ok"] is False
    assert "[AUTHENTICATIONFAILED] Authentication failed." in failed["detail"]
    assert passed["ok"] is True and "INBOX" in passed["detail"]


async def test_r_c4_disabled_verification_is_explicit_and_warned_at_start(start_gateway,
                                                                          dovecot, caplog):
    """tls_verify = false accepts a certificate from an unknown CA, and says so loudly."""
    user = dovecot.new_user("noverify")
    message = mail(to=(user,), subject="Over unverified TLS")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    with caplog.at_level("WARNING", logger="mailgate.poller"):
        gw = await polled_gateway(start_gateway, dovecot, user,
                                  ca_file=dovecot.stranger_ca_file, tls_verify=False)
        status = await poll(gw, "mbox")
    assert status.state == "ok", status.last_error
    [copy] = await copies(gw, message)
    assert copy.outcome == "created"
    assert any("verification is DISABLED" in r.getMessage() and "R-C4" in r.getMessage()
               for r in caplog.records)


async def test_r_i4_a_uidvalidity_change_refetches_and_dedup_makes_no_new_work_item(
        start_gateway, dovecot):
    """RFC 3501 §2.3.1.1: a new UIDVALIDITY voids every UID. The poller's keys no
    longer match, so it fetches everything again; R-D1 ends those copies as
    duplicates, and no work item is made twice."""
    user = dovecot.new_user("uidv")
    gw = await polled_gateway(start_gateway, dovecot, user, keep_on_server=True)
    messages = [mail(to=(user,), subject=f"Kept {n}") for n in range(2)]
    for message in messages:
        await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    await poll(gw, "mbox")
    maildir = dovecot.root / "home" / user / "Maildir"
    for index in [maildir / "dovecot-uidlist", *maildir.glob("dovecot.index*")]:
        index.unlink(missing_ok=True)           # Dovecot starts a new UIDVALIDITY

    status = await poll(gw, "mbox")

    assert status.state == "ok", status.last_error
    for message in messages:
        assert sorted(c.outcome for c in await copies(gw, message)) == ["created",
                                                                         "duplicate"]
    assert await work_item_count(gw) == 2


async def test_r_i4_poll_now_through_the_api_runs_a_round_and_answers_its_status(
        start_gateway, dovecot):
    import aiohttp
    from tests.conftest import ADMIN_TOKEN
    user = dovecot.new_user("now")
    gw = await polled_gateway(start_gateway, dovecot, user)
    await gw.add_connector(dovecot.connector(user="other@example.test", name="off",
                                             enabled=False), username="x", password="y")
    message = mail(to=(user,), subject="Poll me now")
    await asyncio.to_thread(dovecot.append, user, "INBOX", raw(message))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        async with http.post("/api/v1/connectors/mbox/poll") as response:
            status, body = response.status, await response.json()
        async with http.post("/api/v1/connectors/off/poll") as response:
            refused, why = response.status, await response.json()

    assert status == 200 and body["state"] == "ok" and body["fetched_total"] >= 1
    assert await count(dovecot, user) == 0
    assert refused == 409 and "R-I4" in why["error"]["message"]


async def test_r_i4_a_connector_re_pointed_at_another_mailbox_fetches_all_of_it(
        start_gateway, dovecot):
    """Two mailboxes created together may share a UIDVALIDITY, so 'uidvalidity:uid'
    alone does not say which mailbox a stored key came from. Keys are scoped to the
    mailbox: after re-pointing, the new mailbox's mail is fetched, never taken for
    the old one's and removed unread."""
    first, second = dovecot.new_user("before"), dovecot.new_user("after")
    old, new = mail(to=(first,), subject="Old box"), mail(to=(second,), subject="New box")
    await asyncio.to_thread(dovecot.append, first, "INBOX", raw(old))
    await asyncio.to_thread(dovecot.append, second, "INBOX", raw(new))
    gw = await polled_gateway(start_gateway, dovecot, first, keep_on_server=True)
    await poll(gw, "mbox")
    assert [c.outcome for c in await copies(gw, old)] == ["created"]

    await gw.directory_ops.update_connector(
        "mbox", {"username": second, "password": dovecot.password(second),
                 "primary_address": second, "keep_on_server": False}, "admin")
    status = await poll(gw, "mbox")

    assert status.state == "ok", status.last_error
    assert [c.outcome for c in await copies(gw, new)] == ["created"]
    assert await count(dovecot, second) == 0


async def test_r_i4_stopping_the_gateway_never_waits_on_a_server_gone_silent(start_gateway):
    """A scripted IMAP server that logs the poller in, then never answers again. The
    gateway's stop cancels the round, gives LOGOUT a short grace and leaves: a drain
    is never held up by a remote mailbox."""
    async def silent_after_login(reader, writer):
        writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        while line := await reader.readline():
            tag, _, command = line.decode().partition(" ")
            if command.upper().startswith(("CAPABILITY", "LOGIN")):
                writer.write(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
            # anything else: no answer, ever
        writer.close()

    server = await asyncio.start_server(silent_after_login, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(connectors=[])
    from gateway.model import Connector
    await gw.add_connector(Connector(name="mute", service="other", protocol="imap",
                                     primary_address="mute@example.test", host="127.0.0.1",
                                     port=port, tls="none", poll_interval=3600),
                           username="u", password="p")
    poller = gw.pollers.get("mute")
    for _ in range(200):                       # until the round waits on SELECT
        await asyncio.sleep(0.01)
        if poller.status.rounds:
            break
    await asyncio.sleep(0.3)
    started = asyncio.get_running_loop().time()
    await gw.stop()
    assert asyncio.get_running_loop().time() - started < 10
    server.close()


async def test_r_i4_concurrent_directory_changes_leave_one_poller_per_connector(
        start_gateway, dovecot):
    """Directory changes that land together each resync the pollers; the mailbox must
    still end up with exactly one poller, running the last settings applied."""
    import dataclasses

    class SlowToList(CommitCheckingMailbox):
        """Keeps every poller busy inside a round, so stopping one takes a while."""
        async def keys(self, folder):
            await asyncio.sleep(0.05)
            return await self.inner.keys(folder)

    user = dovecot.new_user("race")
    gw = await polled_gateway(
        start_gateway, dovecot, user,
        factory=lambda c, creds: SlowToList(open_mailbox(c, creds), "", []))
    entry = await gw.directory_ops.connector("mbox")

    async def directory_with(interval: int) -> list:
        return [dataclasses.replace(entry, connector=dataclasses.replace(
            entry.connector, poll_interval=interval))]

    for attempt in range(3):
        await asyncio.sleep(0.01)                       # pollers inside their round
        await asyncio.gather(*(gw.pollers.sync(lambda n=n: directory_with(n))
                               for n in range(100, 106)))
        tasks = [t for t in asyncio.all_tasks()
                 if t.get_name() == "poller:mbox" and not t.done()]
        assert len(tasks) == 1, f"{len(tasks)} pollers for one mailbox"
        assert gw.pollers.get("mbox").connector.poll_interval == 105
