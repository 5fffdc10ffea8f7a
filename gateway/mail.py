"""Mail: the pipeline's read-only view of one journaled copy (DESIGN "A stage").

Every view is computed on first use and cached, so a stage pays only for what it reads:
the sent-ID check (R-S1) reads one header, dedup (R-D1) the text body and attachments,
routing (R-R2) a few headers. Headers come from a small splitter that follows the stdlib
feed parser's line rules, and only the fields a stage asks for are decoded; the body views
run the email package with ``compat32``. ``policy.default`` header objects cost ~16% of a
message's CPU and go quadratic on crafted headers, so the strict
headerregistry parser is used only for address headers a fast path cannot read (A7).

Hostile input never raises (A11-A13). An oversized or over-long header block, deep MIME
nesting and floods of parts are refused before the parser sees them. The reason goes into
``parse_error`` and the affected views are empty. 8-bit text is decoded with replacement.
An address header has a budget (``MAX_ADDRESSES``, ``STRICT_PARSE_*``, R-H4): what it
leaves unread is ignored, never guessed at, and said in ``parse_notes``.
"""
from __future__ import annotations

import binascii
import codecs
import hashlib
import html
import re
from dataclasses import dataclass
from email import _header_value_parser as _addr_parser  # what headerregistry parses with
from email.errors import NonASCIILocalPartDefect, ObsoleteHeaderDefect
from email.generator import BytesGenerator
from email.parser import BytesParser
from email.policy import compat32
from functools import lru_cache
from io import BytesIO
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps on hostile input (reliability A11, A12); over one → ``Mail.parse_error``."""
    max_header_bytes: int = 256 * 1024
    max_mime_depth: int = 50
    max_parts: int = 1000
    max_header_fields: int = 1000


@dataclass(frozen=True, slots=True)
class Attachment:
    """A part with a filename or ``Content-Disposition: attachment`` (R-D1, R-R2)."""
    name: str
    sha256: str
    size: int
    content_type: str


DEFAULT_LIMITS = ParseLimits()
_PARSER = BytesParser(policy=compat32)
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_HEADER_END = re.compile(rb"(?:\A|" + _EOL + rb")" + _EOL)      # feedparser: first empty line
_LINE = re.compile(r"\r\n|\r|\n")
_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]*):")                 # feedparser's headerRE
_UNSAFE = re.compile(r"[\r\n\x00]")
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_MSG_ID = re.compile(r"<\s*([^<>\s]{1,993})\s*>")
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_DOT_ATOM = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_ADDR = rf"{_DOT_ATOM}@{_DOT_ATOM}"
# Non-ASCII text the strict parser reads in a name as it reads atext: not surrogates (a
# defect), not what str.isspace() calls whitespace (its lstrip() takes that after a blank).
_NON_ASCII = ("\x80-\x84\x86-\x9f\xa1-\u167f\u1681-\u1fff\u200b-\u2027\u202a-\u202e"
              "\u2030-\u205e\u2060-\u2fff\u3001-\ud7ff\ue000-\U0010ffff")
_QUOTED = rf'"(?:[{_NON_ASCII} \t!#-\[\]-~]|\\[ -~])*"'
# One list item in the common shapes: `a@b` or `Name <a@b>` / `"Name, Q." <a@b>` (names
# may be 8-bit: `Jörg <j@example.org>`).
_SIMPLE_ITEM = re.compile(rf"[ \t]*({_ADDR})[ \t]*(?=,|\Z)"
                          rf"|[ \t]*(?:(?:[{_NON_ASCII}{_ATEXT}]|{_QUOTED})"
                          rf"(?:[{_NON_ASCII}. \t{_ATEXT}]|{_QUOTED})*)?"
                          rf"<({_ADDR})>[ \t]*(?=,|\Z)")
# A quoted string or comment runs to the end if unclosed, a lone `\` at the end included:
# a token that could fail after a long scan would be scanned again from every `"`.
_ITEM_TOKEN = re.compile(r'"(?:[^"\\]|\\.?)*(?:"|\Z)|\((?:[^()\\]|\\.?)*(?:\)|\Z)'
                         r'|<[^<>]*>?|[^",(<]+|,|.', re.S)
# What one address header (every field of one name: From, To or Cc) may cost (A12, R-H4).
# The header block is capped (256 KiB), and the fast path reads it in linear time (~20 ms
# for a full block), but the strict parser headerregistry uses costs 60-200 us a call and
# 6-45 us a byte, more on crafted input: 26,666 `a@b@c@d` items took 4 s, one 8 KB item
# of comments 1.5 s (quadratic). The caps count per header, not per field, so the result
# never depends on which stage read the header first; what they leave out is ignored
# (never guessed at) and listed in ``Mail.parse_notes``.
MAX_ADDRESSES = 10_000
"""Items read from one address header; later ones are ignored. R-B3 acknowledges at most
10 CC'd people and intake takes 1,000 RCPTs, but a To of 5,000 ordinary addresses is read
whole (tests/unit/test_mail.py)."""
STRICT_PARSE_ITEMS = 1_000
"""Items of one address header that may go to the strict parser (the fast path reads the
common shapes without it); beyond, such items count as invalid."""
STRICT_PARSE_BYTES = 16 * 1024
"""Bytes of one address header that may go to the strict parser: ~0.4 s at the worst found
(50 KB of `. . .` items, on two shared cores), ~0.1 s on ordinary items."""
_STRICT_MAX = 8192          # a field parsed whole by the strict parser; longer: item by item
_STRICT_RUN = 256
# The strict parser rescans the text up to the next blank for every token it reads, so a
# long run without a blank is quadratic. No addr-spec is longer than 254 octets (RFC 5321
# 4.5.3.1.3); text with a longer run is never given to it.
_LONG_RUN = re.compile(rf"(?:^|(?<=[ \t]))[^ \t]{{{_STRICT_RUN + 1}}}")
# An item of only atext, dots, blanks and two or more `@` is never a mailbox: the strict
# parser rejects every one (all 770,422 of up to 8 characters of `a-.@ \t` were checked;
# the tests check up to 5).
_AT_RUN = re.compile(rf"[. \t{_ATEXT}]*@[. \t{_ATEXT}]*@[. \t@{_ATEXT}]*")
# An encoded-word where the strict parser reads one as a word of a display name: after
# the start, a blank or a comma, before a blank (else it notes a defect), outside quoted
# strings (inside, it is a defect). Its text must not start with `=` unless `=XX`: the
# parser ends the word at the first `?=`. A quoted string may run to the end (linear).
_EW_CHARS = r"[A-Za-z0-9!#$%&'*+/=^_`{|}~.-]+"          # atext and dots, without `?`
_EW_OR_QUOTED = re.compile(rf'"(?:[^"\\]|\\.?)*(?:"|\Z)|(?<![^ \t,])=\?{_EW_CHARS}\?[QqBb]\?'
                           rf'(?!=(?![0-9A-Fa-f]{{2}})){_EW_CHARS}\?=(?=[ \t])', re.S)
_EW_UNCLEAN = re.compile("[\x00-\x08\n-\x1f\x7f\ud800-\udfff]")   # what it calls a defect
_NEEDS_QUOTES = re.compile(r'[\x00-\x20()<>\[\]:;@\\,"]|^\.|\.$|\.\.')
_TOLERATED = (ObsoleteHeaderDefect, NonASCIILocalPartDefect)
_SHAPE = re.compile(rb"(?:\A|(?<=[\r\n]))(?:content-type:[ \t]*([^\r\n]*(?:" + _EOL
                    + rb"[ \t][^\r\n]*)*)|--([^\r\n]*))", re.I)
_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))', re.I)
_HTML_DROP = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|\Z)", re.I | re.S)
_HTML_BREAK = re.compile(r"<(?:br|/p|/div|/tr|/li|/h[1-6])\b[^<>]*>", re.I)
_HTML_TAG = re.compile(r"<[^<>]*>")
_ENCLOSING = ("message/rfc822", "message/global")
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*message-id:[ \t]*((?:\r?\n[ \t]+)?<[^<>\s]{1,998}>)",
                                re.I | re.M)


class _lazy:
    """A cached property. functools.cached_property in 3.11 holds one lock per property
    for all instances while computing, so the event loop would wait on a worker thread
    parsing another, large message (removed in 3.12). Racing threads compute the same value."""

    def __init__(self, compute):
        self.compute, self.__doc__ = compute, compute.__doc__

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, mail, owner=None):
        if mail is None:
            return self
        value = mail.__dict__[self.name] = self.compute(mail)
        return value


class _Refused(Exception):
    """A guard's reason, raised from the tree walk."""


