"""Workarounds for the standard library's poplib, kept here so no other module
touches its internals.

Checked against CPython 3.11.7's poplib; pyproject asks for ``requires-python =
">=3.11"``. poplib ships with Python, so it changes with the Python version rather
than with a pin: :data:`REPLACED_UPSTREAM` records a sha256 of the source each piece
was written against, both the code it replaces and the code it relies on, and
``tests/unit/test_library_fixes.py`` fails as soon as the running Python's poplib
differs: re-read the upstream code, adapt or drop the workaround, then record the
new hash.

:class:`Pop3Client` and :class:`Pop3SslClient` are ``poplib.POP3`` and
``poplib.POP3_SSL`` with the changes below, and the only classes that touch poplib's
private members or its undocumented ``sock`` and ``file`` attributes.
``gateway.protocols.pop3`` otherwise uses only poplib's documented API on them
(``user``, ``pass_``, ``capa``, ``stls``, ``uidl``, ``list``, ``retr``, ``dele``,
``quit``, ``error_proto``).

``Pop3Client._getline`` (CPython's poplib has no public setting for its 2048-byte
line limit; no upstream issue known asking for one)
    poplib reads every reply line with ``file.readline(_MAXLINE + 1)`` and raises
    ``error_proto('line too long')`` beyond ``_MAXLINE`` = 2048 bytes. The limit came
    with bpo-16041 (CVE-2013-1752, "poplib: unlimited readline() from connection") and
    follows RFC 1939's 512 octets for replies, but message lines are mail: real mail
    breaks RFC 5322's 998 often enough, and a message we cannot read would be polled
    again forever. ``_MAXLINE`` is a module global read at call time, so the only
    ways to raise it are patching poplib for every user in the process or replacing
    ``_getline``; we replace it. The replacement reads up to :data:`MAX_LINE` bytes
    (the cap only stops a hostile server from growing one line without end; R-I3's
    message limit is 35 MB) and raises ``error_proto('-ERR line too long')`` beyond.
    It ends a line at LF and strips CRLF or LF; unlike upstream it does not drop a
    leading CR (upstream's guess at LF CR line ends), so message bytes pass unchanged,
    and a last line cut off without LF is returned whole (upstream drops its last byte).
    Like upstream, an empty read raises ``error_proto('-ERR EOF')``
    (:func:`connection_closed`). poplib's ``_getresp`` and ``_getlongresp`` read
    through ``self._getline``, so every command (the greeting, CAPA, UIDL, LIST,
    RETR) gets the longer limit.

``Pop3Client.__init__`` (no upstream issue known)
    ``POP3.__init__`` connects, sets ``sock`` and ``file``, then reads the greeting;
    when the greeting fails (``-ERR``, timeout, EOF) it raises and leaves the socket
    open until garbage collection. The override closes ``file`` and ``sock``, if set,
    before re-raising.

:meth:`Pop3Client.retr_pipelined` (RFC 2449 PIPELINING; poplib has no API for it)
    poplib sends one command and waits for its reply. For a server that announces
    PIPELINING, this sends every RETR of a batch at once on ``sock`` and reads the
    replies in order with upstream's ``_getlongresp`` (which undoes dot-stuffing and
    raises ``error_proto`` with the server's line on ``-ERR``): one round trip per
    batch instead of one per message (journal-only POP3 drain 4,234 -> 5,362 msgs/s
    when written, ``bench/pollers.py --journal-only``). A closed connection is raised,
    never taken for a deleted message.

:meth:`Pop3Client.close_quietly` (no upstream issue known)
    ``POP3.close`` raises when the socket's ``shutdown`` fails with anything but
    ENOTCONN. After a failed STLS handshake, ``stls`` has not yet replaced ``sock``,
    which ``ssl`` has already detached, so ``shutdown`` raises EBADF.
    ``close_quietly`` calls ``close`` and swallows ``OSError``: whatever state the
    session is in, its socket ends closed.
"""
from __future__ import annotations

import poplib
from typing import Any

