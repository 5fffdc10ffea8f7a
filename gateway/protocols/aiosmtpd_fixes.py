"""Workarounds for aiosmtpd, kept here so no other module touches its internals.

Checked against aiosmtpd 1.4.6; pyproject asks for ``aiosmtpd>=1.4.6`` (no upper
bound), so :data:`REPLACED_UPSTREAM` records a sha256 of the source each piece was
written against, both the code it replaces and the code it relies on, and
``tests/unit/test_library_fixes.py`` fails as soon as the installed library differs:
re-read the upstream code, adapt or drop the workaround, then record the new hash.

Everything lives on :class:`SmtpWorkarounds`, the base of the LMTP and SMTP sessions
(:class:`gateway.protocols.session.DurableSession`), which otherwise uses only
aiosmtpd's documented API: ``push``, ``smtp_<COMMAND>``, ``session``, ``envelope``,
``transport``, ``event_handler``.

``SmtpWorkarounds._getaddr`` (a cost, not a wrong answer; no upstream issue known)
    ``SMTP._getaddr`` parses every ``MAIL FROM``/``RCPT TO`` argument with the
    stdlib's RFC 5322 header grammar (``email._header_value_parser.get_angle_addr``),
    about 0.1 ms per address and a third of a bare server's CPU in the bench profiles
    (docs/decisions.md, "Address fast path"). aiosmtpd has no public hook for this:
    ``handle_MAIL``/``handle_RCPT`` receive the address after ``smtp_MAIL``/
    ``smtp_RCPT`` have parsed it, and overriding those would reach into more private
    code. So ``_getaddr`` is overridden: a plain ``<local@domain>`` (dot-atom domain,
    local part of at most 64 characters and within ``local_part_limit``) is matched
    with one regular expression, and returns what upstream returns for it; any other
    form goes to upstream's parser, so it is judged exactly as before.

:meth:`SmtpWorkarounds.client_stream` and :meth:`SmtpWorkarounds.end_transaction`
(aio-libs/aiosmtpd#517, open in 1.4.6; and the cost of upstream's DATA loop)
    The sessions replace ``SMTP.smtp_DATA`` (overriding ``smtp_<COMMAND>`` is
    documented), for three reasons upstream's cannot serve:

    - LMTP answers the final dot once per accepted recipient (RFC 2033 §4.2);
      aiosmtpd's ``LMTP`` inherits SMTP's DATA, which sends the single status
      ``handle_DATA`` returns (#517), so a 2-recipient LMTP client waits forever
      for its second reply.
    - Upstream reads DATA with one ``readuntil`` per line (~40% of a bare server's
      CPU in the bench profiles); ``gateway.protocols.data.read_data`` reads it in
      chunks and only takes ``<CRLF>.<CRLF>`` as its end (no SMTP smuggling).
    - The reply waits for the journal commit and is 451, never 500, on our failure.

    The replacement needs two things aiosmtpd keeps private. The connection's
    ``StreamReader`` (``SMTP._reader``, set by ``_cb_client_connected`` from the
    reader ``__init__`` creates with ``line_length_limit``, re-pointed at the TLS
    transport by ``connection_made`` after STARTTLS): :meth:`client_stream` hands it
    out; the command loop ``_handle_client`` reads each command line up to its LF
    and awaits the ``smtp_DATA`` coroutine before reading again, so the bytes after
    ``DATA<CRLF>`` are the message. And upstream's end-of-transaction reset
    (``SMTP._set_post_data_state``: a fresh envelope from ``_create_envelope``):
    :meth:`end_transaction` calls it, so whatever upstream resets there, we reset.
"""
from __future__ import annotations

import asyncio
import re

from aiosmtpd.smtp import SMTP

# "<class>.<attribute>" of upstream code as aiosmtpd 1.4.6 has it -> (sha256 of
# inspect.getsource(), what to re-check when it changes).
REPLACED_UPSTREAM: dict[str, tuple[str, str]] = {
    "SMTP._getaddr": (
        "0aeb21c56ac1260e784e430a340459c83c23640a85965e7b8de3e1ada74d85f5",
        "SmtpWorkarounds._getaddr answers plain <local@domain> paths itself: check that "
        "upstream still returns (address, rest) and accepts every path the fast path "
        "takes (test_plain_path_fast_path_answers_as_upstream), and whether upstream "
        "became cheap enough to drop the override"),
    "SMTP.smtp_DATA": (
        "3a33f30d3fd6d02f39c7d78a08288bffea9170525b62e2161568041ae7e018df",
        "DurableSession.smtp_DATA replaces it: if upstream can now answer an LMTP DATA "
        "once per recipient (#517), check whether the replacement is still needed for "
        "chunked reads; otherwise port any new check or state change into "
        "DurableSession.smtp_DATA"),
    "SMTP._set_post_data_state": (
        "1dc8a8abca2a81644a605b8ebf427fc7472eeadf5149dd3cf2591fa86b2256e9",
        "SmtpWorkarounds.end_transaction calls it after the DATA replies: check it still "
        "only resets the transaction (a fresh envelope) and needs nothing set by "
        "upstream's smtp_DATA"),
    "SMTP._cb_client_connected": (
        "a73e95bb7f362ab9dbd9f0a4f310c203c525c0c98682dede6f98af4c97d15ad4",
        "SmtpWorkarounds.client_stream returns the _reader set here: check the "
        "connection's bytes still arrive through that one StreamReader"),
    "SMTP.__init__": (
        "8a9ca80f23ad9bf273e58e284170e9f919dc6269b280ca0624ac0603a8ad3604",
        "creates the StreamReader client_stream returns, with limit=line_length_limit "
        "(DurableSession raises it for big DATA reads), and collects smtp_* methods so "
        "the smtp_DATA override is the one called: check both still hold"),
    "SMTP.connection_made": (
        "77a45df5065bba343a040b6f6c88de8907b40c80bc03727e7f18ede20d19f4bf",
        "after STARTTLS it re-points _reader at the TLS transport (so client_stream "
        "stays valid) and is called a second time (DurableSession counts a session "
        "once): check both"),
    "SMTP._handle_client": (
        "0e4d096403af6c74c87b2fe722c213884e2140a9388e95feb05aec2f39e05556",
        "the command loop shares the reader with DurableSession.smtp_DATA: check it "
        "still reads a command line only up to its LF, awaits smtp_DATA before reading "
        "again, and answers an exception from it with handle_exception's reply"),
}

# Narrower than upstream on purpose: a domain is dot-separated labels (upstream
# refuses "a@.b" and "a@b..c"), so every path matched here parses the same there.
_PLAIN_PATH = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64})"
                         r"@((?=[A-Za-z0-9.-]{1,255}>)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
                         r"(?:[ \t]+(.*))?")


class SmtpWorkarounds(SMTP):
    """aiosmtpd's session with the fast address path and the hooks a DATA
    replacement needs; the only class that touches aiosmtpd's private members."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.fullmatch(arg.strip())
        if match and not (self.local_part_limit
                          and len(match.group(1)) > self.local_part_limit):
            return f"{match.group(1)}@{match.group(2)}", match.group(3) or ""
        return super()._getaddr(arg)

    def client_stream(self) -> asyncio.StreamReader:
        """The connection's reader, positioned after the command being handled.

        For a ``smtp_DATA`` replacement only: read it while the command runs, never
        after (the command loop reads the next command from it)."""
        return self._reader

    def end_transaction(self) -> None:
        """End the mail transaction after the final dot (RFC 5321 §4.1.1.4), the way
        upstream's DATA does: the next MAIL starts on a fresh envelope."""
        self._set_post_data_state()