_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)


class _Body(NamedTuple):
    error: str | None
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    child_types: tuple[str, ...] = ()
    embedded_ids: tuple[str, ...] = ()    # Message-IDs of enclosed messages (R-B4 bounces)


class Mail:
    """One journaled copy (R-I7) with lazily parsed, cached, read-only views."""

    def __init__(self, raw: bytes, *, email_id: int | None = None, connector: str | None = None,
                 source: str = "", mail_from: str | None = None, rcpt_to: tuple[str, ...] = (),
                 folder_path: str | None = None, limits: ParseLimits = DEFAULT_LIMITS):
        self.raw = raw
        self.email_id = email_id
        self.connector = connector
        self.source = source
        self.mail_from = mail_from
        self.rcpt_to = tuple(rcpt_to)
        self.folder_path = folder_path
        self.limits = limits
        self._address_notes: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"<Mail id={self.email_id} connector={self.connector} size={len(self.raw)}>"

    # -- headers ---------------------------------------------------------------------

    @_lazy
    def _header(self) -> tuple[dict[str, list[str]], str | None]:
        """Raw (unfolded, undecoded) values by lower-case name, and the A12 guard's verdict."""
        index: dict[str, list[str]] = {}
        fields, error = _split_header(self.raw, self.limits)
        for name, value in fields:
            index.setdefault(name, []).append(value)
        return index, error

    def headers(self, name: str) -> list[str]:
        """Every ``name`` field, RFC 2047-decoded; CR, LF and NUL become spaces (A6)."""
        return [_display(value) for value in self._header[0].get(name.lower(), ())]

    def header(self, name: str) -> str | None:
        values = self._header[0].get(name.lower())
        return _display(values[0]) if values else None

    def has_header(self, name: str) -> bool:
        return name.lower() in self._header[0]

    @_lazy
    def message_id(self) -> str | None:
        """The first Message-ID as ``<id>`` (R-S1, R-D1 F3), or None."""
        ids = _msg_ids(self._header[0].get("message-id", [""])[0])
        return ids[0] if ids else None

    @_lazy
    def in_reply_to(self) -> list[str]:
        return _msg_ids(" ".join(self._header[0].get("in-reply-to", ())))

    @_lazy
    def references(self) -> list[str]:
        return _msg_ids(" ".join(self._header[0].get("references", ())))

    @_lazy
    def subject(self) -> str:
        return self.header("subject") or ""

    @_lazy
    def from_address(self) -> str | None:
        """The author's lower-case addr-spec, or None when it is not exactly one mailbox.

        Two different From fields, several mailboxes or one the strict parser calls invalid
        are ambiguous: the sender is unknown and matches no participant (A7, R14).
        """
        values = self._header[0].get("from", ())
        if len(set(values)) != 1:
            return None
        budget = _AddressBudget()
        found, invalid = _addresses(values[0], budget)
        self._address_notes["from"] = budget.notes("From")
        return found[0] if len(found) == 1 and not invalid else None

    @_lazy
    def to_addresses(self) -> list[str]:
        return self._address_list("to")

    @_lazy
    def cc_addresses(self) -> list[str]:
        return self._address_list("cc")

    def _address_list(self, name: str) -> list[str]:
        """Valid mailboxes of every ``name`` field; invalid items are dropped (A7). The
        fields share one budget (``MAX_ADDRESSES`` …); what it leaves out is noted."""
        found: list[str] = []
        budget = _AddressBudget()
        for value in self._header[0].get(name, ()):
            found.extend(_addresses(value, budget)[0])
        self._address_notes[name] = budget.notes(name.capitalize())
        return list(dict.fromkeys(found))

    @property
    def parse_notes(self) -> list[str]:
        """What reading this copy's address headers left out on purpose (their caps, A12),
        one line per header, for the decision trace; empty for ordinary mail. Reads From,
        To and Cc if no stage has yet."""
        for name in ("from_address", "to_addresses", "cc_addresses"):
            getattr(self, name)
        return [note for name in ("from", "to", "cc") for note in self._address_notes.get(name, ())]

    @_lazy
    def content_type(self) -> str:
        """Top-level ``maintype/subtype`` as compat32 reads it (text/plain when invalid)."""
        if self._header[1]:
            return ""
        value = self._header[0].get("content-type", [""])[0]
        ctype = value.partition(";")[0].strip().lower()
        return ctype if ctype.count("/") == 1 else "text/plain"

    @_lazy
    def important(self) -> bool:
        """R-R2 important flag: ``Importance: high`` or ``X-Priority`` 1 or 2."""
        if (self.header("importance") or "").strip().lower() == "high":
            return True
        priority = re.match(r"\s*([0-9]+)", self.header("x-priority") or "")
        return priority is not None and priority[1] in ("1", "2")

    # -- body --------------------------------------------------------------------------

    @_lazy
    def _body(self) -> _Body:
        if self._header[1]:
            return _Body(self._header[1])
        try:
            plain = self._plain_body()
            if plain is not None:
                return plain
            reason = _prescan(self.raw, self.limits)
            return _Body(reason) if reason else _extract(_PARSER.parsebytes(self.raw), self.limits)
        except _Refused as exc:
            return _Body(exc.args[0])
        except RecursionError:
            return _Body("mime_too_deep")
        except Exception as exc:  # anything the email package throws: never the runner's problem
            return _Body(f"parser_error: {type(exc).__name__}")

    def _plain_body(self) -> _Body | None:
        """The common case without the MIME parser: one text/plain part, 7bit or 8bit, not an
        attachment. Gives what the parser would; anything else returns None (the parser)."""
        headers = self._header[0]
        ctype = headers.get("content-type", [""])[0]
        if ctype.partition(";")[0].strip().lower() not in ("", "text/plain"):
            return None
        if headers.get("content-transfer-encoding", ["7bit"])[0].strip().lower() not in (
                "7bit", "8bit", "binary", ""):
            return None
        disposition = headers.get("content-disposition", [""])[0]
        if disposition or "name" in ctype.lower() or len(headers.get("content-type", ())) > 1:
            return None
        block, eol = _header_block(self.raw, self.limits.max_header_bytes)
        if block is None or eol is None:
            return None
        start = len(block) + 2 * len(eol)
        if self.raw[len(block):start] != (eol * 2).encode():
            return None
        charset = _CHARSET.search(ctype)      # decoded in place: no copy of a large body
        return _Body(None, _text(memoryview(self.raw)[start:], charset[1] if charset else None))

    @property
    def text_body(self) -> str:
        """text/plain parts that are not attachments; else the HTML parts, roughly stripped."""
        return self._body.text

    @property
    def attachments(self) -> list[Attachment]:
        return list(self._body.attachments)

    @property
    def attachment_names(self) -> tuple[str, ...]:
        """What R-R2's attachment rule reads of the attachments."""
        return tuple(a.name for a in self.attachments)

    @property
    def authentication_results(self) -> tuple[str, ...]:
        """The Authentication-Results fields, topmost first (R-B2 trusts the topmost)."""
        return tuple(self.headers("authentication-results"))

    @property
    def child_content_types(self) -> list[str]:
        """Content types of the top-level multipart's direct children (R-A1 reports)."""
        return list(self._body.child_types)

    @property
    def embedded_message_ids(self) -> list[str]:
        """Message-IDs of the messages this one encloses (``message/rfc822``) or whose
        headers it quotes (``text/rfc822-headers``): a bounce names the mail that bounced."""
        return list(self._body.embedded_ids)

    @property
    def parse_error(self) -> str | None:
        """Why this copy cannot be read in full, or None. Forces the body parse."""
        return self._header[1] or self._body.error

    def parse_all(self) -> str | None:
        """Compute every view, so that later reads are free (the runner runs this in a
        thread with a deadline for large messages, A12); returns ``parse_error``."""
        for name in ("message_id", "in_reply_to", "references", "subject", "from_address",
                     "to_addresses", "cc_addresses", "content_type", "important", "_body"):
            getattr(self, name)
        return self.parse_error


