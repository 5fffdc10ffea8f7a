"""What a DKIM signature covers (RFC 6376 §3.4, §5.4): header fields, relaxed
canonicalisation, which instances a ``h=`` list selects.

dkimpy's public API signs only with its own pure-Python RSA (about 6.5 ms of CPU
a mail, holding the GIL), and offers no way to hand it a signature computed
elsewhere. So the gateway prepares the signed data itself and leaves the
arithmetic to OpenSSL (``dkim_keys``); dkimpy and OpenDKIM check the result in
the tests. Only relaxed/relaxed is written: it survives the re-folding and
whitespace changes relays make, and it is all the gateway signs with.

Everything here is pure work on bytes, safe to run in any thread.
"""
from __future__ import annotations

import re

Field = tuple[bytes, bytes]     # (name as written, value after the colon, folds as CRLF)

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Whitespace relaxed form changes: a tab, or a run of two or more (a lone space stays).
_WSP_TO_SQUEEZE = re.compile(rb"\t[ \t]*| [ \t]+")
_WSP_BEFORE_EOL = re.compile(rb"[ \t]+\r\n")
# RFC 5322 §2.2: a field name is printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*\Z")


def split_message(raw: bytes) -> tuple[list[Field], bytes]:
    """``(header fields in order, body)``; the body keeps its own line ends.

    Raises ValueError on a line in the header that is neither a field nor its
    continuation: a signature over a header a receiver reads differently would
    not verify, so such mail is better not signed at all.
    """
    end = _HEADER_END.search(raw)
    head, body = (raw[:end.start()], raw[end.end():]) if end else (raw, b"")
    fields: list[list[bytes]] = []
    for line in head.split(b"\n"):
        line = line[:-1] if line.endswith(b"\r") else line
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\r\n" + line
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.match(name):
            raise ValueError(f"malformed header line {line[:60]!r}")
        fields.append([name, value])
    return [(name, value) for name, value in fields], body


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One field in relaxed form (§3.4.2): lower-case name, unfolded value, runs of
    whitespace as one space, none around the colon or at the ends; CRLF-terminated."""
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_TO_SQUEEZE.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" \t") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """The body in relaxed form (§3.4.4), with CRLF line ends as it travels over SMTP.

    A last line without a line end gets one first, as on the wire; then trailing
    whitespace goes, inner runs become one space, and empty lines at the end are
    dropped. An empty body stays empty.
    """
    if body.count(b"\n") != body.count(b"\r\n"):      # some line ends are bare LF
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _WSP_BEFORE_EOL.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_TO_SQUEEZE.sub(b" ", body)
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def select(fields: list[Field], names: list[bytes]) -> list[Field]:
    """The instances a ``h=`` list signs (§5.4.2): each repetition of a name takes
    the next instance from the bottom up; a name listed more often than present
    selects nothing more (that is what makes over-signing work)."""
    unused: dict[bytes, list[Field]] = {}
    for field in fields:
        unused.setdefault(field[0].rstrip(b" \t").lower(), []).append(field)
    chosen = []
    for name in names:
        instances = unused.get(name)
        if instances:
            chosen.append(instances.pop())
    return chosen
