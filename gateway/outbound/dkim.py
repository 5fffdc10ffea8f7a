"""DKIM signing of outbound mail per From domain (R-O4, SPEC §5.2 ``[[outbound.dkim]]``).

A domain signs with RSA (``rsa-sha256``, what every receiver checks), with
Ed25519 (``ed25519-sha256``, RFC 8463), or with both: two signatures on one
mail, so a receiver that knows Ed25519 can rely on it and the others still find
the RSA one ("dual signing", RFC 8463 §1). Two tables for one domain are
therefore allowed only when their algorithms differ; with the same algorithm
which key signs would be a silent accident.

Keys are read and checked once, at startup (``dkim_keys``). Signing is pure CPU
work on immutable state, safe in any number of threads; the arithmetic runs in
OpenSSL without the GIL, so threads sign in parallel (``signing``).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import time
from collections.abc import Iterable
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from gateway.config import DkimKey
from gateway.outbound.dkim_canon import Field, relaxed_body, relaxed_header, select, split_message
from gateway.outbound.dkim_keys import SigningKey, describe, load_key, normalize_domain

# Headers a reply's meaning depends on; only those present are signed (RFC 6376 §5.4.1).
SIGNED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"in-reply-to",
                  b"references", b"reply-to", b"mime-version", b"content-type",
                  b"content-transfer-encoding", b"auto-submitted")
LINE = 78                       # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters
NAME = b"DKIM-Signature"


def from_domain(fields: list[Field]) -> str | None:
    """Domain of the first address in the (first) From field, normalised, or None."""
    for name, value in fields:
        if name.rstrip(b" \t").lower() == b"from":
            return (_address_domain if len(value) <= 256 else _address_domain.__wrapped__)(value)
    return None


@functools.lru_cache(maxsize=1024)
def _address_domain(value: bytes) -> str | None:
    """Cached: the gateway sends from a few addresses, and parsing one costs more
    than the rest of the message's canonicalisation."""
    text = value.replace(b"\r\n", b"").decode("utf-8", "replace")
    for _, address in getaddresses([text]):
        if "@" in address:
            return normalize_domain(address.rpartition("@")[2]) or None
    return None


def _lenient_from_domain(raw: bytes) -> str | None:
    """From's domain as the email package reads a header with a broken line in it."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    for _, address in getaddresses([str(v) for v in headers.get_all("From") or ()]):
        if "@" in address:
            return normalize_domain(address.rpartition("@")[2]) or None
    return None


class DkimSigner:
    """Signs messages whose From domain has a configured key; leaves others alone.

    Built once from ``Settings.outbound.dkim``; raises ValueError naming the table
    for a missing, unreadable or unsuitable key, or for a domain given twice with
    one algorithm.
    """

    def __init__(self, keys: Iterable[DkimKey]):
        self._keys: dict[str, tuple[SigningKey, ...]] = {}
        for key in keys:
            loaded = load_key(key)
            present = self._keys.get(loaded.domain, ())
            if any(other.algorithm == loaded.algorithm for other in present):
                raise ValueError(
                    f"{describe(key)}: domain {key.domain!r} is configured twice with "
                    f"algorithm {key.algorithm!r}; keep one table per domain and algorithm "
                    "(two tables for one domain must differ in algorithm: RSA beside "
                    "Ed25519 signs each mail twice)")
            self._keys[loaded.domain] = present + (loaded,)

    @property
    def domains(self) -> frozenset[str]:
        """Signing domains (for startup logs and readiness detail)."""
        return frozenset(self._keys)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """Every loaded key, e.g. to show the TXT record each selector must publish."""
        return tuple(k for keys in self._keys.values() for k in keys)

    def sign(self, raw: bytes) -> tuple[bytes, str | None]:
        """``(message with its DKIM-Signature fields prepended, signing domain)``, or
        ``(raw, None)`` when its From domain has no key.

        relaxed/relaxed survives the re-folding and whitespace changes relays make;
        From is listed once more than present ("over-signing") so a second From
        cannot be added without breaking the signature. Raises ValueError for a
        header it cannot read (a line that is no field).
        """
        if not self._keys:
            return raw, None
        try:
            fields, body = split_message(raw)
        except ValueError as e:
            domain = _lenient_from_domain(raw)
            if domain in self._keys:
                raise ValueError(f"cannot DKIM-sign a message from {domain}: {e}") from e
            return raw, None                # not ours to sign: sent as it is, as before
        domain = from_domain(fields)
        keys = self._keys.get(domain) if domain else None
        if not keys:
            return raw, None
        present = [name.rstrip(b" \t").lower() for name, _ in fields]
        names = [h for h in SIGNED_HEADERS for n in present if n == h] + [b"from"]
        signed = b"".join(relaxed_header(*field) for field in select(fields, names))
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        first_end = raw.find(b"\n")
        linesep = b"\r\n" if raw[first_end - 1:first_end] == b"\r" else b"\n"   # as given
        now = str(int(time.time())).encode("ascii")
        return b"".join(_signature(key, names, body_hash, now, signed, linesep)
                        for key in keys) + raw, domain


def _signature(key: SigningKey, names: list[bytes], body_hash: bytes, now: bytes,
               signed: bytes, linesep: bytes) -> bytes:
    """One DKIM-Signature field, folded, with ``linesep`` line ends.

    The signature covers the selected fields and then this very field with an
    empty ``b=`` (RFC 6376 §3.7), relaxed, without its final CRLF. ``b=`` comes
    last, so the field signed is exactly the one sent up to there.
    """
    pieces = [(b" ", b"v=1;"), (b" ", b"a=" + key.algorithm.encode("ascii") + b";"),
              (b" ", b"c=relaxed/relaxed;"), (b" ", b"d=" + key.domain.encode("ascii") + b";"),
              (b" ", b"s=" + key.selector.encode("ascii") + b";"), (b" ", b"t=" + now + b";")]
    last = len(names) - 1
    pieces += [(b" " if n == 0 else b"", (b"h=" if n == 0 else b"") + name +
                (b";" if n == last else b":")) for n, name in enumerate(names)]
    pieces += [(b" ", b"bh=" + body_hash + b";"), (b" ", b"b=")]
    value, column = _fold(pieces, len(NAME) + 1, linesep)
    data = signed + relaxed_header(NAME, value)[:-2]
    signature = base64.b64encode(key.sign(data))
    room = max(0, LINE - column)            # the rest of b='s line, then whole lines
    lines = [signature[:room]] + [signature[n:n + LINE - 1]
                                  for n in range(room, len(signature), LINE - 1)]
    return NAME + b":" + value + (linesep + b" ").join(lines) + linesep


def _fold(pieces: list[tuple[bytes, bytes]], column: int, linesep: bytes) -> tuple[bytes, int]:
    """Join ``(separator, text)`` pieces, starting a new line where one would pass
    ``LINE``; returns the text and the column it ends at."""
    out = []
    for separator, text in pieces:
        if column + len(separator) + len(text) > LINE and column > 1:
            out.append(linesep + b" " + text)
            column = 1 + len(text)
        else:
            out.append(separator + text)
            column += len(separator) + len(text)
    return b"".join(out), column