def _split_header(raw: bytes, limits: ParseLimits) -> tuple[list[tuple[str, str]], str | None]:
    """(lower-case name, unfolded value) pairs, split as the feed parser splits them."""
    block, eol = _header_block(raw, limits.max_header_bytes)
    if block is None:
        return [], "header_too_large"
    text = block.decode("utf-8", "replace")
    fields: list[tuple[str, list[str]]] = []
    for line in (text.split(eol) if eol else _LINE.split(text)):
        if line[:1] in (" ", "\t"):
            if fields:
                fields[-1][1].append(line)
            continue
        match = _FIELD.match(line)
        if match is None:
            if line.startswith("From "):      # mbox separator
                continue
            break                              # the feed parser starts the body here
        if not match[1]:
            continue
        if len(fields) == limits.max_header_fields:
            return [], "too_many_header_fields"
        fields.append((match[1].lower(), [line[match.end():].lstrip(" \t")]))
    return [(name, "".join(parts)) for name, parts in fields], None


def _header_block(raw: bytes, limit: int) -> tuple[bytes | None, str | None]:
    """The header block up to the first empty line (CRLF, LF or bare CR line ends, as the
    feed parser reads them) and its line end if it uses one throughout; None over ``limit``.
    Plain finds serve consistent line ends; only mixed ones pay for the regex."""
    ends = [i for i in (raw.find(b"\r\n\r\n", 0, limit + 4), raw.find(b"\n\n", 0, limit + 2))
            if i >= 0]
    if ends:
        block = raw[:min(ends)]
        crs = block.count(b"\r")
        if crs == 0 or crs == block.count(b"\r\n") == block.count(b"\n"):
            return (block if len(block) <= limit else None), ("\r\n" if crs else "\n")
    end = _HEADER_END.search(raw, 0, limit + 4)
    block = raw[:end.start()] if end else raw
    return (block if len(block) <= limit else None), None


