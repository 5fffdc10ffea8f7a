"""DKIM private keys: read and checked once at startup, used by OpenSSL to sign.

A wrong path, a key of the wrong kind or a short key is a configuration error
the operator sees when the gateway starts, with the table that names it and
what to do, rather than a failure on the first acknowledgement. The signing
itself is ``cryptography``'s (OpenSSL): RSA-2048 in about a millisecond and
Ed25519 in tens of microseconds, both releasing the GIL, so signatures made in
threads run in parallel.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from gateway.config import DkimKey

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"              # RFC 8463
MIN_RSA_BITS = 1024     # RFC 8301: verifiers refuse shorter keys (2048 recommended)

_MAKE_ONE = {RSA: "`openssl genrsa -out FILE 2048`",
             ED25519: "`openssl genpkey -algorithm ed25519 -out FILE`"}


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form, so ``Corp.Test.`` and IDN spellings find the same key."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


@dataclass(frozen=True)
class SigningKey:
    """One ``[[outbound.dkim]]`` table, its key loaded."""
    domain: str                     # A-label, lower case
    selector: str
    algorithm: str                  # RSA or ED25519
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        """The ``b=`` signature over the canonicalised header data.

        RSA signs the data with SHA-256 (RFC 6376 §3.3.1); Ed25519 signs the
        SHA-256 digest of it (RFC 8463 §3), not the data itself.
        """
        if self.algorithm == ED25519:
            return self.private_key.sign(hashlib.sha256(data).digest())
        return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def dns_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>``.

        RSA publishes the SubjectPublicKeyInfo; Ed25519 the raw 32-byte public
        key (RFC 8463 §4), not an SPKI.
        """
        public = self.private_key.public_key()
        if self.algorithm == ED25519:
            data = public.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)
            kind = "ed25519"
        else:
            data = public.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
            kind = "rsa"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode('ascii')}"


def describe(key: DkimKey) -> str:
    """How an error names the table: enough to find it in a file with several."""
    return (f"[[outbound.dkim]] domain={key.domain!r} selector={key.selector!r} "
            f"algorithm={key.algorithm!r} key_file={key.key_file!r}")


def load_key(key: DkimKey) -> SigningKey:
    """Read and check one table's key; ValueError names the table and the fix."""
    where = describe(key)
    if not key.domain or not key.selector or not key.key_file:
        raise ValueError(f"{where}: domain, selector and key_file are all required")
    if key.algorithm not in _MAKE_ONE:
        raise ValueError(f"{where}: algorithm must be {RSA!r} (the default) or {ED25519!r}")
    domain = normalize_domain(key.domain)
    if not key.selector.isascii() or not domain.isascii():
        raise ValueError(f"{where}: selector and domain must be ASCII (use the xn-- form)")
    make_one = _MAKE_ONE[key.algorithm]
    try:
        with open(key.key_file, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise ValueError(f"{where}: cannot read the key file ({e.strerror or e}); check the "
                         "path and that the gateway user may read it") from e
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except TypeError as e:          # cryptography's word for "this key is encrypted"
        raise ValueError(f"{where}: the key is protected by a password; store it "
                         f"unencrypted (readable only by the gateway user), e.g. {make_one}"
                         ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{where}: not a usable private key ({e}); expected an unencrypted "
                         f"PEM key, e.g. from {make_one}") from e
    kind = _kind(private)
    if key.algorithm == ED25519 and kind != "an Ed25519":
        hint = f", or set algorithm = {RSA!r}" if kind == "an RSA" else ""
        raise ValueError(f"{where}: the file holds {kind} key, not an Ed25519 one; make one "
                         f"with {make_one}{hint}")
    if key.algorithm == RSA and kind != "an RSA":
        hint = f", or set algorithm = {ED25519!r}" if kind == "an Ed25519" else ""
        raise ValueError(f"{where}: the file holds {kind} key, not an RSA one; make one "
                         f"with {make_one}{hint}")
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < MIN_RSA_BITS:
        raise ValueError(f"{where}: the RSA key has {private.key_size} bits; receivers "
                         f"reject keys under {MIN_RSA_BITS} bits, make one of 2048 bits "
                         f"with {make_one}")
    return SigningKey(domain, key.selector.strip(), key.algorithm, private)


def _kind(private: object) -> str:
    """What an error says the file holds: "an RSA", "an Ed25519", ..."""
    for cls, name in ((rsa.RSAPrivateKey, "an RSA"), (ed25519.Ed25519PrivateKey, "an Ed25519"),
                      (ed448.Ed448PrivateKey, "an Ed448"), (ec.EllipticCurvePrivateKey, "an EC"),
                      (dsa.DSAPrivateKey, "a DSA")):
        if isinstance(private, cls):
            return name
    return "another kind of"
