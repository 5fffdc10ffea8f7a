"""The library workarounds (gateway/protocols/*_fixes.py): still needed, still right.

Two kinds of test. The hash tests fail when the installed aioimaplib or aiosmtpd
changes the upstream code a workaround replaces or relies on: the fixes module says
what to re-check, and only then is the recorded hash updated. The behaviour tests
show each replacement still does its job with the installed library.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import itertools
import random

import aioimaplib.aioimaplib as aioimaplib
import aiosmtpd.lmtp
import aiosmtpd.smtp
import pytest

from gateway.protocols import aioimaplib_fixes, aiosmtpd_fixes
from gateway.protocols.aioimaplib_fixes import ImapProtocol, UidFetch
from gateway.protocols.aiosmtpd_fixes import SmtpWorkarounds
from gateway.protocols.imap import parse_fetch

FIXES = [(aioimaplib_fixes, aioimaplib, "aioimaplib"),
         (aiosmtpd_fixes, aiosmtpd.smtp, "aiosmtpd")]


@pytest.mark.parametrize("fixes, upstream, dist", FIXES, ids=[d for *_, d in FIXES])
def test_replaced_upstream_code_is_the_code_the_workaround_was_written_for(
        fixes, upstream, dist):
    changed = []
    for name, (recorded, recheck) in fixes.REPLACED_UPSTREAM.items():
        owner, attribute = name.split(".")
        source = inspect.getsource(getattr(getattr(upstream, owner), attribute))
        actual = hashlib.sha256(source.encode()).hexdigest()
        if actual != recorded:
            changed.append(f"{name} (sha256 now {actual}): {recheck}")
    assert not changed, (
        f"{dist} {importlib.metadata.version(dist)} changed code that "
        f"{fixes.__name__} replaces or relies on. Re-read it upstream, adapt or drop "
        f"the workaround, then record the new hash in REPLACED_UPSTREAM:\n- "
        + "\n- ".join(changed))


# -- aioimaplib: ImapProtocol (iroco-co/aioimaplib#118) and UidFetch ---------------------

class _Wire:
    """Just enough transport for a protocol that only sends command lines."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def _body(n: int) -> bytes:
    # Every 7th body carries what a careless splitter would mistake for structure.
    tricky = b") ( {12}\r\n* 3 FETCH (\r\n" if n % 7 == 0 else b""
    return b"Subject: %d\r\n\r\n%sx\r\n" % (n, tricky)


def _fetch_reply(tag: str, count: int) -> bytes:
    parts = [b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (n, 1000 + n, len(_body(n)), _body(n))
             for n in range(1, count + 1)]
    return b"".join(parts) + tag.encode() + b" OK Fetch completed.\r\n"


async def _run_fetch(protocol_class, make_command, count: int, piece: int | None):
    loop = asyncio.get_running_loop()
    protocol = protocol_class(loop)
    protocol.connection_made(_Wire())
    protocol.state = aioimaplib.SELECTED
    command = make_command(protocol.new_tag(), f"1:{count}", loop)
    running = asyncio.ensure_future(protocol.execute(command))
    await asyncio.sleep(0)                      # the command line goes out
    reply = _fetch_reply(command.tag, count)
    pieces = [reply] if piece is None else [reply[i:i + piece]
                                            for i in range(0, len(reply), piece)]
    for data in pieces:
        protocol.data_received(data)
    return await asyncio.wait_for(running, 5)


def _uid_fetch(tag, uids, loop):
    return UidFetch(tag, uids, "(UID BODY.PEEK[])", loop=loop)


def _upstream_fetch(tag, uids, loop):
    return aioimaplib.FetchCommand(tag, uids, "(UID BODY.PEEK[])", prefix="UID", loop=loop)


@pytest.mark.parametrize("piece", [None, 7, 4099])
async def test_thousands_of_tiny_messages_in_one_fetch_parse_without_recursion(piece):
    """Upstream needs about two stack frames per message for one read (#118); the
    replacement parses 3000 in one read, or in reads cut anywhere."""
    response = await _run_fetch(ImapProtocol, _uid_fetch, 3000, piece)
    assert response.result == "OK"
    assert parse_fetch(response.lines) == {1000 + n: _body(n) for n in range(1, 3001)}


async def test_replacements_hand_over_the_same_response_as_upstream():
    """Same contract: for a reply small enough for upstream, the same lines and
    literals, in the same order and of the same types (parse_fetch tells literals
    by their bytearray type)."""
    ours = await _run_fetch(ImapProtocol, _uid_fetch, 60, 5)
    theirs = await _run_fetch(aioimaplib.IMAP4ClientProtocol, _upstream_fetch, 60, 5)
    assert (ours.result, [(type(x), bytes(x)) for x in ours.lines]) == \
           (theirs.result, [(type(x), bytes(x)) for x in theirs.lines])