def decode_words(value: str) -> str:
    """RFC 2047 encoded-words → text. Adjacent words of one charset are joined as bytes
    before decoding (senders split multi-byte characters); whitespace between them goes.
    Malformed words stay as written. Linear, unlike policy.default on A12 subjects."""
    if "=?" not in value:
        return value
    out: list = []
    pos = 0
    for word in _ENCODED_WORD.finditer(value):
        try:
            data = (binascii.a2b_base64(word[3] + "=" * (-len(word[3]) % 4), strict_mode=True)
                    if word[2] in "Bb" else binascii.a2b_qp(word[3].encode("ascii"), header=True))
        except (binascii.Error, ValueError):
            continue
        gap, charset = value[pos:word.start()], word[1].lower()
        adjacent = bool(out) and not isinstance(out[-1], str) and not gap.strip(" \t")
        if adjacent and out[-1][0] == charset:
            out[-1][1].extend(data)
        else:
            if gap and not adjacent:
                out.append(gap)
            out.append((charset, bytearray(data)))
        pos = word.end()
    out.append(value[pos:])
    return "".join(p if isinstance(p, str) else _text(bytes(p[1]), p[0]) for p in out)


def _display(value: str) -> str:
    return _UNSAFE.sub(" ", decode_words(value)).strip()


