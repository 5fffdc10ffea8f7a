"""Workarounds for aioimaplib, kept here so no other module reaches into its internals.

Checked against aioimaplib 2.0.3; pyproject pins ``aioimaplib>=2.0,<2.1``. Each
piece replaces private upstream code, so :data:`REPLACED_UPSTREAM` records a sha256
of the source it was written against and ``tests/unit/test_library_fixes.py`` fails
as soon as the installed library differs: re-read the upstream code, adapt or drop
the workaround, then record the new hash.

:class:`ImapProtocol` (upstream bug iroco-co/aioimaplib#118, fixes proposed in #119
and #130, unmerged in 2.0.3)
    ``IMAP4ClientProtocol._handle_responses`` splits a read into lines by calling
    itself once per line on a copy of the rest of the buffer. A read of a few hundred
    tiny FETCHed messages exceeds Python's recursion limit (the RecursionError escapes
    ``data_received`` and asyncio tears the connection down), and the copying is
    quadratic in the lines per read. The replacement walks the buffer with an index;
    the contract is upstream's: lines go to the line handler, literals to the command
    that announced them, ``IncompleteRead`` carries the open command and unparsed
    bytes to the next ``data_received``.

:class:`UidFetch` (no upstream issue known; the cost showed in our drain measurements)
    ``FetchCommand.wait_data`` ("is this FETCH response still open?") joins and
    rescans every line received so far on each new line: quadratic in the messages
    per command. The replacement keeps the parenthesis balance of the current FETCH
    item as lines arrive (literals excluded, as upstream does). Upstream also re-arms
    a timer on every line and literal; ``UidFetch`` runs without one and records the
    time of the last byte in :attr:`UidFetch.last_activity`, so the caller can end
    the command after a stretch of silence instead.
"""
from __future__ import annotations

from aioimaplib.aioimaplib import (CRLF, Command, FetchCommand, IMAP4ClientProtocol,
                                   IncompleteRead, literal_data_re)

# "<class>.<attribute>" of upstream code as aioimaplib 2.0.3 has it -> (sha256 of
# inspect.getsource(), what to re-check when it changes). Looked up on the class we
# subclass, so a new override there changes the hash too.
REPLACED_UPSTREAM: dict[str, tuple[str, str]] = {
    "IMAP4ClientProtocol._handle_responses": (
        "b85f6640b4ca5fe68483cf9c7ab007e5b4b1d5534718654e60d0894fefafc707",
        "ImapProtocol._handle_responses replaces it: if upstream no longer recurses "
        "(#118 fixed, #119/#130 merged), drop ImapProtocol; otherwise port any new "
        "behaviour into the loop"),
    "IMAP4ClientProtocol.data_received": (
        "f4e4f02478babbeb58d8b358efd9e329925be1152c824ade4af24ae2e459f135",
        "ImapProtocol relies on data_received calling _handle_responses(buffer, "
        "_handle_line, current_command) and resuming from IncompleteRead(cmd, data)"),
    "FetchCommand.wait_data": (
        "17ec7328fd9b7bba9e47b6915e136478820b85799a8579bb6a2495cbf8316daa",
        "UidFetch.wait_data replaces it with a running parenthesis balance: check "
        "the new rule for when a FETCH response is complete and match it"),
    "FetchCommand.append_to_resp": (
        "43f8b5a526fa16b07e218bb9ac91fd62daf37e2bfbb172072c0b3beb0ec076ce",
        "UidFetch.append_to_resp extends it (balance, last_activity) and assumes "
        "no timer runs when timeout is None"),
    "FetchCommand.append_literal_data": (
        "0a8587d8f8219e9cfaf6d61a92bbb76c4365894bf6e40a9ec1d8384183e2a55d",
        "ImapProtocol passes it a memoryview and needs back the unconsumed tail; "
        "UidFetch.append_literal_data records last_activity around it"),
}


class ImapProtocol(IMAP4ClientProtocol):
    """aioimaplib's protocol with its response splitter made iterative (#118)."""

    def _handle_responses(self, data: bytes, line_handler, current_cmd=None) -> None:
        pos, end_of_data = 0, len(data)
        while True:
            if pos >= end_of_data:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                rest = current_cmd.append_literal_data(memoryview(data)[pos:])
                pos = end_of_data - len(rest)
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            eol = data.find(CRLF, pos)
            if eol < 0:
                raise IncompleteRead(current_cmd, data[pos:])
            line, pos = data[pos:eol], eol + len(CRLF)
            cmd = line_handler(line, current_cmd)
            literal = literal_data_re.match(line)
            if literal:
                if cmd is None:         # a literal nobody asked for: read and drop it
                    cmd = Command("NIL", "unused", loop=self.loop)
                cmd.begin_literal_data(int(literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None


class UidFetch(FetchCommand):
    """``UID FETCH`` with linear bookkeeping and no per-line timer (see module doc)."""

    def __init__(self, tag: str, message_set: str, parts: str, *, loop) -> None:
        super().__init__(tag, message_set, parts, prefix="UID", loop=loop, timeout=None)
        self.open_parens = 0
        self.clock = loop.time
        self.last_activity = loop.time()

    def append_to_resp(self, line, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        self.last_activity = self.clock()
        if isinstance(line, bytes):
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self.open_parens = 0
            self.open_parens += line.count(b"(") - line.count(b")")

    def append_literal_data(self, data: bytes) -> bytes:
        self.last_activity = self.clock()
        return super().append_literal_data(data)

    def wait_data(self) -> bool:
        return self.open_parens != 0