# "<class>.<attribute>" of poplib code as CPython 3.11.7 has it -> (sha256 of
# inspect.getsource(), what to re-check when it changes). Looked up on the poplib
# class, so a new override there changes the hash too; tests/unit/test_library_fixes.py
# also checks that POP3_SSL adds no override of its own beyond those listed here.
REPLACED_UPSTREAM: dict[str, tuple[str, str]] = {
    "POP3._getline": (
        "ce30f90df35ea3cfede830f48e203ed8c7457f83783e27e5804c258e7cf109bc",
        "Pop3Client._getline replaces it: if poplib now has a public line limit (or "
        "one far above 2048), use that and drop the override; otherwise port any new "
        "behaviour (line ends, EOF reply, audit hooks) into the replacement"),
    "POP3._getresp": (
        "9c65164e6ff31784b478e4b29ad4e365bd0b398df5223b115ee1d0c1489dc45d",
        "reads the status line through self._getline and raises error_proto(line) on "
        "'-': check both still hold (the greeting and every command then get "
        "Pop3Client's line limit, and retr_pipelined tells a refusal by it)"),
    "POP3._getlongresp": (
        "9c42b40f7daabb42be6cfd56e0c18cf3b3a4b50c1d7a51602162a7e8ce21a31a",
        "Pop3Client.retr_pipelined calls it once per pipelined RETR: check it still "
        "reads one reply (status line through _getresp, then lines up to '.' through "
        "self._getline, dot-stuffing undone), returns (resp, lines, octets) and sends "
        "nothing"),
    "POP3.__init__": (
        "3bb240bbbecee03cc9a7014e9e6218d8c239755dad286d94dc5ae8b0814487b3",
        "Pop3Client.__init__ wraps it: check it still sets sock and file before "
        "reading the greeting (those are what the wrapper closes when it raises), and "
        "whether it now closes them itself (then drop the wrapper)"),
    "POP3.stls": (
        "17da3a2f6dcc9c9d1bde9351b194926b1f31dafa3811300b411a8d54cd8c2370",
        "after STLS it must re-point sock and file at the TLS socket (Pop3Client's "
        "_getline reads file, retr_pipelined writes sock); close_quietly exists because "
        "a failed handshake leaves the detached plain socket in sock: check both"),
    "POP3.close": (
        "cbc08e57d57764dbe2bda7f4da5a8471a84524140e00e2d3b62967544a5a6e90",
        "close_quietly swallows the OSError it raises after a failed STLS handshake "
        "(EBADF from shutdown): check what it closes and raises, and whether it now "
        "tolerates a detached socket (then close_quietly can go)"),
    "POP3_SSL.__init__": (
        "e7a52ffa850c0900cbd4f2ca1193bad0f61ed1a02576d9b7ff944e25125c7eec",
        "Pop3SslClient passes (host, port, timeout=, context=) through "
        "Pop3Client.__init__ to it, and it must end in POP3.__init__: check both"),
}

# Longest reply line accepted, CRLF included (poplib's own limit is 2048 bytes).
MAX_LINE = 64 * 1024 * 1024
# What poplib's _getline (and ours) raises when the server closed the connection.
EOF_REPLY = "-ERR EOF"


def connection_closed(error: poplib.error_proto) -> bool:
    """True when ``error`` is the end of the connection, not a server's ``-ERR``."""
    reply = error.args[0] if error.args else b""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return text == EOF_REPLY


class Pop3Client(poplib.POP3):
    """poplib's POP3 with long lines, no socket left open by a failed greeting,
    pipelined RETR and a close that never raises (see the module docstring)."""

    max_line: int = MAX_LINE
    # Whether the server announced RFC 2449 PIPELINING (CAPA); set by the caller.
    pipelining: bool = False
    file: Any
    sock: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            for part in (getattr(self, "file", None), getattr(self, "sock", None)):
                if part is not None:
                    part.close()
            raise

    def retr_pipelined(self, numbers: list[int]) -> list[list[bytes] | None]:
        """RFC 2449 PIPELINING: send every RETR at once, then read the replies in
        order; each message's lines (CRLF stripped, dot-stuffing undone), or None for
        a message the server refused (deleted meanwhile). A closed connection raises
        ``error_proto`` (:func:`connection_closed`)."""
        self.sock.sendall(b"".join(b"RETR %d\r\n" % number for number in numbers))
        replies: list[list[bytes] | None] = []
        for _ in numbers:
            try:
                _, lines, _ = self._getlongresp()
            except poplib.error_proto as e:
                if connection_closed(e):
                    raise
                replies.append(None)
                continue
            replies.append(lines)
        return replies

    def close_quietly(self) -> None:
        """Close the socket, whatever state it is in (a failed STLS handshake leaves
        poplib holding a detached socket whose shutdown raises EBADF)."""
        try:
            self.close()
        except OSError:
            pass

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(self.max_line + 1)
        if len(line) > self.max_line:
            raise poplib.error_proto("-ERR line too long")
        if not line:
            raise poplib.error_proto(EOF_REPLY)
        if line.endswith(b"\r\n"):
            return line[:-2], len(line)
        if line.endswith(b"\n"):
            return line[:-1], len(line)
        return line, len(line)


class Pop3SslClient(Pop3Client, poplib.POP3_SSL):
    """:class:`Pop3Client` over implicit TLS (``poplib.POP3_SSL``)."""