@lru_cache(maxsize=256)
def _codec(charset: str | None) -> str:
    """A text codec for ``charset``. US-ASCII (often a lie for 8-bit mail, A13) and unknown
    names read as UTF-8; non-text codecs (zlib, base64…) are never used: no decompression."""
    try:
        info = codecs.lookup(charset or "utf-8")
    except (LookupError, ValueError, TypeError):
        return "utf-8"
    if not getattr(info, "_is_text_encoding", True) or info.name == "ascii":
        return "utf-8"
    return info.name


def _text(data: bytes | memoryview, charset: str | None) -> str:
    return str(data, _codec(charset), "replace")


def _unescape(value: str) -> str:
    """compat32 keeps 8-bit header bytes as surrogates; read them as UTF-8."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _msg_ids(value: str) -> list[str]:
    """``<id>`` tokens in order, without repeats; a lone bare ``id@host`` is bracketed."""
    ids = [f"<{i}>" for i in _MSG_ID.findall(value)]
    bare = value.strip()
    if not ids and "@" in bare and not re.search(r"[\s<>]", bare) and len(bare) <= 993:
        ids = [f"<{bare}>"]
    return list(dict.fromkeys(ids))


class _AddressBudget:
    """What reading one address header may still cost, and what it left out."""
    __slots__ = ("ignored", "items", "strict_bytes", "strict_items", "unparsed")

    def __init__(self) -> None:
        self.items = MAX_ADDRESSES
        self.strict_items = STRICT_PARSE_ITEMS
        self.strict_bytes = STRICT_PARSE_BYTES
        self.ignored = 0            # items past MAX_ADDRESSES
        self.unparsed = 0           # items kept from the strict parser: over its budget, too long

    def strict(self, value: str) -> bool:
        """Spend the strict parser's budget on ``value``, if it may have it."""
        if (not self.strict_items or len(value) > self.strict_bytes
                or _LONG_RUN.search(value) is not None):
            return False
        self.strict_items -= 1
        self.strict_bytes -= len(value)
        return True

    def take(self, found: list[str], invalid: bool, items: int) -> tuple[list[str], bool]:
        """Count ``items`` (or the mailboxes found, if more) against ``MAX_ADDRESSES``."""
        if len(found) > self.items:
            self.ignored += len(found) - self.items
            found, invalid = found[:self.items], True
        self.items -= min(self.items, max(items, len(found)))
        return found, invalid

    def notes(self, header: str) -> list[str]:
        notes = []
        if self.ignored:
            notes.append(f"{header}: {self.ignored:,} address items past the first "
                         f"{MAX_ADDRESSES:,} ignored")
        if self.unparsed:
            notes.append(f"{header}: {self.unparsed:,} address items not read (the strict "
                         f"parser's budget of {STRICT_PARSE_ITEMS:,} items and "
                         f"{STRICT_PARSE_BYTES:,} bytes, or a run of over {_STRICT_RUN} "
                         "characters without a blank) and taken as invalid")
        return notes


