"""DKIM signing of outbound mail per From domain (R-O4); verified offline with dkimpy."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.config import DkimKey
from gateway.outbound.dkim import DkimSigner

MESSAGE = (b"From: Helpdesk <support@example.com>\r\n"
           b"To: carol@customer.test\r\n"
           b"Subject: [12-T] Your request\r\n"
           b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
           b"Message-ID: <ack.12-T@gw1.mailgate>\r\n"
           b"In-Reply-To: <orig@customer.test>\r\n"
           b"Received: from somewhere by somewhere\r\n"
           b"X-Mailgate-Ref: 12-T\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Auto-Submitted: auto-replied\r\n"
           b"\r\n"
           b"We received your request.\r\n")


def make_key(directory: Path, name: str, bits: int = 2048,
             fmt=serialization.PrivateFormat.TraditionalOpenSSL) -> tuple[Path, bytes]:
    """A PEM private key file and its DNS TXT record (``v=DKIM1; k=rsa; p=<SPKI DER>``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path = directory / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                       serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


def make_ed25519_key(directory: Path, name: str) -> tuple[Path, bytes]:
    """A PKCS#8 PEM Ed25519 key file (as `openssl genpkey -algorithm ed25519` writes)
    and its TXT record, whose p= is the raw 32-byte public key (RFC 8463 §4)."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = directory / f"{name}.ed25519.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return path, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dkim")
    return {"example.com": make_key(directory, "example.com"),
            "corp.test": make_key(directory, "corp.test",
                                  fmt=serialization.PrivateFormat.PKCS8)}


@pytest.fixture(scope="module")
def dns(keys):
    """dnsfunc for dkim.verify: serves the test TXT records, nothing else (no network)."""
    records = {f"mg1._domainkey.{domain}": txt for domain, (_, txt) in keys.items()}
    return lambda name, timeout=5: records.get(name.decode().rstrip("."))


@pytest.fixture(scope="module")
def signer(keys):
    return DkimSigner([DkimKey(domain=d, selector="mg1", key_file=str(path))
                       for d, (path, _) in keys.items()])


def signature_tags(signed: bytes) -> dict[str, str]:
    header = dkim.rfc822_parse(signed)[0][0]
    assert header[0] == b"DKIM-Signature"
    value = re.sub(rb"\s+", b"", header[1]).decode()
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_r_o4_signed_message_verifies_against_the_published_key(signer, dns):
    signed, domain = signer.sign(MESSAGE)
    assert domain == "example.com"
    assert signed.startswith(b"DKIM-Signature: ") and signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns)
    tags = signature_tags(signed)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == (
        "example.com", "mg1", "rsa-sha256", "relaxed/relaxed")


def test_r_o4_signs_only_listed_headers_that_are_present_and_oversigns_from(signer):
    signed, _ = signer.sign(MESSAGE)
    assert signature_tags(signed)["h"].split(":") == [
        "from", "to", "subject", "date", "message-id", "in-reply-to", "mime-version",
        "content-type", "auto-submitted", "from"]


def test_r_o4_from_domain_without_a_key_is_returned_unchanged(signer):
    raw = MESSAGE.replace(b"support@example.com", b"support@other.test")
    assert signer.sign(raw) == (raw, None)
    no_from = b"To: carol@customer.test\r\nSubject: x\r\n\r\nbody\r\n"
    assert signer.sign(no_from) == (no_from, None)
    assert DkimSigner([]).sign(MESSAGE) == (MESSAGE, None)


def test_r_o4_plus_tagged_from_signs_with_the_base_domain(signer, dns):
    raw = MESSAGE.replace(b"Helpdesk <support@example.com>", b"fr+12-T@corp.test")
    signed, domain = signer.sign(raw)
    assert domain == "corp.test"
    assert signature_tags(signed)["d"] == "corp.test"
    assert dkim.verify(signed, dnsfunc=dns)


def test_r_o4_from_domain_matches_case_insensitively(signer, dns):
    raw = MESSAGE.replace(b"support@example.com", b"Support@EXAMPLE.Com")
    signed, domain = signer.sign(raw)
    assert domain == "example.com" and dkim.verify(signed, dnsfunc=dns)


def test_r_o4_two_keys_for_two_domains_each_sign_their_own(signer, dns):
    corp = MESSAGE.replace(b"support@example.com", b"fr@corp.test")
    signed_example, _ = signer.sign(MESSAGE)
    signed_corp, _ = signer.sign(corp)
    assert signature_tags(signed_example)["d"] == "example.com"
    assert signature_tags(signed_corp)["d"] == "corp.test"
    assert dkim.verify(signed_example, dnsfunc=dns) and dkim.verify(signed_corp, dnsfunc=dns)
    # each signature really is made with its own domain's key
    swapped = signed_corp.replace(b"d=corp.test", b"d=example.com", 1)
    assert not dkim.verify(swapped, dnsfunc=dns)


def test_r_o4_tampering_with_the_body_after_signing_fails_verification(signer, dns):
    signed, _ = signer.sign(MESSAGE)
    assert not dkim.verify(signed.replace(b"received your", b"ignored your"), dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Subject: [12-T]", b"Subject: [13-T]"), dnsfunc=dns)


def test_r_o4_crlf_in_crlf_out(signer):
    signed, _ = signer.sign(MESSAGE)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert signed.endswith(MESSAGE)


def test_r_o4_lf_in_lf_out(signer, dns):
    raw = MESSAGE.replace(b"\r\n", b"\n")
    signed, _ = signer.sign(raw)
    assert b"\r" not in signed and signed.endswith(raw)
    assert dkim.verify(signed, dnsfunc=dns)


def test_r_o4_signing_is_safe_from_threads(signer, dns):
    messages = [MESSAGE.replace(b"12-T", f"{i}-T".encode()) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(signer.sign, messages))
    assert all(dkim.verify(signed, dnsfunc=dns) for signed, _ in results)


@pytest.mark.parametrize("content", [b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                     b"-----END PRIVATE KEY-----\n", None])
def test_r_o4_bad_or_missing_key_file_raises_value_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        DkimSigner([DkimKey(domain="example.com", selector="mg1", key_file=str(path))])
    message = str(err.value)
    assert str(path) in message and "example.com" in message and "mg1" in message


def test_r_o4_short_key_is_rejected(tmp_path):
    # cryptography refuses to make keys under 1024 bits; openssl still will.
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    path = tmp_path / "short.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "512"], check=True,
                   capture_output=True)
    with pytest.raises(ValueError, match="512 bits"):
        DkimSigner([DkimKey(domain="example.com", selector="mg1", key_file=str(path))])


def test_r_o4_key_saved_with_crlf_line_ends_still_loads(tmp_path, dns, keys):
    path = tmp_path / "crlf.pem"
    path.write_bytes(keys["example.com"][0].read_bytes().replace(b"\n", b"\r\n"))
    signed, _ = DkimSigner([DkimKey("example.com", "mg1", str(path))]).sign(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns)


def test_r_o4_domain_configured_twice_with_one_algorithm_is_an_error(keys):
    path = str(keys["example.com"][0])
    with pytest.raises(ValueError, match="configured twice") as err:
        DkimSigner([DkimKey("example.com", "mg1", path), DkimKey("Example.COM", "mg2", path)])
    assert "[[outbound.dkim]]" in str(err.value) and "'mg2'" in str(err.value)


def test_r_o4_encrypted_key_is_refused_with_the_fix(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "locked.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ValueError, match="protected by a password") as err:
        DkimSigner([DkimKey("example.com", "mg1", str(path))])
    assert str(path) in str(err.value) and "openssl genrsa" in str(err.value)


def test_r_o4_signature_field_is_folded_within_78_columns_and_b_comes_last(signer):
    signed, _ = signer.sign(MESSAGE)
    header = signed[:signed.index(b"From:")]
    lines = header.split(b"\r\n")[:-1]
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert re.sub(rb"\s+", b"", header).split(b";")[-1].startswith(b"b=")


def test_r_o4_message_with_a_broken_header_line_is_refused_only_when_signed(signer):
    broken = MESSAGE.replace(b"X-Mailgate-Ref: 12-T\r\n", b"not a field\r\n")
    with pytest.raises(ValueError, match="example.com"):
        signer.sign(broken)
    other = broken.replace(b"support@example.com", b"support@other.test")
    assert signer.sign(other) == (other, None)
