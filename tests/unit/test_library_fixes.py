"""The library workarounds (gateway/protocols/*_fixes.py): still needed, still right.

Two kinds of test. The hash tests fail when the installed aioimaplib or aiosmtpd, or
the running Python's poplib, changes the upstream code a workaround replaces or relies
on: the fixes module says what to re-check, and only then is the recorded hash
updated. The behaviour tests show each replacement still does its job with the
installed library.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import itertools
import platform
import poplib
import random
import socket
import ssl
import sys
import threading

import aioimaplib.aioimaplib as aioimaplib
import aiosmtpd.lmtp
import aiosmtpd.smtp
import pytest

from gateway.protocols import aioimaplib_fixes, aiosmtpd_fixes, poplib_fixes
from gateway.protocols.aioimaplib_fixes import ImapProtocol, UidFetch
from gateway.protocols.aiosmtpd_fixes import SmtpWorkarounds
from gateway.protocols.imap import parse_fetch
from gateway.protocols.poplib_fixes import MAX_LINE, Pop3Client, connection_closed

FIXES = [(aioimaplib_fixes, aioimaplib, "aioimaplib"),
         (aiosmtpd_fixes, aiosmtpd.smtp, "aiosmtpd"),
         (poplib_fixes, poplib, "poplib")]


def _installed(dist: str) -> str:
    if dist in sys.stdlib_module_names:
        return (f"Python {platform.python_version()}'s standard-library {dist} (stdlib "
                f"code changes with the Python version, not with a pin: a new Python, "
                f"even a patch release, can change it)")
    return f"{dist} {importlib.metadata.version(dist)}"


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
        f"{_installed(dist)} changed code that "
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


@pytest.mark.parametrize("piece", [None, 5, 4099])
async def test_replacements_hand_over_the_same_response_as_upstream(piece):
    """Same contract: for a reply small enough for upstream, the same lines and
    literals, in the same order and of the same types (parse_fetch tells literals
    by their bytearray type), whether whole items arrive in one read (ImapProtocol
    takes them in one step) or cut anywhere."""
    ours = await _run_fetch(ImapProtocol, _uid_fetch, 60, piece)
    theirs = await _run_fetch(aioimaplib.IMAP4ClientProtocol, _upstream_fetch, 60, piece)
    assert (ours.result, [(type(x), bytes(x)) for x in ours.lines]) == \
           (theirs.result, [(type(x), bytes(x)) for x in theirs.lines])


# FETCH items the one-step path must take, or leave to upstream's path, as servers send
# them: UID after the literal, flags before it, an unsolicited flag change, a stray "* "
# inside the line, an empty literal, a line cut before its literal ends.
ODD_ITEMS = (b"* 1 FETCH (BODY[] {5}\r\nhello UID 7)\r\n"
             b"* 2 FETCH (FLAGS (\\Seen) UID 8 BODY[] {3}\r\nabc)\r\n"
             b"* 2 FETCH (FLAGS (\\Seen \\Deleted))\r\n"
             b"* 3 FETCH (UID 9 X-NOTE \"a * b\" BODY[] {2}\r\n) )\r\n"
             b"* 4 FETCH (UID 10 BODY[] {0}\r\n)\r\n"
             b"* 5 FETCH (UID 11 BODY[] {4}\r\n)\r\n)\r\n"
             b"* 6 FETCH (UID 12 BODY[] {3}\r\nxyz UID 12)\r\n")


async def _odd_fetch(protocol_class, make_command, piece: int | None):
    loop = asyncio.get_running_loop()
    protocol = protocol_class(loop)
    protocol.connection_made(_Wire())
    protocol.state = aioimaplib.SELECTED
    command = make_command(protocol.new_tag(), "1:6", loop)
    running = asyncio.ensure_future(protocol.execute(command))
    await asyncio.sleep(0)
    reply = ODD_ITEMS + command.tag.encode() + b" OK Fetch completed.\r\n"
    for i in range(0, len(reply), piece or len(reply)):
        protocol.data_received(reply[i:i + (piece or len(reply))])
    return await asyncio.wait_for(running, 5)


@pytest.mark.parametrize("piece", [None, 1, 3, 17])
async def test_odd_fetch_items_give_the_same_response_as_upstream(piece):
    ours = await _odd_fetch(ImapProtocol, _uid_fetch, piece)
    theirs = await _odd_fetch(aioimaplib.IMAP4ClientProtocol, _upstream_fetch, piece)
    assert (ours.result, [(type(x), bytes(x)) for x in ours.lines]) == \
           (theirs.result, [(type(x), bytes(x)) for x in theirs.lines])
    assert parse_fetch(ours.lines) == {7: b"hello", 8: b"abc", 9: b") ", 10: b"",
                                       11: b")\r\n)", 12: b"xyz"}


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


# -- poplib: Pop3Client, Pop3SslClient --------------------------------------------------

GREETING = b"+OK ready\r\n"


class _Pop3Script:
    """A one-connection POP3 server on 127.0.0.1: sends ``replies`` at once (the client
    reads them as answers to whatever it sends), then, with ``hang_up``, shuts its
    side; records what the client sends until the client closes."""

    def __init__(self, replies: bytes, *, hang_up: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.client_closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(replies, hang_up),
                                       daemon=True)
        self.thread.start()

    def _serve(self, replies: bytes, hang_up: bool) -> None:
        with self.listener, self.listener.accept()[0] as conn:
            conn.settimeout(5)
            try:
                conn.sendall(replies)
                if hang_up:
                    conn.shutdown(socket.SHUT_WR)
                while data := conn.recv(65536):
                    self.received += data
                self.client_closed.set()
            except OSError:
                pass

    def finish(self) -> bytes:
        self.thread.join(5)
        return self.received


def test_lines_longer_than_poplibs_2048_bytes_are_read_whole():
    reply = GREETING + b"+OK\r\n" + b"a" * 5000 + b"\r\n..x\r\n.\r\n"
    server = _Pop3Script(reply)
    client = Pop3Client("127.0.0.1", server.port, timeout=5)
    try:
        assert client.retr(1)[1] == [b"a" * 5000, b".x"]
    finally:
        client.close()
    assert Pop3Client.max_line == MAX_LINE > 2048


def test_upstream_still_refuses_lines_longer_than_2048_bytes():
    """Why Pop3Client replaces _getline. When this fails, poplib reads long lines
    itself: re-check poplib_fixes and whether the override is still needed."""
    server = _Pop3Script(GREETING + b"+OK\r\n" + b"a" * 5000 + b"\r\n.\r\n")
    client = poplib.POP3("127.0.0.1", server.port, timeout=5)
    try:
        with pytest.raises(poplib.error_proto, match="line too long"):
            client.retr(1)
    finally:
        client.close()


def test_a_line_longer_than_max_line_is_refused():
    class Small(Pop3Client):
        max_line = 4096

    # max_line counts the line with its CRLF: 4096 bytes pass, 4097 do not.
    reply = (GREETING + b"+OK\r\n" + b"b" * 4094 + b"\r\n.\r\n"
             + b"+OK\r\n" + b"c" * 4095 + b"\r\n.\r\n")
    server = _Pop3Script(reply)
    client = Small("127.0.0.1", server.port, timeout=5)
    try:
        assert client.retr(1)[1] == [b"b" * 4094]
        with pytest.raises(poplib.error_proto) as refused:
            client.retr(2)
        assert refused.value.args == ("-ERR line too long",)
        assert not connection_closed(refused.value)
    finally:
        client.close()


def test_a_refused_greeting_closes_the_socket_at_once():
    server = _Pop3Script(b"-ERR go away\r\n")
    with pytest.raises(poplib.error_proto, match="go away") as failed:
        Pop3Client("127.0.0.1", server.port, timeout=5)
    # `failed` still holds the half-built client (through its traceback); the server
    # sees the connection end all the same.
    assert server.client_closed.wait(5)
    assert failed.value


def test_upstream_still_leaves_the_socket_open_after_a_refused_greeting():
    """Why Pop3Client wraps __init__. When this fails, poplib closes the socket
    itself: drop the wrapper."""
    server = _Pop3Script(b"-ERR go away\r\n")
    with pytest.raises(poplib.error_proto, match="go away") as failed:
        poplib.POP3("127.0.0.1", server.port, timeout=5)
    try:
        assert not server.client_closed.wait(0.3)
    finally:
        half_built = [entry.locals["self"] for entry in failed.traceback
                      if entry.name == "__init__"][-1]
        half_built.close()
    assert server.client_closed.wait(5)


def test_retr_pipelined_sends_all_retrs_and_reads_each_reply_in_order():
    reply = (GREETING
             + b"+OK 1\r\nline\r\n..dot\r\n.\r\n"          # dot-stuffing undone
             + b"-ERR no such message\r\n"                      # deleted meanwhile
             + b"+OK 3\r\n" + b"y" * 5000 + b"\r\n.\r\n")
    server = _Pop3Script(reply, hang_up=True)
    client = Pop3Client("127.0.0.1", server.port, timeout=5)
    try:
        assert client.retr_pipelined([1, 2, 3]) == [[b"line", b".dot"], None, [b"y" * 5000]]
        with pytest.raises(poplib.error_proto) as closed:  # a closed connection is no
            client.retr_pipelined([4, 5])                  # deleted message: it raises
        assert connection_closed(closed.value)
    finally:
        client.close()
    assert server.finish() == b"RETR 1\r\nRETR 2\r\nRETR 3\r\nRETR 4\r\nRETR 5\r\n"


def _failed_stls() -> Pop3Client:
    server = _Pop3Script(GREETING + b"+OK\r\nSTLS\r\n.\r\n+OK begin TLS\r\n",
                         hang_up=True)
    client = Pop3Client("127.0.0.1", server.port, timeout=5)
    with pytest.raises(OSError):        # the server hangs up instead of a TLS handshake
        client.stls(ssl.create_default_context())
    return client


def test_close_quietly_closes_after_a_failed_stls_handshake():
    client = _failed_stls()
    client.close_quietly()
    assert client.sock is None and client.file is None


def test_upstream_close_still_raises_after_a_failed_stls_handshake():
    """Why close_quietly exists. When this fails, POP3.close copes with the detached
    socket a failed STLS leaves: close_quietly can go."""
    client = _failed_stls()
    with pytest.raises(OSError):
        client.close()


def test_pop3_ssl_overrides_only_what_poplib_fixes_knows_of():
    """Pop3SslClient puts Pop3Client's overrides before POP3_SSL's, and the hashes of
    REPLACED_UPSTREAM are taken on POP3. A new override in POP3_SSL would be silently
    bypassed, or unchecked: read it, adapt poplib_fixes, record its hash."""
    own = {name for name in vars(poplib.POP3_SSL)
           if name == "__init__" or not (name.startswith("__") and name.endswith("__"))}
    assert own == {"__init__", "_create_socket", "stls"}, (
        f"Python {platform.python_version()}'s poplib.POP3_SSL now defines {sorted(own)}")