def _addresses(value: str, budget: _AddressBudget | None = None) -> tuple[list[str], bool]:
    """Lower-case addr-specs of an address-list field, and whether any item was invalid.

    Common shapes are read by ``_SIMPLE_ITEM``; anything else (comments, groups, encoded
    words, non-ASCII, crafted input) goes to the strict parser headerregistry uses (A7),
    which never yields the wrong addr-spec for ``alice@example.org <evil@attacker.test>``.
    That parser is slow and quadratic in places (A12), so long fields go item by item and
    ``budget`` (one per header) bounds what it is given; an item it is not given, or one
    past ``MAX_ADDRESSES``, counts as invalid. The cost is linear in the field's length.
    """
    budget = _AddressBudget() if budget is None else budget
    if not budget.items:
        budget.ignored += _count_items(value)
        return [], True
    fast = _fast_addresses(value, budget)
    if fast is not None:
        return fast
    if len(value) <= _STRICT_MAX and budget.strict(value):
        found, invalid = _strict_addresses(value)
        return budget.take(found, invalid, 0)
    found, invalid = [], False
    items = _iter_items(value)
    for item in items:
        if not budget.items:
            budget.ignored += sum(1 for rest in (item, *items) if rest.strip(" \t"))
            return found, True
        more, bad = _item_addresses(item, budget)
        found.extend(more)
        invalid = invalid or bad
    return found, invalid


