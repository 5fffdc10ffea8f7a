"""Pop3Mailbox against a real Dovecot (R-I4, R-C1, R-C3, R-C4, R-B5; notes A16).

Each test has its own Dovecot user, so the module shares one server; seeding and
reading back run in a worker thread, never on the event loop.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from gateway.model import Connector
from gateway.polling.mailboxes import open_mailbox
from gateway.protocols.mailbox import Credentials, MailboxError
from gateway.protocols.pop3 import Pop3Mailbox
from tests.dovecot import DovecotInstance

pytestmark = pytest.mark.timeout(30)

# A dot-stuffed line on the wire (".", "..x"), 8-bit bytes, and a line longer than
# poplib's 2,048-byte default limit.
TRICKY = b".\r\n..x\r\n.end\r\ncaf\xe9\r\n" + b"z" * 5000 + b"\r\n"


def message(n: int, extra: bytes = b"") -> bytes:
    return (b"From: s@origin.test\r\nSubject: pop %d\r\nMessage-ID: <p%d@origin.test>\r\n"
            b"\r\nbody %d\r\n" % (n, n, n)) + extra


async def call(fn, *args):
    return await asyncio.to_thread(fn, *args)


def mailbox(dovecot: DovecotInstance, user: str, *, tls: str = "implicit", timeout: float = 10,
            **fields) -> Pop3Mailbox:
    return Pop3Mailbox(dovecot.connector(user, protocol="pop3", tls=tls, **fields),
                       dovecot.credentials(user), timeout=timeout)


async def seed(dovecot: DovecotInstance, user: str, raws: list[bytes]) -> None:
    for raw in raws:
        await call(dovecot.append, user, "INBOX", raw)


async def test_r_i4_pop3_uidl_keys_and_retr_bytes_identical(dovecot):
    user = dovecot.new_user()
    raws = [message(1), message(2, TRICKY), message(3)]
    await seed(dovecot, user, raws)
    mb = mailbox(dovecot, user, folders=("INBOX", "Ignored"))
    assert mb.folders() == ["INBOX"]          # POP3 has one folder
    async with mb:
        keys = await mb.keys("INBOX")
        assert len(set(keys)) == 3
        assert all(0 < len(k) <= 70 and k.isprintable() and " " not in k for k in keys)
        fetched = await mb.fetch("INBOX", keys)
    assert [f.key for f in fetched] == keys
    assert [f.raw for f in fetched] == raws


async def test_r_i4_pop3_keys_are_stable_across_sessions(dovecot):
    user = dovecot.new_user()
    await seed(dovecot, user, [message(1), message(2)])
    async with mailbox(dovecot, user) as mb:
        first = await mb.keys("INBOX")
    async with mailbox(dovecot, user, tls="starttls") as mb:
        assert await mb.keys("INBOX") == first


async def test_r_i4_pop3_dele_commits_at_quit_and_only_given_keys(dovecot):
    user = dovecot.new_user()
    raws = [message(n) for n in range(4)]
    await seed(dovecot, user, raws)
    async with mailbox(dovecot, user) as mb:
        keys = await mb.keys("INBOX")
        await mb.fetch("INBOX", keys)
        await mb.remove("INBOX", [keys[0], keys[2], "no-such-uidl"])
        assert await call(dovecot.count, user) == 4     # not before QUIT
    assert await call(dovecot.raw_messages, user) == [raws[1], raws[3]]
    async with mailbox(dovecot, user) as mb:            # the survivors keep their keys
        assert await mb.keys("INBOX") == [keys[1], keys[3]]


async def test_r_i4_pop3_session_dropped_before_quit_leaves_the_messages(dovecot):
    user = dovecot.new_user()
    raws = [message(n) for n in range(3)]
    await seed(dovecot, user, raws)
    mb = mailbox(dovecot, user)
    await mb.open()
    keys = await mb.keys("INBOX")
    await mb.remove("INBOX", keys)
    mb.abort()                                  # the connection dies before QUIT
    await mb.close()                            # nothing left to close: no error
    assert await call(dovecot.raw_messages, user) == raws
    async with mb:                              # next round: all of them again
        assert await mb.keys("INBOX") == keys


async def test_r_b5_pop3_keep_on_server_deletes_nothing(dovecot):
    user = dovecot.new_user()
    await seed(dovecot, user, [message(1), message(2)])
    async with mailbox(dovecot, user, keep_on_server=True) as mb:
        keys = await mb.keys("INBOX")
        await mb.fetch("INBOX", keys)
        await mb.remove("INBOX", keys)
    assert await call(dovecot.count, user) == 2


async def test_r_i4_pop3_unknown_keys_are_left_out_of_fetch(dovecot):
    user = dovecot.new_user()
    await seed(dovecot, user, [message(1)])
    async with mailbox(dovecot, user) as mb:
        keys = await mb.keys("INBOX")
        fetched = await mb.fetch("INBOX", ["gone", *keys])
    assert [f.key for f in fetched] == keys


@pytest.mark.parametrize("tls", ["implicit", "starttls", "none"])
async def test_r_c4_pop3_tls_modes_with_the_test_ca(dovecot, tls):
    user = dovecot.new_user()
    await seed(dovecot, user, [message(1)])
    async with mailbox(dovecot, user, tls=tls) as mb:
        keys = await mb.keys("INBOX")
        assert [f.raw for f in await mb.fetch("INBOX", keys)] == [message(1)]
        assert (mb._client.sock.__class__.__name__ == "SSLSocket") == (tls != "none")


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_r_c4_pop3_server_cert_from_another_ca_is_refused(dovecot, tls):
    user = dovecot.new_user()
    mb = mailbox(dovecot, user, tls=tls, ca_file=dovecot.stranger_ca_file)
    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED"):
        await mb.open()
    mb = mailbox(dovecot, user, tls=tls, ca_file=dovecot.stranger_ca_file, tls_verify=False)
    async with mb:
        assert await mb.keys("INBOX") == []


async def test_r_c3_pop3_wrong_password_gives_the_servers_err_text(dovecot):
    user = dovecot.new_user()
    mb = Pop3Mailbox(dovecot.connector(user, protocol="pop3"), Credentials(user, "wrong"),
                     timeout=10)
    with pytest.raises(MailboxError) as refused:
        await mb.open()
    assert str(refused.value) == "[AUTH] Authentication failed."
    await mb.close()


async def test_r_c3_pop3_test_reports_what_it_saw(dovecot):
    user = dovecot.new_user()
    await seed(dovecot, user, [message(1), message(2)])
    mb = open_mailbox(dovecot.connector(user, protocol="pop3"), dovecot.credentials(user),
                      timeout=10)
    assert isinstance(mb, Pop3Mailbox)
    assert await mb.test() == "pop3: logged in; INBOX holds 2 message(s)"


async def test_r_c1_pop3_shared_mailbox_via_master_login(dovecot):
    owner = dovecot.new_user("shared")
    await seed(dovecot, owner, [message(9)])
    connector = dovecot.connector(owner, protocol="pop3", shared_mailbox=owner)
    master = Credentials(dovecot.master_user, dovecot.master_password)
    async with Pop3Mailbox(connector, master, timeout=10) as mb:
        keys = await mb.keys("INBOX")
        assert [f.raw for f in await mb.fetch("INBOX", keys)] == [message(9)]


@pytest.mark.parametrize("tls", ["none", "implicit"])
async def test_r_i4_pop3_silent_server_times_out_with_mailbox_error(silent_server, tls):
    connector = Connector(name="c", service="other", primary_address="a@x.test",
                          protocol="pop3", host="127.0.0.1", port=silent_server, tls=tls)
    mb = Pop3Mailbox(connector, Credentials("u", "p"), timeout=1)
    started = time.monotonic()
    with pytest.raises(MailboxError, match="no reply within 1 s"):
        await mb.open()
    assert time.monotonic() - started < 3


async def test_r_i4_pop3_calls_before_open_raise_mailbox_error():
    connector = Connector(name="c", service="other", primary_address="a@x.test",
                          protocol="pop3", host="127.0.0.1", port=1, tls="none")
    with pytest.raises(MailboxError, match="not open"):
        await Pop3Mailbox(connector, Credentials("u", "p")).keys("INBOX")


async def test_r_i4_pop3_pipelined_and_one_by_one_retr_give_the_same_bytes(dovecot):
    """Dovecot announces PIPELINING (RFC 2449), so a batch's RETRs go out at once; a
    server without it gets them one by one. Both read dot-stuffing and a message
    deleted meanwhile the same way."""
    user = dovecot.new_user()
    raws = [message(1), message(2, TRICKY), message(3)]
    await seed(dovecot, user, raws)
    results = {}
    for pipelining in (True, False):
        async with mailbox(dovecot, user) as mb:
            assert mb._client.pipelining is True         # what Dovecot's CAPA says
            mb._client.pipelining = pipelining
            keys = await mb.keys("INBOX")
            results[pipelining] = [f.raw for f in await mb.fetch("INBOX", keys)]
            mb.abort()                                   # no QUIT: nothing deleted
    assert results[True] == results[False] == raws
