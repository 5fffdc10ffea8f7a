"""DKIM signing of outbound mail per From domain (R-O4, SPEC §5.2 ``[[outbound.dkim]]``).

Keys are read and checked once, at startup, so a wrong path or a bad key is a
configuration error the operator sees immediately rather than a send-time failure
on the first reply. Signing itself is pure CPU work on immutable state, so
``DkimSigner.sign`` is safe to run in worker threads (``asyncio.to_thread``).
"""
from __future__ import annotations

from collections.abc import Iterable
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses

import dkim
from dkim.crypto import parse_pem_private_key

from gateway.config import DkimKey

# Headers a reply's meaning depends on; only those present are signed (RFC 6376 §5.4.1).
SIGNED_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "in-reply-to",
                  "references", "reply-to", "mime-version", "content-type",
                  "content-transfer-encoding", "auto-submitted")
MIN_KEY_BITS = 1024  # dkim.verify() and most receivers reject shorter RSA keys


def _norm_domain(domain: str) -> str:
    """Lower-case A-label form, so ``Corp.Test.``/IDN spellings match the configured key."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _load_key(key: DkimKey) -> bytes:
    """Read and validate one PEM key; ValueError says which entry and what to fix."""
    where = (f"[[outbound.dkim]] domain={key.domain!r} selector={key.selector!r} "
             f"key_file={key.key_file!r}")
    if not key.domain or not key.selector or not key.key_file:
        raise ValueError(f"{where}: domain, selector and key_file are all required")
    if not key.selector.isascii() or not _norm_domain(key.domain).isascii():
        raise ValueError(f"{where}: selector and domain must be ASCII (use the xn-- form)")
    try:
        with open(key.key_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"{where}: cannot read the key file ({e.strerror or e}); check the "
                         "path and that the gateway user may read it") from e
    # dkimpy's PEM regex only matches "\n" line ends; a CRLF-saved key would be "not found".
    pem = pem.replace(b"\r\n", b"\n")
    try:
        bits = parse_pem_private_key(pem)["modulus"].bit_length()
    except Exception as e:  # UnparsableKeyError, binascii.Error, ASN.1 errors
        raise ValueError(f"{where}: not a usable RSA private key ({e}); expected an "
                         "unencrypted PEM RSA key (PKCS#1 'BEGIN RSA PRIVATE KEY' or PKCS#8 "
                         "'BEGIN PRIVATE KEY'), e.g. from `openssl genrsa 2048`") from e
    if bits < MIN_KEY_BITS:
        raise ValueError(f"{where}: the RSA key has {bits} bits; receivers reject keys "
                         f"under {MIN_KEY_BITS} bits, generate one of 2048 bits")
    return pem


def from_domain(raw: bytes) -> str | None:
    """Domain of the first address in the From header (normalised), or None."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    values = [str(v) for v in headers.get_all("From") or ()]
    for _, addr in getaddresses(values):
        if "@" in addr:
            return _norm_domain(addr.rpartition("@")[2]) or None
    return None


class DkimSigner:
    """Signs messages whose From domain has a configured key; leaves others alone.

    Built once from ``Settings.outbound.dkim``; raises ValueError for a missing,
    unreadable or invalid key, or a domain configured twice (which key would win
    would otherwise be a silent accident).
    """

    def __init__(self, keys: Iterable[DkimKey]):
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        for key in keys:
            pem = _load_key(key)
            domain = _norm_domain(key.domain)
            if domain in self._keys:
                raise ValueError(f"[[outbound.dkim]] domain {key.domain!r} is configured twice; "
                                 "keep one table per signing domain")
            self._keys[domain] = (key.selector.strip().encode("ascii"),
                                  domain.encode("ascii"), pem)

    @property
    def domains(self) -> frozenset[str]:
        """Signing domains (for startup logs and readiness detail)."""
        return frozenset(self._keys)

    def sign(self, raw: bytes) -> tuple[bytes, str | None]:
        """``(message with DKIM-Signature prepended, signing domain)``, or ``(raw, None)``.

        relaxed/relaxed survives the re-folding and whitespace changes relays make;
        From is listed once more than present ("over-signing") so a second From
        cannot be added without breaking the signature. Raises ValueError if dkimpy
        cannot sign the message (malformed header lines).
        """
        domain = from_domain(raw) if self._keys else None
        if domain is None or domain not in self._keys:
            return raw, None
        selector, d, pem = self._keys[domain]
        try:
            present = [name.lower() for name, _ in dkim.rfc822_parse(raw)[0]]
            include = [h.encode() for h in SIGNED_HEADERS for n in present if n == h.encode()]
            include.append(b"from")
            header = dkim.sign(raw, selector, d, pem, canonicalize=(b"relaxed", b"relaxed"),
                               signature_algorithm=b"rsa-sha256", include_headers=include)
        except dkim.DKIMException as e:
            raise ValueError(f"cannot DKIM-sign message for {domain}: {e}") from e
        if not raw.split(b"\n", 1)[0].endswith(b"\r"):
            header = header.replace(b"\r\n", b"\n")  # dkimpy always folds with CRLF
        return header + raw, domain