def _fast_addresses(value: str, budget: _AddressBudget) -> tuple[list[str], bool] | None:
    """Every item in a common shape, read by ``_SIMPLE_ITEM``; None when one is not.
    Display names may hold encoded-words (``=?utf-8?q?J=C3=B6rg?= <j@example.org>``)."""
    if "=?" in value:
        value = _EW_OR_QUOTED.sub(_as_atom, value)
        if "=?" in value:
            return None
    found, pos = [], 0
    while (item := _SIMPLE_ITEM.match(value, pos)) is not None:
        if len(found) == budget.items:
            budget.ignored += _count_items(value[pos:])
            budget.items = 0
            return found, True
        found.append((item[1] or item[2]).lower())
        if item.end() == len(value):
            budget.items -= len(found)
            return found, False
        pos = item.end() + 1
    return None


def _as_atom(word: re.Match) -> str:
    """An encoded-word the strict parser decodes without a defect becomes a plain atom: it
    is a word of a display name, which does not change the mailbox; the rest stays."""
    text = word[0]
    if text[0] == '"':
        return text
    try:
        decoded, _, _, defects = _addr_parser._ew.decode(text)     # as the parser does
    except (ValueError, KeyError):
        return text
    return text if defects or _EW_UNCLEAN.search(decoded) else "x"


def _item_addresses(item: str, budget: _AddressBudget) -> tuple[list[str], bool]:
    """One item of a long field (no comma outside quotes, comments or brackets)."""
    fast = _fast_addresses(item, budget)
    if fast is not None:
        return fast
    if not item.strip(" \t"):
        return [], False                    # what the strict parser says of blanks
    if len(item) > _STRICT_MAX or _AT_RUN.fullmatch(item) is not None:
        return budget.take([], True, 1)
    if not budget.strict(item):
        budget.unparsed += 1
        return budget.take([], True, 1)
    found, invalid = _strict_addresses(item)
    return budget.take(found, invalid, 1)