async def test_uid_fetch_records_each_line_and_literal_as_activity():
    """ImapMailbox._call ends a FETCH after `timeout` seconds without a byte."""
    command = UidFetch("A1", "1", "(UID BODY.PEEK[])", loop=asyncio.get_running_loop())
    command.clock = itertools.count(1).__next__
    command.append_to_resp(b"1 FETCH (UID 5 BODY[] {3}")
    after_line = command.last_activity
    assert command.wait_data()
    command.begin_literal_data(3)
    command.append_literal_data(b"abc")
    after_literal = command.last_activity
    command.append_to_resp(b")")
    assert not command.wait_data()
    assert after_line < after_literal < command.last_activity


# -- aiosmtpd: SmtpWorkarounds ----------------------------------------------------------

class _Handler:
    pass


PLAIN = ["<a@b.test>", "<a@b.test> SIZE=100 BODY=8BITMIME", "<a..b@c.test>", "<.a@c.test>",
         "<{x}+tag@y-z.example>", "<a@-c>", "<a@c>\tX=1", "<a@c>  SIZE=1"]
OTHER = ["<>", "", "<a@.c>", "<a@c..d>", "<a@c.>", '<"a b"@c.test>', "<@r.test:a@c.test>",
         "a@c.test", "<a@c>x", "<%s@c.test>" % ("l" * 65), "<a@[127.0.0.1]>"]


def _same(fast: tuple, upstream: tuple) -> bool:
    """smtp_MAIL/smtp_RCPT only use the rest as ``rest.upper().split()``."""
    return fast[0] == upstream[0] and (fast[1] or "").split() == (upstream[1] or "").split()


async def test_plain_path_fast_path_answers_as_upstream():
    ours, theirs = SmtpWorkarounds(_Handler()), aiosmtpd.smtp.SMTP(_Handler())
    rng = random.Random(5321)
    local, domain = "ab.-+{}'!#$%&*/=?^_`|~", "ab1.-"
    fuzzed = ["<%s@%s>%s" % ("".join(rng.choices(local, k=rng.randint(0, 4))),
                             "".join(rng.choices(domain, k=rng.randint(0, 5))),
                             rng.choice(["", " SIZE=1", "\tA B", "x"]))
              for _ in range(3000)]
    for arg in PLAIN + OTHER + fuzzed:
        assert _same(ours._getaddr(arg), aiosmtpd.smtp.SMTP._getaddr(theirs, arg)), arg


async def test_plain_path_fast_path_takes_plain_paths_and_leaves_the_rest_upstream(monkeypatch):
    session = SmtpWorkarounds(_Handler())
    deferred = []
    monkeypatch.setattr(aiosmtpd.smtp.SMTP, "_getaddr",
                        lambda self, arg: deferred.append(arg) or (None, None))
    for arg in PLAIN:
        assert session._getaddr(arg)[0]
    assert deferred == []
    for arg in OTHER:
        session._getaddr(arg)
    assert deferred == OTHER
    session.local_part_limit = 3
    session._getaddr("<abcd@c.test>")
    assert deferred[-1] == "<abcd@c.test>"


def test_lmtp_still_answers_data_like_smtp():
    """aiosmtpd#517: LMTP inherits SMTP's one-reply DATA, which is why the sessions
    replace smtp_DATA. When this fails LMTP has its own DATA: re-check the reasons in
    aiosmtpd_fixes and whether the replacement is still needed."""
    assert aiosmtpd.lmtp.LMTP.smtp_DATA is aiosmtpd.smtp.SMTP.smtp_DATA


class _ChunkedData(SmtpWorkarounds):
    """The smallest DATA replacement: reads through client_stream, ends the
    transaction through end_transaction, as DurableSession.smtp_DATA does."""

    async def smtp_DATA(self, arg: str) -> None:
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = await self.client_stream().readuntil(b"\r\n.\r\n")
        rcpts = list(self.envelope.rcpt_tos)
        self.end_transaction()
        await self.push("\r\n".join(f"250 {r} got {len(data)} bytes" for r in rcpts))


async def _talk(lines: list[bytes], replies: int) -> list[bytes]:
    server = await asyncio.get_running_loop().create_server(
        lambda: _ChunkedData(_Handler(), hostname="mx.test"), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"".join(lines))
        got = [await asyncio.wait_for(reader.readline(), 5) for _ in range(replies)]
        writer.close()
        return got
    finally:
        server.close()
        await server.wait_closed()


async def test_client_stream_and_end_transaction_serve_a_data_replacement():
    """Pipelined, so any byte the command loop read ahead would be missing from the
    message, and a second DATA after end_transaction finds no recipients."""
    message = b"Subject: x\r\n\r\nbody\r\n.\r\n"
    got = await _talk([b"EHLO c.test\r\n", b"MAIL FROM:<a@b.test>\r\n",
                       b"RCPT TO:<c@d.test>\r\n", b"RCPT TO:<e@f.test>\r\n",
                       b"DATA\r\n", message, b"DATA\r\n", b"QUIT\r\n"], 13)
    replies = [line.decode().rstrip() for line in got]
    assert replies[8:] == ["354 End data with <CR><LF>.<CR><LF>",
                           f"250 c@d.test got {len(message)} bytes",
                           f"250 e@f.test got {len(message)} bytes",
                           "503 Error: need RCPT command",
                           "221 Bye"], replies
