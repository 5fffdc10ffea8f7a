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

Whole FETCH items in one read (no upstream issue; the cost showed in the IMAP drain)
    Upstream hands each FETCH item over in five steps (the line handler, the untagged
    response dispatcher, the literal's start, its bytes, the closing line), each with
    its regular expressions and timer resets: about 34 us a message of our parsing, the
    largest part of the poller's own time. When a read holds an item of the usual shape
    whole (``* n FETCH (... {size}``, the literal, ``)``) and a :class:`UidFetch` is the
    command waiting for it, :class:`ImapProtocol` hands it to :meth:`UidFetch.append_item`
    in one step, with the same lines and types upstream would have produced; anything
    else takes upstream's path. ``data_received`` also no longer formats every read
    into a debug message that is dropped unless aioimaplib's logger is at DEBUG
    (about 5 ns a byte received).
"""
from __future__ import annotations

import logging
import re

from aioimaplib.aioimaplib import (CONNECTED, CRLF, Command, FetchCommand, IMAP4ClientProtocol,
                                   IncompleteRead, literal_data_re)

upstream_log = logging.getLogger("aioimaplib.aioimaplib")

# A FETCH item's first line that ends with a literal, as the server sends it. A line this
# matches is one upstream's dispatch hands to the waiting FETCH command as
# ``line.replace(b"* ", b"")``, and one its literal_data_re reads the same size from.
_FETCH_ITEM = re.compile(rb"\* [0-9]+ FETCH \(.*\{([0-9]+)\}\Z")

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
        "ImapProtocol.data_received replaces it (no debug formatting of every read): "
        "port any new behaviour; it relies on _handle_responses(buffer, _handle_line, "
        "current_command) and resuming from IncompleteRead(cmd, data)"),
    "IMAP4ClientProtocol._handle_line": (
        "3e3c734ed4244c4f1fc28a4e1b9664171b0d52751111b852987b7ed9ee84c9b6",
        "ImapProtocol's whole-item path stands in for it on a '* n FETCH' line while a "
        "FETCH waits and no sync command is pending: check that such a line still goes "
        "to _untagged_response"),
    "IMAP4ClientProtocol._untagged_response": (
        "293b7da830751ce589735eaa11aa38369f9d5513454a79125a908eeb18737644",
        "ImapProtocol's whole-item path stands in for it: check that a FETCH line still "
        "goes, with every '* ' removed, to pending_async_commands['FETCH'].append_to_resp"),
    "FetchCommand.wait_data": (
        "17ec7328fd9b7bba9e47b6915e136478820b85799a8579bb6a2495cbf8316daa",
        "UidFetch.wait_data replaces it with a running parenthesis balance: check "
        "the new rule for when a FETCH response is complete and match it"),
    "FetchCommand.append_to_resp": (
        "43f8b5a526fa16b07e218bb9ac91fd62daf37e2bfbb172072c0b3beb0ec076ce",
        "UidFetch.append_to_resp extends it (balance, last_activity) and assumes "
        "no timer runs when timeout is None; UidFetch.append_item does what it does "
        "(set _resp_result, append to _resp_lines) for three lines at once"),
    "FetchCommand.append_literal_data": (
        "0a8587d8f8219e9cfaf6d61a92bbb76c4365894bf6e40a9ec1d8384183e2a55d",
        "ImapProtocol passes it a memoryview and needs back the unconsumed tail; "
        "UidFetch.append_literal_data records last_activity around it; "
        "UidFetch.append_item hands a whole literal over as it does: a bytearray in "
        "the lines"),
}


class ImapProtocol(IMAP4ClientProtocol):
    """aioimaplib's protocol with its response splitter made iterative (#118), taking
    whole FETCH items in one step (see the module's doc)."""

    def data_received(self, d: bytes) -> None:
        if upstream_log.isEnabledFor(logging.DEBUG):
            upstream_log.debug("Received : %s", d)
        try:
            self._handle_responses(self.incomplete_line + d, self._handle_line,
                                   self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except IncompleteRead as incomplete_read:
            self.current_command = incomplete_read.cmd
            self.incomplete_line = incomplete_read.data

    def _waiting_fetch(self) -> "UidFetch | None":
        """The UidFetch an untagged FETCH line goes to, when upstream would send it there."""
        if self.pending_sync_command is not None or self.state == CONNECTED:
            return None
        command = self.pending_async_commands.get("FETCH")
        return command if isinstance(command, UidFetch) else None

    def _handle_responses(self, data: bytes, line_handler, current_cmd=None) -> None:
        pos, end_of_data = 0, len(data)
        view = memoryview(data)
        while True:
            if pos >= end_of_data:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                rest = current_cmd.append_literal_data(view[pos:])
                pos = end_of_data - len(rest)
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            eol = data.find(CRLF, pos)
            if eol < 0:
                raise IncompleteRead(current_cmd, data[pos:])
            if current_cmd is None and data[eol - 1] == 0x7D and data.startswith(b"* ", pos):
                end = self._whole_fetch_item(data, view, pos, eol)    # line ends with "}"
                if end:
                    pos = end
                    continue
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

    def _whole_fetch_item(self, data: bytes, view: memoryview, pos: int, eol: int) -> int:
        """Hand the FETCH item at ``pos`` (its first line ends at ``eol``) to the waiting
        UidFetch in one step when the read holds all of it and it has the usual shape:
        the literal ends the first line and ``)`` alone closes the item. The position
        after it, or 0 (nothing taken: upstream's path reads it)."""
        line = data[pos:eol]
        match = _FETCH_ITEM.match(line)
        if match is None or line.count(b"(") - line.count(b")") != 1:
            return 0
        start = eol + len(CRLF)
        end = start + int(match.group(1))
        if not data.startswith(b")\r\n", end):
            return 0            # not all here yet, or another shape
        fetch = self._waiting_fetch()
        if fetch is None:
            return 0
        fetch.append_item(line.replace(b"* ", b""), view[start:end])
        return end + 3


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

    def append_item(self, line: bytes, literal: memoryview) -> None:
        """A whole FETCH item: what ``append_to_resp(line)``, the literal's
        ``begin_literal_data``/``append_literal_data`` and ``append_to_resp(b")")`` would
        leave (the line, the literal as a bytearray, the closing line), in one step."""
        self._resp_result = "Pending"
        self._resp_lines += (line, bytearray(literal), b")")
        self.open_parens = 0
        self.last_activity = self.clock()