def _strict_addresses(value: str) -> tuple[list[str], bool]:
    found, invalid = [], False
    try:
        tree, _ = _addr_parser.get_address_list(value)
        boxes = tree.all_mailboxes
    except Exception:  # a parser bug on crafted input: nothing here is trustworthy
        return [], True
    for box in boxes:
        try:
            if (box.token_type != "mailbox" or not box.local_part or not box.domain
                    or any(not isinstance(d, _TOLERATED) for d in box.all_defects)):
                invalid = True
                continue
            local = box.local_part
        except Exception:  # its properties too: IndexError on `<=?utf-8?q??= @x>`
            invalid = True
            continue
        if _NEEDS_QUOTES.search(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        found.append(f"{local}@{box.domain}".lower())
    return found, invalid


def _iter_items(value: str):
    """The items of an address list: split at commas outside quoted strings, comments
    and angle brackets; one regex pass, so stopping early costs only what was read."""
    current: list[str] = []
    for token in _ITEM_TOKEN.finditer(value):
        if token[0] == ",":
            yield "".join(current)
            current = []
        else:
            current.append(token[0])
    yield "".join(current)


def _count_items(value: str) -> int:
    """How many items ``value`` holds (blank ones not counted)."""
    return sum(1 for item in _iter_items(value) if item.strip(" \t"))


def _split_items(value: str) -> list[str]:
    """Split at commas outside quoted strings, comments and angle brackets."""
    return list(_iter_items(value))


def _prescan(raw: bytes, limits: ParseLimits) -> str | None:
    """A11: refuse deep nesting and part floods in one pass over the bytes, before the
    feed parser (which recurses per level and checks every open boundary on every line).
    Tracks open multipart boundaries and message/* levels the way the feed parser does."""
    lowered = raw.lower()
    if (lowered.count(b"content-type:") <= limits.max_mime_depth
            and raw.count(b"\n--") + raw.count(b"\r--") < limits.max_parts):
        return None                            # cannot be over either limit: skip the scan
    open_: list[bytes | None] = []
    parts = 0
    for shape in _SHAPE.finditer(raw):
        if shape[1] is not None:
            ctype = shape[1].split(b";", 1)[0].strip().lower()
            if ctype.startswith(b"multipart/"):
                boundary = _BOUNDARY.search(shape[1])
                if boundary:
                    open_.append((boundary[1] if boundary[1] is not None else boundary[2]).rstrip())
            elif ctype.startswith(b"message/") and ctype != b"message/delivery-status":
                open_.append(None)
            if len(open_) > limits.max_mime_depth:
                return "mime_too_deep"
            continue
        line = shape[2].rstrip(b" \t")
        for i in range(len(open_) - 1, -1, -1):
            if open_[i] is not None and line == open_[i]:
                del open_[i + 1:]
                parts += 1
                break
            if open_[i] is not None and line == open_[i] + b"--":
                del open_[i:]
                break
        if parts > limits.max_parts:
            return "too_many_parts"
    return None


def _extract(root, limits: ParseLimits) -> _Body:
    """Walk the parsed tree (iteratively, re-checking the A11 caps) into the body views."""
    plain: list[str] = []
    markup: list[str] = []
    attachments: list[Attachment] = []
    embedded: list[str] = []
    child_types = tuple(c.get_content_type() for c in root.get_payload()) \
        if root.get_content_maintype() == "multipart" and root.is_multipart() else ()
    stack, count = [(root, 0)], 0
    while stack:
        part, depth = stack.pop()
        ctype = part.get_content_type()
        filename = part.get_filename()
        is_attachment = bool(filename) or part.get_content_disposition() == "attachment"
        if ctype in _ENCLOSING and part.is_multipart():
            embedded += _msg_ids(str(part.get_payload(0).get("message-id", "")))
        if part.is_multipart():
            if ctype.startswith("message/") and is_attachment:
                buffer = BytesIO()
                BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0).flatten(
                    part.get_payload(0))
                content = buffer.getvalue()
            elif ctype == "message/delivery-status":
                continue
            else:
                if depth + 1 > limits.max_mime_depth:
                    raise _Refused("mime_too_deep")
                children = part.get_payload()
                count += len(children)
                if count > limits.max_parts:
                    raise _Refused("too_many_parts")
                stack.extend((child, depth + 1) for child in reversed(children))
                continue
        else:
            content = part.get_payload(decode=True) or b""
        if ctype == "text/rfc822-headers":
            embedded += quoted_message_ids(_text(content, part.get_content_charset()))
        if is_attachment:
            attachments.append(Attachment(_display(_unescape(filename or "")),
                                          hashlib.sha256(content).hexdigest(), len(content), ctype))
        elif ctype == "text/plain":
            plain.append(_text(content, part.get_content_charset()))
        elif ctype == "text/html":
            markup.append(_text(content, part.get_content_charset()))
    text = "\n".join(p for p in plain if p) if plain else "\n".join(
        _strip_html(m) for m in markup if m)
    return _Body(None, text, tuple(attachments), child_types, tuple(embedded))


def quoted_message_ids(text: str) -> list[str]:
    """Message-IDs of ``Message-ID:`` header lines quoted in ``text`` (folded or not)."""
    return [m for found in _QUOTED_MESSAGE_ID.finditer(text) for m in _msg_ids(found[1])]


def _strip_html(markup: str) -> str:
    """Rough HTML → text for mail without a text/plain part; every regex is linear."""
    return html.unescape(_HTML_TAG.sub("", _HTML_BREAK.sub("\n", _HTML_DROP.sub("", markup))))
