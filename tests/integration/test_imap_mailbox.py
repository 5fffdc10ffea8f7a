"""ImapMailbox against a real Dovecot (R-I4, R-I5, R-C1, R-C3, R-C4, R-B5).

Each test has its own Dovecot user, so the module shares one server. Seeding and
reading back go through stdlib imaplib in a worker thread (``asyncio.to_thread``),
never on the event loop the mailbox runs on.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from gateway.model import Connector
from gateway.polling.mailboxes import open_mailbox
from gateway.protocols.imap import (ImapMailbox, encode_mailbox, login_name, parse_fetch, uid_set)
from gateway.protocols.mailbox import Credentials, MailboxError, WatchHold
from tests.dovecot import DovecotInstance

pytestmark = pytest.mark.timeout(30)


def message(n: int, extra: bytes = b"") -> bytes:
    return (b"From: Sender <s@origin.test>\r\nTo: support@example.test\r\n"
            b"Subject: message %d\r\nMessage-ID: <m%d@origin.test>\r\n\r\n"
            b"body of %d\r\n" % (n, n, n)) + extra


# Bytes a sloppy parser would mangle: a dot line, a parenthesis, an IMAP-looking
# line, 8-bit text, a line longer than 2,048 bytes, and a literal-looking brace.
TRICKY = (b".\r\n..dots\r\n) closing paren\r\n* 1 FETCH (UID 9 BODY[] {3}\r\n"
          b"caf\xe9 \xc3\xa9t\xc3\xa9\r\n" + b"y" * 5000 + b"\r\n{12}\r\n")


async def call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def mailbox(dovecot: DovecotInstance, user: str, *, timeout: float = 10,
            **fields) -> ImapMailbox:
    return ImapMailbox(dovecot.connector(user, **fields), dovecot.credentials(user),
                       timeout=timeout)


async def test_r_i4_r_i5_imap_lists_and_fetches_folders_byte_identical(dovecot):
    user = dovecot.new_user()
    inbox = [message(1), message(2, TRICKY), message(3)]
    billing = [message(4), message(5, TRICKY)]
    for raw in inbox:
        await call(dovecot.append, user, "INBOX", raw)
    for raw in billing:
        await call(dovecot.append, user, "Support/Billing", raw)

    mb = mailbox(dovecot, user, folders=("INBOX", "Support/Billing"))
    assert mb.folders() == ["INBOX", "Support/Billing"]
    got = {}
    async with mb:
        for folder in mb.folders():
            keys = await mb.keys(folder)
            fetched = await mb.fetch(folder, keys)
            assert [f.key for f in fetched] == keys
            got[folder] = [f.raw for f in fetched]
    assert got == {"INBOX": inbox, "Support/Billing": billing}
    # BODY.PEEK: fetching marks nothing read (R-B5 keeps the mailbox's unread state).
    stored = await call(dovecot.messages, user)
    assert all("\\Seen" not in s.flags for s in stored)


async def test_r_i4_imap_keys_are_uidvalidity_uid_oldest_first_and_stable(dovecot):
    user = dovecot.new_user()
    for n in range(3):
        await call(dovecot.append, user, "INBOX", message(n))
    uids = [s.uid for s in await call(dovecot.messages, user)]

    async with mailbox(dovecot, user) as mb:
        first = await mb.keys("INBOX")
    async with mailbox(dovecot, user, tls="starttls") as mb:
        second = await mb.keys("INBOX")
    assert first == second
    validity = {key.split(":")[0] for key in first}
    assert len(validity) == 1 and validity.pop().isdigit()
    assert [int(key.split(":")[1]) for key in first] == sorted(uids)


async def test_r_i4_imap_fetch_then_remove_deletes_only_given_uids(dovecot):
    user = dovecot.new_user()
    raws = [message(n) for n in range(5)]
    for raw in raws:
        await call(dovecot.append, user, "INBOX", raw)

    async with mailbox(dovecot, user) as mb:
        keys = await mb.keys("INBOX")
        fetched = await mb.fetch("INBOX", keys[1:4])
        assert [f.raw for f in fetched] == raws[1:4]
        await mb.remove("INBOX", [keys[1], keys[3]])
        assert await mb.keys("INBOX") == [keys[0], keys[2], keys[4]]
    assert await call(dovecot.raw_messages, user) == [raws[0], raws[2], raws[4]]


async def test_r_i4_imap_removed_message_is_left_out_of_a_later_fetch(dovecot):
    user = dovecot.new_user()
    for n in range(2):
        await call(dovecot.append, user, "INBOX", message(n))
    async with mailbox(dovecot, user) as mb:
        keys = await mb.keys("INBOX")
        await mb.remove("INBOX", keys[:1])
        assert [f.key for f in await mb.fetch("INBOX", keys)] == keys[1:]


async def test_r_b5_imap_keep_on_server_marks_seen_and_keeps(dovecot):
    user = dovecot.new_user()
    raws = [message(n) for n in range(3)]
    for raw in raws:
        await call(dovecot.append, user, "INBOX", raw)

    async with mailbox(dovecot, user, keep_on_server=True) as mb:
        keys = await mb.keys("INBOX")
        await mb.fetch("INBOX", keys)
        await mb.remove("INBOX", keys[:2])
    stored = await call(dovecot.messages, user)
    assert [s.raw for s in stored] == raws
    assert ["\\Seen" in s.flags for s in stored] == [True, True, False]
    assert all("\\Deleted" not in s.flags for s in stored)


async def test_r_i4_imap_keys_of_another_uidvalidity_are_never_fetched_or_removed(dovecot):
    user = dovecot.new_user()
    await call(dovecot.append, user, "INBOX", message(1))
    async with mailbox(dovecot, user) as mb:
        [key] = await mb.keys("INBOX")
        validity, uid = key.split(":")
        stale = f"{int(validity) + 1}:{uid}"
        assert await mb.fetch("INBOX", [stale, "junk", ""]) == []
        await mb.remove("INBOX", [stale])
    assert await call(dovecot.count, user) == 1


async def test_r_i4_imap_drains_a_large_batch_of_tiny_messages(dovecot):
    """Thousands of tiny messages arrive in few reads: upstream aioimaplib recursed
    once per line there (iroco-co/aioimaplib#118); fetch and remove must cope."""
    user = dovecot.new_user()
    raws = [b"Subject: %d\r\n\r\nx\r\n" % n for n in range(1500)]
    await call(dovecot.seed, user, raws)
    async with mailbox(dovecot, user) as mb:
        keys = await mb.keys("INBOX")
        fetched = await mb.fetch("INBOX", keys)
        assert sorted(f.raw for f in fetched) == sorted(raws)
        await mb.remove("INBOX", keys)
        assert await mb.keys("INBOX") == []
    assert await call(dovecot.count, user) == 0


async def test_r_i4_imap_without_uidplus_falls_back_to_expunge(dovecot):
    user = dovecot.new_user()
    for n in range(3):
        await call(dovecot.append, user, "INBOX", message(n))
    async with mailbox(dovecot, user) as mb:
        mb._protocol.capabilities.discard("UIDPLUS")    # as a server without RFC 4315
        keys = await mb.keys("INBOX")
        await mb.remove("INBOX", keys[:2])
    assert await call(dovecot.raw_messages, user) == [message(2)]


async def test_r_i5_imap_folder_names_with_spaces_and_non_ascii(dovecot):
    user = dovecot.new_user()
    # Spelled in modified UTF-7 by hand (RFC 3501 5.1.3): "Team Inbox/Entrées & co".
    await call(dovecot.append, user, "Team Inbox/Entr&AOk-es &- co", message(7))
    async with mailbox(dovecot, user) as mb:
        folder = "Team Inbox/Entrées & co"
        keys = await mb.keys(folder)
        assert [f.raw for f in await mb.fetch(folder, keys)] == [message(7)]


async def test_r_i5_imap_missing_folder_raises_with_server_text(dovecot):
    user = dovecot.new_user()
    async with mailbox(dovecot, user) as mb:
        with pytest.raises(MailboxError, match="Mailbox doesn't exist"):
            await mb.keys("No Such Folder")
        assert await mb.keys("INBOX") == []      # the session is still usable


@pytest.mark.parametrize("tls", ["implicit", "starttls", "none"])
async def test_r_c4_imap_tls_modes_with_the_test_ca(dovecot, tls):
    user = dovecot.new_user()
    await call(dovecot.append, user, "INBOX", message(1))
    async with mailbox(dovecot, user, tls=tls) as mb:
        keys = await mb.keys("INBOX")
        assert [f.raw for f in await mb.fetch("INBOX", keys)] == [message(1)]
        if tls != "none":
            assert mb._transport.get_extra_info("ssl_object") is not None


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_r_c4_imap_server_cert_from_another_ca_is_refused(dovecot, tls):
    user = dovecot.new_user()
    mb = mailbox(dovecot, user, tls=tls, ca_file=dovecot.stranger_ca_file)
    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED"):
        await mb.open()
    # tls_verify=False is the explicit way to accept it (R-C4).
    mb = mailbox(dovecot, user, tls=tls, ca_file=dovecot.stranger_ca_file, tls_verify=False)
    async with mb:
        assert await mb.keys("INBOX") == []


async def test_r_c4_imap_without_ca_file_the_test_ca_is_not_trusted(dovecot):
    user = dovecot.new_user()
    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED"):
        await mailbox(dovecot, user, ca_file="").open()


async def test_r_c3_imap_wrong_password_gives_dovecots_exact_text(dovecot):
    user = dovecot.new_user()
    mb = ImapMailbox(dovecot.connector(user), Credentials(user, "wrong"), timeout=10)
    with pytest.raises(MailboxError) as refused:
        await mb.open()
    assert str(refused.value) == "[AUTHENTICATIONFAILED] Authentication failed."
    await mb.close()        # harmless after a failed open


async def test_r_c3_imap_test_reports_what_it_saw(dovecot):
    user = dovecot.new_user()
    await call(dovecot.append, user, "INBOX", message(1))
    mb = open_mailbox(dovecot.connector(user), dovecot.credentials(user), timeout=10)
    assert isinstance(mb, ImapMailbox)
    assert await mb.test() == "imap: logged in; INBOX holds 1 message(s)"


async def test_r_c1_imap_shared_mailbox_via_master_login_reads_other_inbox(dovecot):
    owner = dovecot.new_user("shared")
    await call(dovecot.append, owner, "INBOX", message(42))
    connector = dovecot.connector(owner, shared_mailbox=owner)
    master = Credentials(dovecot.master_user, dovecot.master_password)
    async with ImapMailbox(connector, master, timeout=10) as mb:
        keys = await mb.keys("INBOX")
        assert [f.raw for f in await mb.fetch("INBOX", keys)] == [message(42)]


def test_r_c1_login_name_for_shared_mailboxes():
    plain = Connector(name="c", service="other", primary_address="a@x.test")
    dovecot_style = dataclasses.replace(plain, shared_mailbox="shared@x.test")
    o365 = dataclasses.replace(dovecot_style, service="o365_imap")
    assert login_name(plain, "me@x.test") == "me@x.test"
    assert login_name(dovecot_style, "me@x.test") == "shared@x.test*me@x.test"
    assert login_name(o365, "me@x.test") == "me@x.test\\shared@x.test"


def test_imap_wire_helpers():
    assert uid_set([9, 1, 2, 3, 7, 10, 2]) == "1:3,7,9:10"
    assert uid_set([]) == ""
    assert encode_mailbox("INBOX") == "INBOX"
    assert encode_mailbox("Entrées & co") == "Entr&AOk-es &- co"
    assert encode_mailbox("台北") == "&U,BTFw-"          # RFC 3501 5.1.3's example
    lines = [b"1 FETCH (UID 5 BODY[] {3}", bytearray(b"abc"), b")",
             b"2 FETCH (FLAGS (\\Seen))",
             b"3 FETCH (BODY[] {2}", bytearray(b"de"), b" UID 7)", b"Fetch completed."]
    assert parse_fetch(lines) == {5: b"abc", 7: b"de"}


# -- a dead or dying server never hangs the poller -------------------------------------

@pytest.mark.parametrize("tls", ["none", "implicit", "starttls"])
async def test_r_i4_imap_silent_server_times_out_with_mailbox_error(silent_server, tls):
    connector = Connector(name="c", service="other", primary_address="a@x.test",
                          protocol="imap", host="127.0.0.1", port=silent_server, tls=tls)
    mb = ImapMailbox(connector, Credentials("u", "p"), timeout=1)
    started = time.monotonic()
    with pytest.raises(MailboxError, match="no reply within 1 s"):
        await mb.open()
    assert time.monotonic() - started < 3


@pytest.fixture
async def hanging_up_server():
    """Greets, answers CAPABILITY, and hangs up on anything else (say, LOGIN)."""
    async def serve(reader, writer):
        writer.write(b"* OK fake ready\r\n")
        while line := await reader.readline():
            tag, _, command = line.decode().strip().partition(" ")
            if command.upper() != "CAPABILITY":
                break
            writer.write(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_r_i4_imap_connection_dropped_mid_command_fails_fast(hanging_up_server):
    connector = Connector(name="c", service="other", primary_address="a@x.test",
                          protocol="imap", host="127.0.0.1", port=hanging_up_server,
                          tls="none")
    mb = ImapMailbox(connector, Credentials("u", "p"), timeout=20)
    started = time.monotonic()
    with pytest.raises(MailboxError, match="LOGIN: connection closed by the server"):
        await mb.open()
    assert time.monotonic() - started < 5       # the drop is noticed, not timed out


async def test_r_i4_imap_dropped_session_raises_and_close_does_not(dovecot):
    user = dovecot.new_user()
    mb = mailbox(dovecot, user, timeout=5)
    await mb.open()
    mb._transport.abort()                       # the network goes away
    with pytest.raises(MailboxError):
        await mb.keys("INBOX")
    await mb.close()                            # never raises
    async with mb:                              # the next round opens a new session
        assert await mb.keys("INBOX") == []


async def test_r_i4_imap_and_pop3_name_the_large_messages_so_they_are_fetched_alone(dovecot):
    from gateway.polling.mailboxes import open_mailbox
    from gateway.protocols.mailbox import LARGE_MESSAGE
    user = dovecot.new_user("big")
    small = b"Subject: small\r\n\r\nhi\r\n"
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (LARGE_MESSAGE // 1000 + 10)
    for raw in (small, big, small):
        await asyncio.to_thread(dovecot.append, user, "INBOX", raw)
    for protocol in ("imap", "pop3"):
        async with open_mailbox(dovecot.connector(user, protocol=protocol),
                                dovecot.credentials(user)) as mailbox:
            keys = await mailbox.keys("INBOX")
            if protocol == "imap":      # learnt with the bytes, at most PARTIAL of each
                assert mailbox.large == set()
                fetched = await mailbox.fetch("INBOX", keys)
                assert [(f.key, f.raw) for f in fetched] == [(keys[0], small),
                                                             (keys[2], small)]
            assert mailbox.large == {keys[1]}, protocol
            [fetched] = await mailbox.fetch("INBOX", [keys[1]])
            assert fetched.raw == big
        if protocol == "imap":          # a later session knows it from the start
            async with mailbox:
                keys = await mailbox.keys("INBOX")
                assert mailbox.large == {keys[1]} and mailbox.too_large == {}


async def test_r_i3_imap_names_mail_over_the_limit_as_it_fetches_and_remembers_it(dovecot):
    """No size search before fetching: a message whose size (RFC822.SIZE, or its bytes
    when whole) is over the gateway's limit is left out of the fetch and named in
    too_large, and a later session of the same mailbox knows it before fetching."""
    from gateway.protocols.mailbox import LARGE_MESSAGE
    user = dovecot.new_user("limit")
    small = b"Subject: small\r\n\r\nhi\r\n"
    medium = b"Subject: medium\r\n\r\n" + b"m" * 5000 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (LARGE_MESSAGE // 1000 + 10)
    for raw in (small, big, medium):
        await call(dovecot.append, user, "INBOX", raw)
    mb = ImapMailbox(dovecot.connector(user), dovecot.credentials(user), max_size=4000)
    async with mb:
        keys = await mb.keys("INBOX")
        assert [f.raw for f in await mb.fetch("INBOX", keys)] == [small]
        assert mb.too_large == {keys[1]: len(big), keys[2]: len(medium)}
    async with mb:
        assert await mb.keys("INBOX") == keys
        assert mb.too_large == {keys[1]: len(big), keys[2]: len(medium)}


async def test_imap_idle_wakes_on_new_mail_across_renewals_and_fails_loudly_on_a_drop(dovecot):
    """RFC 2177: every new message wakes the watcher, also after IDLE was ended with DONE
    and issued again; a connection that drops ends the watch in a MailboxError."""
    user = dovecot.new_user()
    mb = mailbox(dovecot, user)
    woken = asyncio.Event()
    await mb.open()
    watching = asyncio.ensure_future(mb.watch("INBOX", woken.set, renew=0.3))
    try:
        for n in range(2):
            await asyncio.sleep(0.8)                  # at least two renewals in between
            assert not woken.is_set()
            await call(dovecot.append, user, "INBOX", message(n))
            await asyncio.wait_for(woken.wait(), 10)
            woken.clear()
        assert not watching.done()
        mb._transport.abort()                         # the server "goes away"
        with pytest.raises(MailboxError):
            await asyncio.wait_for(watching, 10)
    finally:
        watching.cancel()
        mb.abort()


async def _listening(mb: ImapMailbox) -> None:
    while mb._protocol is None or not mb._protocol.has_pending_idle_command():
        await asyncio.sleep(0.01)


async def test_imap_idle_held_by_a_round_is_out_of_idle_and_wakes_only_for_new_mail(dovecot):
    """A round holds the watcher (WatchHold): its session leaves IDLE, so it is told
    nothing of what the round removes; after the round it wakes the poller only when
    mail came meanwhile (UIDNEXT moved), not for the removal."""
    user = dovecot.new_user()
    for n in range(3):
        await call(dovecot.append, user, "INBOX", message(n))
    mb, hold, woken = mailbox(dovecot, user), WatchHold(), asyncio.Event()
    await mb.open()
    watching = asyncio.ensure_future(mb.watch("INBOX", woken.set, hold=hold))
    try:
        await asyncio.wait_for(_listening(mb), 10)
        await hold.hold(10)                           # a round that drains the folder
        assert not mb._protocol.has_pending_idle_command()
        async with mailbox(dovecot, user) as rounds:
            await rounds.remove("INBOX", await rounds.keys("INBOX"))
        hold.release()
        await asyncio.wait_for(_listening(mb), 10)
        await asyncio.sleep(0.3)
        assert not woken.is_set()                     # removing is not new mail

        await hold.hold(10)                           # a round during which mail comes
        await call(dovecot.append, user, "INBOX", message(7))
        await asyncio.sleep(0.3)
        assert not woken.is_set()                     # not in IDLE: told nothing yet
        hold.release()
        await asyncio.wait_for(woken.wait(), 10)      # ...but woken once the round ended
        await asyncio.wait_for(_listening(mb), 10)
        assert not watching.done()
    finally:
        watching.cancel()
        mb.abort()


async def test_imap_idle_watcher_that_starts_during_a_round_wakes_the_poller_after_it(
        dovecot):
    """A watcher that connects while a round runs cannot tell what arrived between the
    round's listing and its own first look, so it wakes the poller once the round ends."""
    user = dovecot.new_user()
    mb, hold, woken = mailbox(dovecot, user), WatchHold(), asyncio.Event()
    await hold.hold(10)                               # nobody listens: no wait
    await mb.open()
    watching = asyncio.ensure_future(mb.watch("INBOX", woken.set, hold=hold))
    try:
        await asyncio.sleep(0.5)
        assert not woken.is_set() and not mb._protocol.has_pending_idle_command()
        hold.release()
        await asyncio.wait_for(woken.wait(), 10)
        await asyncio.wait_for(_listening(mb), 10)
    finally:
        watching.cancel()
        mb.abort()


@pytest.mark.parametrize("move", [True, False], ids=["UID MOVE", "COPY then EXPUNGE"])
async def test_r_b5_move_to_moves_processed_mail_with_or_without_the_move_extension(
        dovecot, move):
    user = dovecot.new_user()
    for n in range(3):
        await call(dovecot.append, user, "INBOX", message(n))
    mb = mailbox(dovecot, user, move_to="Done/2026")
    async with mb:
        if not move:                                  # a server without RFC 6851
            mb._protocol.capabilities.discard("MOVE")
        keys = await mb.keys("INBOX")
        await mb.remove("INBOX", keys[:2])
    assert await call(dovecot.raw_messages, user, "INBOX") == [message(2)]
    assert await call(dovecot.raw_messages, user, "Done/2026") == [message(0), message(1)]
